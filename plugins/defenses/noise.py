"""The noise augmented classifier (NAC, seed 004 §2): Gaussian noise on the logits at inference."""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from arena import hookimpl
from arena.data import DataSplits
from arena.defense import DefendedModel, InferenceDefense
from arena.plugin import PluginConfig

SIGMA = Field(1.0, gt=0, description="std of the Gaussian noise added to the logits (the paper: 1)")


def noisy_logits(logits: torch.Tensor, sigma: float) -> torch.Tensor:
    """``logits + N(0, σ²)``, fresh noise from torch's global generator on every call."""
    return logits + sigma * torch.randn_like(logits)


class NoisyLogitsModel(DefendedModel):
    """``base(x) + N(0, σ²)``: the classifier with fresh logit noise on every call.

    The noise comes from torch's global generator on purpose, not from a generator seeded at
    wrap time: a seeded generator would replay the same noise sequence, which an attacker who
    knows the seed could predict. The attack harness seeds the global generator per call
    (``attack(..., seed=s)``), so tournaments stay reproducible while each forward pass still
    draws new noise. ``randomized`` tells adaptive attacks to average over it (EOT).
    """

    randomized: ClassVar[bool] = True

    def __init__(self, base: nn.Module, sigma: float) -> None:
        super().__init__(base)
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return noisy_logits(self.base(x), self.sigma)


class NACConfig(PluginConfig):
    sigma: float = SIGMA


class NAC(InferenceDefense):
    """Noise augmented classifier (Nguyen, Wang and Sinha, "A Learning and Masking Approach to
    Secure Learning", GameSec 2018, seed 004 §2 "NAC", Tables 4-6): Gaussian noise
    of mean 0 and standard deviation 1 is added to the logits at inference time only, shifting
    the decision boundary randomly on every call. Against low-perturbation attacks (C&W) it
    holds; against high-perturbation ones (FGSM) it is not expected to (Table 4). The paper's
    averaged-logits attack (Table 5) is EOT, which ``randomized = True`` invites."""

    id: ClassVar[str] = "nac"
    Config = NACConfig

    def wrap(self, model: nn.Module, data: DataSplits, *, seed: int = 42) -> DefendedModel:
        return NoisyLogitsModel(model, self.config.sigma)


@hookimpl
def arena_register_defenses(register):
    register(NAC)
