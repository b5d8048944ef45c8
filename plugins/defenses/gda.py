"""Gaussian data augmentation (seed 001, §3.2)."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from arena import hookimpl
from arena.defense import TrainingConfig, TrainingDefense


class GDAConfig(TrainingConfig):
    sigma: float = Field(0.3, gt=0, description="noise std: 0.3 for MNIST-like data, 0.05 for CIFAR-10")
    copies: int = Field(10, ge=1, description="noisy copies per original sample (N)")


class GDA(TrainingDefense):
    """Gaussian Data Augmentation (Zantedeschi et al., "Efficient Defenses Against Adversarial
    Attacks", seed 001 §3.2 and §4.1 (5)): each batch is trained together with ``copies`` noisy
    copies x + N(0, σ²) clipped to [0, 1], a Monte-Carlo estimate of E_Δx J(θ, x + Δx, y).
    The paper uses ten copies with σ = 0.3 on MNIST and σ = 0.05 on CIFAR-10. The noise is drawn
    on the batch's device."""

    id: ClassVar[str] = "gda"
    Config = GDAConfig

    def loss(self, model, x, y):
        n = self.config.copies
        noisy = x.unsqueeze(0) + self.config.sigma * torch.randn((n, *x.shape), device=x.device, dtype=x.dtype)
        batch = torch.cat([x, noisy.clamp_(0, 1).flatten(0, 1)])
        return F.cross_entropy(model(batch), y.repeat(n + 1))


@hookimpl
def arena_register_defenses(register):
    register(GDA)
