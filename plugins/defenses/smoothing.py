"""Label smoothing (the baseline of seed 001 §4.1 (2))."""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from arena import hookimpl
from arena.defense import TrainingConfig, TrainingDefense


def smoothed_targets(y: torch.Tensor, num_classes: int, confidence: float) -> torch.Tensor:
    """Soft targets: ``confidence`` on the true label, the rest spread evenly over the others."""
    rest = (1.0 - confidence) / (num_classes - 1)
    targets = torch.full((y.shape[0], num_classes), rest, device=y.device)
    return targets.scatter_(1, y.unsqueeze(1), confidence)


class LabelSmoothingConfig(TrainingConfig):
    confidence: float = Field(0.9, gt=0, le=1, description="target weight of the true label (the paper: 0.9)")


class LabelSmoothing(TrainingDefense):
    """Label smoothing (Warde-Farley and Goodfellow, "Adversarial Perturbations of Deep Neural
    Networks", 2016), the baseline of Zantedeschi et al., "Efficient Defenses Against Adversarial
    Attacks", AISec 2017, seed 001 §2 and §4.1 (2): cross-entropy against soft targets with
    weight 0.9 on the true label and 0.1 spread uniformly over the K − 1 other classes (unlike
    ``torch``'s ``label_smoothing=ε``, which gives the true class 1 − ε + ε/K)."""

    id: ClassVar[str] = "label-smoothing"
    Config = LabelSmoothingConfig

    def loss(self, model, x, y):
        log_probs = model(x).log_softmax(dim=1)
        targets = smoothed_targets(y, log_probs.shape[1], self.config.confidence).to(log_probs.dtype)
        return -(targets * log_probs).sum(dim=1).mean()


@hookimpl
def arena_register_defenses(register):
    register(LabelSmoothing)
