"""scikit-learn's bundled 8x8 handwritten digits: the arena's offline default dataset."""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PositiveInt

from arena import hookimpl
from arena.data import DataSplits, Dataset, seeded_split
from arena.plugin import PluginConfig


class Digits(Dataset):
    """The UCI optical handwritten digits bundled with scikit-learn (``load_digits``).

    1,797 grey 8x8 images of the digits 0-9, pixel counts 0..16 scaled to [0, 1], split into
    train and test by a seeded, stratified split. The small stand-in for MNIST, the dataset of
    seed 000 §IV-B, seed 001 §4.1 and seed 002 §4; nothing is downloaded.
    """

    id: ClassVar[str] = "digits"

    class Config(PluginConfig):
        test_fraction: float = Field(0.25, gt=0, lt=1, description="share of each class held out")
        train_size: PositiveInt | None = Field(None, description="cap on training samples")
        test_size: PositiveInt | None = Field(None, description="cap on test samples")

    def load(self, seed: int = 42) -> DataSplits:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images).to(torch.float32).div_(16.0).unsqueeze(1).contiguous()
        y = torch.from_numpy(bunch.target).to(torch.int64)
        train, test = seeded_split(x, y, self.config.test_fraction, seed)
        return DataSplits(
            name=self.id,
            train=train.take(self.config.train_size, seed),
            test=test.take(self.config.test_size, seed),
            num_classes=10,
        )


@hookimpl
def arena_register_datasets(register) -> None:
    register(Digits)
