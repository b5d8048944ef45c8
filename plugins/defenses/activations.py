"""Bounded ReLU activations (seed 001, §3.1), alone and with Gaussian data augmentation (§3.2)."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from arena import ConfigError, hookimpl
from arena.defense import TrainingConfig, TrainingDefense
from arena.model import Architecture
from arena_builtins.defenses.gda import GDA, GDAConfig

THRESHOLD = Field(1.0, gt=0, description="cut-off t where the activation saturates (the paper: t = 1)")


class BoundedReLU(nn.Module):
    """f_t(x) = min(max(0, x), t): the bounded ReLU of Liew et al. (2016) used by seed 001 §3.1."""

    def __init__(self, t: float = 1.0) -> None:
        super().__init__()
        self.t = float(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.0, self.t)

    def extra_repr(self) -> str:
        return f"t={self.t}"


def bound_relus(model: nn.Module, t: float, owner: str = "brelu") -> nn.Module:
    """Replace every ``nn.ReLU`` module of ``model`` (in place, at any depth) by a BoundedReLU.

    Raises ConfigError (naming ``owner``) when the model has no ``nn.ReLU`` module: a
    bounded-ReLU defense that bounds nothing would silently be plain training.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, name, BoundedReLU(t))
                count += 1
    if count == 0:
        raise ConfigError(f"defense '{owner}': {type(model).__name__} has no nn.ReLU module to bound")
    return model


class BReLUConfig(TrainingConfig):
    t: float = THRESHOLD


class BReLU(TrainingDefense):
    """Bounded ReLU (Zantedeschi et al., "Efficient Defenses Against Adversarial Attacks",
    AISec 2017, seed 001 §3.1): every ReLU of the network becomes f_t(x) = min(max(0, x), t),
    so a perturbation cannot grow without bound as it propagates through the layers; the
    paper uses t = 1 (§4.1 (5)) and trains with plain cross-entropy ("CNN + BRELU", §4.2).
    ``build`` swaps every ``nn.ReLU`` module of the architecture for a bounded one."""

    id: ClassVar[str] = "brelu"
    Config = BReLUConfig

    def build(self, architecture: Architecture, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return bound_relus(super().build(architecture, input_shape, num_classes), self.config.t, self.id)

    def loss(self, model, x, y):
        return F.cross_entropy(model(x), y)


class GDABReLUConfig(GDAConfig):
    t: float = THRESHOLD


class GDABReLU(GDA):
    """Gaussian data augmentation with bounded ReLUs (Zantedeschi et al., "Efficient Defenses
    Against Adversarial Attacks", AISec 2017, seed 001 §3.1 + §3.2, "GDA + BRELU" of §4.1 (5)):
    GDA's loss (``copies`` noisy copies x + N(0, σ²) per sample; the paper: ten copies,
    σ = 0.3 on MNIST, 0.05 on CIFAR-10) on a network whose ReLUs are bounded at t = 1."""

    id: ClassVar[str] = "gda-brelu"
    Config = GDABReLUConfig

    def build(self, architecture: Architecture, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return bound_relus(super().build(architecture, input_shape, num_classes), self.config.t, self.id)


@hookimpl
def arena_register_defenses(register):
    register(BReLU)
    register(GDABReLU)
