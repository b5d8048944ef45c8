"""The MNIST / CIFAR-10 networks the seed papers train their defenses on.

Convolutions follow Keras / TensorFlow padding: ``valid`` or ``same`` (TensorFlow's asymmetric
zero padding, also for strided convolutions). A ``valid`` convolution whose kernel is larger
than its input (8x8 digits through a 6x6 kernel) falls back to ``same``, so every network builds
for 8x8, 28x28 and 32x32 inputs. Layouts follow :mod:`arena_builtins.architectures.small`:
``features`` (flattened embedding) then ``classifier`` (linear to logits).
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from arena import hookimpl
from arena.model import Architecture
from arena.plugin import PluginConfig
from arena_builtins.architectures.small import (
    FeatureClassifier,
    check_shape,
    pool2,
    scaled,
    with_head,
)

Size = tuple[int, int]


def _pad_1d(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """(pad before, pad after, output size) along one axis, TensorFlow style."""
    if padding == "valid" and size >= k:
        return 0, 0, (size - k) // stride + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2, out


def tf_conv(
    in_ch: int, out_ch: int, k: int, hw: Size, stride: int = 1,
    padding: Literal["same", "valid"] = "same",
) -> tuple[nn.Module, Size]:
    """A Keras-style ``Conv2D`` for an ``hw`` input, and its output size."""
    top, bottom, h = _pad_1d(hw[0], k, stride, padding)
    left, right, w = _pad_1d(hw[1], k, stride, padding)
    conv = nn.Conv2d(in_ch, out_ch, k, stride=stride)
    if top or bottom or left or right:
        return nn.Sequential(nn.ZeroPad2d((left, right, top, bottom)), conv), (h, w)
    return conv, (h, w)


class WidthConfig(PluginConfig):
    width: float = Field(1.0, gt=0, description="multiplier of every layer's width")


class KerasMnistCNN(Architecture):
    """The Keras MNIST example CNN, the MNIST model of seed 000 (NsLoss + Jacobian), §IV-B.

    conv 32 3x3 - ReLU - conv 64 3x3 - ReLU - maxpool 2 - dropout .25 - dense 128 - ReLU -
    dropout .5 - dense K (https://keras.io/examples/mnist_cnn/).
    """

    id: ClassVar[str] = "keras-mnist-cnn"

    class Config(WidthConfig):
        dropout_conv: float = Field(0.25, ge=0, lt=1)
        dropout_fc: float = Field(0.5, ge=0, lt=1)

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        cfg = self.config
        c1, c2, hidden = (scaled(n, cfg.width) for n in (32, 64, 128))
        conv1, hw = tf_conv(c, c1, 3, (h, w), padding="valid")
        conv2, hw = tf_conv(c1, c2, 3, hw, padding="valid")
        pool, hw = pool2(hw)
        features = nn.Sequential(
            conv1, nn.ReLU(), conv2, nn.ReLU(), pool, nn.Dropout(cfg.dropout_conv), nn.Flatten(),
            nn.Linear(c2 * hw[0] * hw[1], hidden), nn.ReLU(), nn.Dropout(cfg.dropout_fc),
        )
        return FeatureClassifier(features, nn.Linear(hidden, num_classes))


class TFTutorialCNN(Architecture):
    """The TensorFlow tutorial MNIST CNN: the MNIST model of seed 002 (Jacobian reg.), §4.

    conv 32 5x5 same - ReLU - maxpool 2 - conv 64 5x5 same - ReLU - maxpool 2 - fc 1024 - ReLU -
    dropout (keep 0.5) - fc K.
    """

    id: ClassVar[str] = "tf-tutorial-cnn"

    class Config(WidthConfig):
        dropout: float = Field(0.5, ge=0, lt=1, description="drop probability of the fc layer")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        c1, c2, hidden = (scaled(n, self.config.width) for n in (32, 64, 1024))
        conv1, hw = tf_conv(c, c1, 5, (h, w))
        pool1, hw = pool2(hw)
        conv2, hw = tf_conv(c1, c2, 5, hw)
        pool_b, hw = pool2(hw)
        features = nn.Sequential(
            conv1, nn.ReLU(), pool1, conv2, nn.ReLU(), pool_b, nn.Flatten(),
            nn.Linear(c2 * hw[0] * hw[1], hidden), nn.ReLU(), nn.Dropout(self.config.dropout),
        )
        return FeatureClassifier(features, nn.Linear(hidden, num_classes))


def _seed001_stem(c: int, width: float, hw: Size) -> tuple[list[nn.Module], int, Size]:
    """Conv2D(64, 8x8, stride 2, same) - ReLU - Conv2D(128, 6x6, stride 2, valid) - ReLU."""
    c1, c2 = scaled(64, width), scaled(128, width)
    conv1, hw = tf_conv(c, c1, 8, hw, stride=2, padding="same")
    conv2, hw = tf_conv(c1, c2, 6, hw, stride=2, padding="valid")
    return [conv1, nn.ReLU(), conv2, nn.ReLU()], c2, hw


class Seed001CNN(Architecture):
    """The CNN of seed 001 (Efficient Defenses: Bounded ReLU + GDA), §4.1.

    Conv2D(64, 8x8) - Conv2D(128, 6x6) - Conv2D(128, 5x5) - dense K, ReLU after each conv, with
    the cleverhans basic CNN's strides and padding (8x8 stride 2 same, 6x6 stride 2 valid, 5x5
    stride 1 valid; a valid conv larger than its input uses same padding instead).
    """

    id: ClassVar[str] = "seed001-cnn"

    class Config(WidthConfig):
        pass

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        stem, c2, hw = _seed001_stem(c, self.config.width, (h, w))
        conv3, hw = tf_conv(c2, scaled(128, self.config.width), 5, hw, padding="valid")
        features = nn.Sequential(*stem, conv3, nn.ReLU(), nn.Flatten())
        return with_head(features, (c, h, w), num_classes)


class Seed001ResBody(nn.Module):
    """Feature extractor of :class:`Seed001ResNet`: ``pool(relu(branch(stem(x)) + stem(x)))``."""

    def __init__(self, stem: nn.Module, branch: nn.Module, pool: nn.Module) -> None:
        super().__init__()
        self.stem = stem
        self.branch = branch
        self.relu = nn.ReLU()
        self.pool = pool
        self.flatten = nn.Flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.flatten(self.pool(self.relu(self.branch(h) + h)))


class Seed001ResNet(Architecture):
    """The ResNet of seed 001 (Efficient Defenses: Bounded ReLU + GDA), §4.1.

    Conv2D(64, 8x8) - Conv2D(128, 6x6) - Conv2D(64, 1x1) - Conv2D(64, 1x1) - Conv2D(128, 1x1) -
    MaxPooling(3x3) - dense K, with an identity shortcut from layer 2 to layer 6: the (ReLU)
    output of the 6x6 conv is added to the last 1x1 conv's output, then ReLU and pooling. The
    first two convs use the strides and padding of ``seed001-cnn``; the 3x3 pooling (stride 3,
    Keras' default) shrinks to the feature map where that is smaller.
    """

    id: ClassVar[str] = "seed001-resnet"

    class Config(WidthConfig):
        pass

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        stem, c2, hw = _seed001_stem(c, self.config.width, (h, w))
        c3 = scaled(64, self.config.width)
        branch = nn.Sequential(
            nn.Conv2d(c2, c3, 1), nn.ReLU(), nn.Conv2d(c3, c3, 1), nn.ReLU(), nn.Conv2d(c3, c2, 1),
        )
        pool = nn.MaxPool2d((min(3, hw[0]), min(3, hw[1])))
        body = Seed001ResBody(nn.Sequential(*stem), branch, pool)
        return with_head(body, (c, h, w), num_classes)


class CifarCNN4(Architecture):
    """The CIFAR-10 CNN of seed 002 (Jacobian post-processing), §4.

    Four sets of [conv 3x3 same - ReLU - conv 3x3 same - ReLU - maxpool 2 - dropout (keep 0.75)]
    with 32, 64, 128 and 256 channels, then fc 512 - ReLU - fc K. Pooling is skipped once the
    feature map is a single pixel (small inputs).
    """

    id: ClassVar[str] = "cifar-cnn4"

    class Config(WidthConfig):
        dropout: float = Field(0.25, ge=0, lt=1, description="drop probability after each set")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        c, h, w = check_shape(input_shape, num_classes)
        layers: list[nn.Module] = []
        hw: Size = (h, w)
        for n in (32, 64, 128, 256):
            out = scaled(n, self.config.width)
            pool, hw = pool2(hw)
            layers += [
                nn.Conv2d(c, out, 3, padding=1), nn.ReLU(),
                nn.Conv2d(out, out, 3, padding=1), nn.ReLU(), pool, nn.Dropout(self.config.dropout),
            ]
            c = out
        hidden = scaled(512, self.config.width)
        layers += [nn.Flatten(), nn.Linear(c * hw[0] * hw[1], hidden), nn.ReLU()]
        return FeatureClassifier(nn.Sequential(*layers), nn.Linear(hidden, num_classes))


@hookimpl
def arena_register_architectures(register) -> None:
    for cls in (KerasMnistCNN, TFTutorialCNN, Seed001CNN, Seed001ResNet, CifarCNN4):
        register(cls)
