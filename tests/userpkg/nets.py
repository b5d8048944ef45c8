"""Networks "of the user's": plain torch modules that know nothing of the arena.

``small_cnn`` fits scikit-learn's 8x8 digits; the others are wrong on purpose, each in one way.
"""
from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv 3x3 - ReLU - maxpool 2 - linear: ``classifier(features(x))`` for 1x8x8 inputs."""

    def __init__(self, channels: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Flatten())
        self.classifier = nn.Linear(channels * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def small_cnn(channels: int = 8, num_classes: int = 10) -> nn.Module:
    """A small CNN for the digits (its signature names ``num_classes``, so the arena passes it)."""
    return SmallCNN(channels, num_classes)


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 16) -> nn.Module:
    """A one-hidden-layer MLP sized from ``input_shape`` (which the arena passes, as it is named)."""
    c, h, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def seven_classes() -> nn.Module:
    """Wrong: always 7 outputs, whatever the dataset."""
    return SmallCNN(4, 7)


def for_cifar(num_classes: int = 10) -> nn.Module:
    """Wrong for digits: expects 3x32x32 inputs."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 32 * 32, num_classes))


def not_a_module(num_classes: int = 10) -> list[int]:
    """Wrong: returns a list."""
    return [num_classes]


class Zoo:
    """A namespace of constructors, reached with a dotted attribute (``userpkg.nets:Zoo.tiny``)."""

    tiny = staticmethod(small_cnn)


NOT_CALLABLE = 3
