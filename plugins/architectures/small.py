"""Small architectures for quick runs, and the module layout every built-in architecture shares.

Every built-in model is a :class:`FeatureClassifier`: ``features`` maps a float32 NCHW batch in
[0, 1] to the flattened pre-logit embedding ``(N, D)`` and ``classifier`` is the final
``nn.Linear(D, K)``, so ``model(x) == model.classifier(model.features(x))`` are logits (never
softmax). Every activation is an ``nn.ReLU`` module, so a defense can swap it (bounded ReLU) or
hook its output.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PositiveInt
from torch import nn

from arena import hookimpl
from arena.model import Architecture
from arena.plugin import PluginConfig


class FeatureClassifier(nn.Module):
    """``classifier(features(x))``: an embedding network followed by one linear layer to logits."""

    def __init__(self, features: nn.Module, classifier: nn.Linear) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def flat_dim(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The width ``D`` of ``features``' output for one input of ``input_shape``, by a dummy pass.

    The pass runs in eval mode under ``no_grad`` (batch-norm statistics stay untouched) and
    draws no random numbers, so seeded initialisation is unaffected.
    """
    was_training = features.training
    features.eval()
    with torch.no_grad():
        out = features(torch.zeros(1, *input_shape))
    features.train(was_training)
    return int(out.reshape(1, -1).shape[1])


def scaled(channels: int, width: float) -> int:
    """``channels`` times a width multiplier, at least one."""
    return max(1, int(round(channels * width)))


def check_shape(input_shape: tuple[int, ...], num_classes: int) -> tuple[int, int, int]:
    """``input_shape`` as ``(C, H, W)`` of positive ints; ValueError otherwise."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return shape  # type: ignore[return-value]


def pool2(hw: tuple[int, int]) -> tuple[nn.Module, tuple[int, int]]:
    """A 2x2 max-pool and the size after it; the identity where the input is already 1 pixel."""
    if min(hw) < 2:
        return nn.Identity(), hw
    return nn.MaxPool2d(2), (hw[0] // 2, hw[1] // 2)


def with_head(
    features: nn.Module, input_shape: tuple[int, ...], num_classes: int
) -> FeatureClassifier:
    """Wrap ``features`` with a linear classifier sized by a dummy forward pass."""
    return FeatureClassifier(features, nn.Linear(flat_dim(features, input_shape), num_classes))


class DigitsCNN(Architecture):
    """A tiny CNN sized for scikit-learn's 8x8 digits (the arena's quickstart model).

    conv 16 3x3 - ReLU - conv 32 3x3 - ReLU - maxpool 2 - linear 64 - ReLU - linear K, widths
    scaled by ``width``. Not from a paper: the fast stand-in for the small CNNs of seed 000
    (Keras MNIST example, §IV-B) and seed 002 (TensorFlow tutorial, §4) on the 8x8 digits.
    """

    id: ClassVar[str] = "digits-cnn"

    class Config(PluginConfig):
        width: float = Field(1.0, gt=0, description="multiplier of every layer's width")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        c1, c2, hidden = (scaled(n, self.config.width) for n in (16, 32, 64))
        conv = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(),
            pool2((h, w))[0], nn.Flatten(),
        )
        d = flat_dim(conv, (c, h, w))
        features = nn.Sequential(*conv, nn.Linear(d, hidden), nn.ReLU())
        return FeatureClassifier(features, nn.Linear(hidden, num_classes))


class MLP(Architecture):
    """A fully connected ReLU network: flatten - [linear - ReLU] per hidden width - linear K.

    Seed 001 (Efficient Defenses), §3.2, Figure 2 uses "a soft-max neural network with two dense
    hidden layers and RELU activation" on its toy datasets; ``hidden=[128]`` is the default.
    """

    id: ClassVar[str] = "mlp"

    class Config(PluginConfig):
        hidden: tuple[PositiveInt, ...] = Field((128,), description="widths of the hidden layers")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        layers: list[nn.Module] = [nn.Flatten()]
        width = c * h * w
        for n in self.config.hidden:
            layers += [nn.Linear(width, n), nn.ReLU()]
            width = n
        return FeatureClassifier(nn.Sequential(*layers), nn.Linear(width, num_classes))


@hookimpl
def arena_register_architectures(register) -> None:
    register(DigitsCNN)
    register(MLP)
