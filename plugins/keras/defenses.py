"""Keras training recipes of the simplest training-time defenses of seed 001.

Each recipe reads the same validated ``Config`` as the torch defense of the same id (so
``sigma``, ``copies``, ``t``, ``confidence``, ``epochs``, ``batch_size``, ``lr`` and
``optimizer`` mean the same thing on both backends) and says how Keras' own ``fit`` loop
realises it:

* ``gda`` (Zantedeschi et al., AISec 2017, §3.2): every batch is fed with ``copies`` noisy
  copies ``clip(x + N(0, σ²), 0, 1)``, by a seeded :class:`NoisyBatches` data source;
* ``brelu`` (§3.1): every activation is ``keras.layers.ReLU(max_value=t)``;
* ``gda-brelu``: both;
* ``label-smoothing`` (the §4.1 (2) baseline): Keras' ``label_smoothing`` ε gives the true
  class 1 − ε + ε/K, so ε = (1 − confidence)·K/(K − 1) puts exactly ``confidence`` (0.9) on
  the true label and the rest evenly on the K − 1 others, as the torch defense does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from arena_builtins.keras.architectures import Activation, relu


class NoisyBatches(keras.utils.PyDataset):
    """Shuffled batches (reshuffled every epoch from a seeded generator), each followed by
    ``copies`` Gaussian-noise copies of itself when ``copies > 0``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                 sigma: float = 0.0, copies: int = 0) -> None:
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size
        self.sigma, self.copies = sigma, copies
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.order[i * self.batch_size:(i + 1) * self.batch_size]
        xb, yb = self.x[idx], self.y[idx]
        if self.copies:
            noise = self.rng.normal(0.0, self.sigma, (self.copies, *xb.shape)).astype(np.float32)
            noisy = np.clip(xb[None] + noise, 0.0, 1.0).reshape(-1, *xb.shape[1:])
            xb, yb = np.concatenate([xb, noisy]), np.concatenate([yb] * (self.copies + 1))
        return xb, yb

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))


@dataclass(frozen=True)
class Recipe:
    """How Keras trains one defense: activation layers, label smoothing, noise copies."""

    bound: float | None = None
    smoothing_confidence: float | None = None
    sigma: float = 0.0
    copies: int = 0

    def activation(self) -> Activation:
        return relu(self.bound)

    def loss(self, num_classes: int) -> keras.losses.Loss:
        eps = 0.0
        if self.smoothing_confidence is not None:
            eps = (1.0 - self.smoothing_confidence) * num_classes / (num_classes - 1)
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=eps)

    def batches(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> NoisyBatches:
        return NoisyBatches(x, y, batch_size, seed, self.sigma, self.copies)


RECIPES: dict[str, Any] = {
    "standard": lambda cfg: Recipe(),
    "gda": lambda cfg: Recipe(sigma=cfg.sigma, copies=cfg.copies),
    "brelu": lambda cfg: Recipe(bound=cfg.t),
    "gda-brelu": lambda cfg: Recipe(bound=cfg.t, sigma=cfg.sigma, copies=cfg.copies),
    "label-smoothing": lambda cfg: Recipe(smoothing_confidence=cfg.confidence),
}


def optimizer(name: str, lr: float, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """Keras' Adam, SGD (momentum 0.9) or RMSprop; ``weight_decay`` is Keras' decoupled decay."""
    wd = weight_decay or None
    table = {
        "adam": lambda: keras.optimizers.Adam(lr, weight_decay=wd),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, weight_decay=wd),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr, weight_decay=wd),
    }
    return table[name]()
