"""Input preprocessing defenses: feature squeezing (the baseline of seed 001 §4.1 (1))."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from arena import hookimpl
from arena.data import DataSplits
from arena.defense import DefendedModel, InferenceDefense
from arena.plugin import PluginConfig


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Xu et al.'s bit-depth squeezer: round(x · (2^bits − 1)) / (2^bits − 1), values in [0, 1].

    ``torch.round`` has a zero gradient almost everywhere: the gradient masking BPDA undoes.
    """
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def _symmetric_index(size: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Indices of a half-sample symmetric padding (scipy.ndimage's ``reflect``: d c b a | a b c d)."""
    idx = torch.arange(-before, size + after, device=device)
    idx = torch.where(idx < 0, -idx - 1, idx)
    idx = torch.where(idx >= size, 2 * size - idx - 1, idx)
    return idx.clamp(0, size - 1)


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """A k×k median filter per channel, as ``scipy.ndimage.median_filter(size=(1, 1, k, k))``.

    The window's centre is at offset k // 2 (for even k it covers k // 2 pixels before and
    k // 2 − 1 after), edges use scipy's default ``reflect`` padding, and an even window takes
    the upper of the two middle values (scipy's rank k²//2), so the output is always one of the
    input's values. Implemented with ``unfold``; differentiable like any sort.
    """
    n, c, h, w = x.shape
    before, after = k // 2, (k - 1) // 2
    rows = _symmetric_index(h, before, after, x.device)
    cols = _symmetric_index(w, before, after, x.device)
    padded = x.index_select(2, rows).index_select(3, cols)
    patches = F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), kernel_size=k)  # (N·C, k², H·W)
    med = patches.kthvalue(k * k // 2 + 1, dim=1).values
    return med.reshape(n, c, h, w)


class FeatureSqueezingConfig(PluginConfig):
    bits: int = Field(1, ge=1, le=8, description="bit depth: 1 for MNIST-like data, 3 for CIFAR-10")
    median: int | None = Field(None, ge=2, le=5, description="median filter window (2 = 2×2, 3 = 3×3); None: off")


class SqueezedModel(DefendedModel):
    """``base(squeeze(x))``; ``bpda_forward`` passes gradients straight through the squeezer."""

    def __init__(self, base: nn.Module, bits: int, median: int | None) -> None:
        super().__init__(base)
        self.bits, self.median = bits, median

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """Median smoothing (if any), then bit-depth reduction: the output is on the bit grid."""
        if self.median is not None:
            x = median_filter(x, self.median)
        return reduce_bit_depth(x, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.squeeze(x))

    def bpda_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same outputs as ``forward``; the squeezer's backward pass is the identity (BPDA,
        Athalye et al. 2018, §4.1: g(x) ≈ x for a preprocessor g(x) ≈ x)."""
        return self.base(x + (self.squeeze(x) - x).detach())


class FeatureSqueezing(InferenceDefense):
    """Feature squeezing (Xu, Evans and Qi, "Feature Squeezing: Detecting Adversarial Examples in
    Deep Neural Networks", NDSS 2018, §3.1 bit depth and §3.2 median smoothing), as the
    baseline of seed 001 §4.1 (1) (Zantedeschi et al., AISec 2017): the classifier sees its
    input reduced to ``bits`` bits per value (1 bit for MNIST, 3 for CIFAR-10, as Xu et al.
    suggest), optionally after a ``median`` filter (Xu et al. use 2×2 on MNIST, 2×2 and 3×3 on
    CIFAR-10). Used as a defense, not as Xu et al.'s detector. Rounding has a zero gradient, so
    white-box gradient attacks are masked; ``bpda_forward`` gives adaptive attacks the
    straight-through approximation."""

    id: ClassVar[str] = "feature-squeezing"
    Config = FeatureSqueezingConfig

    def wrap(self, model: nn.Module, data: DataSplits, *, seed: int = 42) -> DefendedModel:
        return SqueezedModel(model, self.config.bits, self.config.median)


@hookimpl
def arena_register_defenses(register):
    register(FeatureSqueezing)
