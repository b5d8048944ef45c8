"""CIFAR-10 networks of the seed papers: VGG19 with batch norm and the CIFAR ResNet-56.

Both end in a global average pool, so their embedding (``features``) has a fixed width for any
input size; ``width`` scales every channel count so tests can build tiny versions.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from arena import hookimpl
from arena.model import Architecture
from arena.plugin import PluginConfig
from arena_builtins.architectures.small import FeatureClassifier, check_shape, pool2, scaled

VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
    512, 512, 512, 512, "M",
)


class VGG19(Architecture):
    """VGG19 with batch norm: the CIFAR-10 model of seed 000 (NsLoss + Jacobian), §IV-B.

    Simonyan & Zisserman's configuration E (16 conv 3x3 - BN - ReLU layers, five 2x2 max-pools)
    in its CIFAR form: a global average pool and one linear layer to K classes. Pools are
    skipped once the feature map is a single pixel (inputs smaller than 32x32).
    """

    id: ClassVar[str] = "vgg19"

    class Config(PluginConfig):
        width: float = Field(1.0, gt=0, description="multiplier of every layer's width")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        layers: list[nn.Module] = []
        hw = (h, w)
        for item in VGG19_CFG:
            if item == "M":
                pool, hw = pool2(hw)
                layers.append(pool)
                continue
            out = scaled(int(item), self.config.width)
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            c = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return FeatureClassifier(nn.Sequential(*layers), nn.Linear(c, num_classes))


class PadShortcut(nn.Module):
    """He et al.'s option-A shortcut: subsample by ``stride`` and zero-pad the new channels."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return nn.functional.pad(x, (0, 0, 0, 0, half, self.extra - half))


def _activation(negative_slope: float) -> nn.Module:
    return nn.ReLU() if negative_slope == 0 else nn.LeakyReLU(negative_slope)


class BasicBlock(nn.Module):
    """conv 3x3 - BN - act - conv 3x3 - BN, plus the shortcut, then act (He et al. 2016, §4.2)."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, shortcut: str, negative_slope: float
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = _activation(negative_slope)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = _activation(negative_slope)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            if shortcut == "a":
                self.shortcut = PadShortcut(stride, out_ch - in_ch)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet56(Architecture):
    """He et al.'s CIFAR ResNet-56 (Deep Residual Learning, CVPR 2016, §4.2), the classifier of
    seed 003 (PDM), §4 and Appendix B.

    conv 3x3 16 - BN - ReLU, three stages of (depth - 2) / 6 BasicBlocks with 16, 32 and 64
    channels (stride 2 at stages 2 and 3), global average pool, linear K. ``shortcut`` "a" is
    the paper's parameter-free option A (subsample + zero padding), "b" a 1x1 conv + BN
    projection. ``depth`` 32 gives seed 003's ResNet-32 proxy; ``negative_slope`` 0.1 gives its
    Leaky-ReLU (the default 0 uses ``nn.ReLU`` modules).
    """

    id: ClassVar[str] = "resnet56"

    class Config(PluginConfig):
        width: float = Field(1.0, gt=0, description="multiplier of every layer's width")
        depth: int = Field(56, ge=8, description="6n + 2 layers: n BasicBlocks per stage")
        shortcut: Literal["a", "b"] = "a"
        negative_slope: float = Field(0.0, ge=0, lt=1)

        @model_validator(mode="after")
        def _depth_is_6n_plus_2(self) -> "ResNet56.Config":
            if (self.depth - 2) % 6:
                raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, 110), got {self.depth}")
            return self

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, _, _ = check_shape(input_shape, num_classes)
        cfg = self.config
        widths = [scaled(n, cfg.width) for n in (16, 32, 64)]
        layers: list[nn.Module] = [
            nn.Conv2d(c, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
            _activation(cfg.negative_slope),
        ]
        in_ch = widths[0]
        for stage, out_ch in enumerate(widths):
            for block in range((cfg.depth - 2) // 6):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_ch, out_ch, stride, cfg.shortcut, cfg.negative_slope))
                in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = nn.Sequential(*layers)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        return FeatureClassifier(features, nn.Linear(in_ch, num_classes))


@hookimpl
def arena_register_architectures(register) -> None:
    register(VGG19)
    register(ResNet56)
