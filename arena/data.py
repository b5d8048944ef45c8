"""Datasets: the plugin base and the in-memory splits every other part of the arena consumes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from arena.errors import ConfigError
from arena.plugin import Plugin


@dataclass(frozen=True)
class Split:
    """Images (float32, NCHW, [0, 1]) and labels (int64)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        check_images(self.x, "images")
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise ValueError(f"labels must be int64 of shape ({self.x.shape[0]},)")

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, n: int | None, seed: int = 0) -> "Split":
        """A seeded random subset of ``n`` samples (all of them when ``n`` is None or larger)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return Split(self.x[idx], self.y[idx])


@dataclass(frozen=True)
class DataSplits:
    """A loaded dataset: train and test splits, the class count and the input shape ``(C, H, W)``."""

    name: str
    train: Split
    test: Split
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def check_images(x: torch.Tensor, what: str = "x") -> None:
    """Raise ValueError unless ``x`` is a float32 batch of shape (N, C, H, W) in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(f"{what} must be float32, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{what} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if x.numel() and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
        raise ValueError(f"{what} must lie in [0, 1]")


def seeded_split(x: torch.Tensor, y: torch.Tensor, test_fraction: float, seed: int) -> tuple[Split, Split]:
    """Stratified, seeded train/test split: the same seed always gives the same split."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for label in torch.unique(y).tolist():
        idx = torch.nonzero(y == label).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    tr, te = torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values
    return Split(x[tr], y[tr]), Split(x[te], y[te])


class Dataset(Plugin):
    """A dataset plugin (kind ``dataset``): ``load(seed)`` returns :class:`DataSplits`.

    Loading is deterministic for a given config and seed. Missing files raise
    :class:`arena.ConfigError` naming the path and how to obtain the data.
    """

    kind: ClassVar[str] = "dataset"

    def load(self, seed: int = 42) -> DataSplits:
        raise NotImplementedError

    @staticmethod
    def missing(path: object, hint: str) -> ConfigError:
        """The error for a dataset directory that is absent or incomplete."""
        return ConfigError(f"dataset files not found at {path}: {hint}")
