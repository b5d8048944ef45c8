"""A seeded, learnable toy dataset: noisy copies of one random prototype image per class."""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, PositiveInt

from arena import hookimpl
from arena.data import DataSplits, Dataset, Split
from arena.plugin import PluginConfig


def prototypes(num_classes: int, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """One uniform random image in [0, 1] per class, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(num_classes, *shape, generator=g)


def sample(protos: torch.Tensor, n: int, noise: float, g: torch.Generator) -> Split:
    """``n`` samples, balanced shuffled labels: prototype + N(0, noise^2), clipped to [0, 1]."""
    k = protos.shape[0]
    y = torch.arange(n) % k
    y = y[torch.randperm(n, generator=g)]
    x = protos[y] + noise * torch.randn(n, *protos.shape[1:], generator=g)
    return Split(x.clamp_(0.0, 1.0), y.to(torch.int64))


class Synthetic(Dataset):
    """Gaussian noise around fixed class prototypes: a fast, learnable dataset for tests.

    Not from a paper. It stands in for the image datasets of the seed papers (seed 000 §IV-B,
    seed 001 §4.1, seed 002 §4, seed 003 §4, seed 004) wherever a test needs a dataset in
    milliseconds. Each class has one uniform random prototype image (drawn from
    ``prototype_seed``, so the task is the same for every ``seed``); samples add Gaussian
    noise of standard deviation ``noise`` and are clipped to [0, 1]. The load ``seed`` draws
    the samples and the label order: the same seed gives the same data.
    """

    id: ClassVar[str] = "synthetic"

    class Config(PluginConfig):
        n_train: PositiveInt = 512
        n_test: PositiveInt = 256
        num_classes: int = Field(4, ge=2)
        channels: PositiveInt = 1
        size: PositiveInt = 8
        noise: float = Field(0.1, ge=0)
        prototype_seed: int = Field(0, description="seed of the class prototypes (the task)")

    def load(self, seed: int = 42) -> DataSplits:
        cfg = self.config
        protos = prototypes(cfg.num_classes, (cfg.channels, cfg.size, cfg.size), cfg.prototype_seed)
        g = torch.Generator().manual_seed(seed)
        train = sample(protos, cfg.n_train, cfg.noise, g)
        test = sample(protos, cfg.n_test, cfg.noise, g)
        return DataSplits(name=self.id, train=train, test=test, num_classes=cfg.num_classes)


@hookimpl
def arena_register_datasets(register) -> None:
    register(Synthetic)
