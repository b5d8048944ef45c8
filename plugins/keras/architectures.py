"""Keras 3 versions of the papers' networks, layer for layer like their torch versions.

Each builder returns a channels-last ``keras.Sequential`` mapping ``(N, H, W, C)`` inputs in
[0, 1] to logits. Padding and pooling follow :mod:`arena_builtins.architectures.papers` exactly (a
``valid`` convolution larger than its input falls back to ``same``; a pool that would empty the
map is skipped), so a torch model's weights copy over one to one (:mod:`arena_builtins.keras.convert`).
``activation`` builds each activation layer: ``keras.layers.ReLU()`` by default,
``ReLU(max_value=t)`` for bounded ReLUs.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from arena.errors import ConfigError, did_you_mean
from arena_builtins.architectures.papers import _pad_1d
from arena_builtins.architectures.small import check_shape, scaled

Activation = Callable[[], keras.layers.Layer]
Size = tuple[int, int]


def relu(max_value: float | None = None) -> Activation:
    """A factory of ReLU layers, bounded at ``max_value`` when given (seed 001's BReLU)."""
    return lambda: keras.layers.ReLU(max_value=max_value)


def conv(filters: int, k: int, hw: Size, stride: int = 1, padding: str = "same") -> tuple[list, Size]:
    """Keras layers of a TF-style convolution on an ``hw`` map, and the output size."""
    pads = [_pad_1d(size, k, stride, padding) for size in hw]
    out = (pads[0][2], pads[1][2])
    modes = ["valid" if padding == "valid" and size >= k else "same" for size in hw]
    if modes[0] == modes[1]:
        return [keras.layers.Conv2D(filters, k, strides=stride, padding=modes[0])], out
    zero = keras.layers.ZeroPadding2D(((pads[0][0], pads[0][1]), (pads[1][0], pads[1][1])))
    return [zero, keras.layers.Conv2D(filters, k, strides=stride, padding="valid")], out


def pool2(hw: Size) -> tuple[list, Size]:
    """A 2x2 max-pool, or nothing where the map is already one pixel wide."""
    if min(hw) < 2:
        return [], hw
    return [keras.layers.MaxPooling2D(2)], (hw[0] // 2, hw[1] // 2)


def keras_mnist_cnn(shape: tuple[int, int, int], k: int, act: Activation, width: float = 1.0,
                    dropout_conv: float = 0.25, dropout_fc: float = 0.5) -> list:
    """The Keras MNIST example CNN (seed 000 §IV-B)."""
    c, h, w = shape
    conv1, hw = conv(scaled(32, width), 3, (h, w), padding="valid")
    conv2, hw = conv(scaled(64, width), 3, hw, padding="valid")
    pool, hw = pool2(hw)
    return [*conv1, act(), *conv2, act(), *pool, keras.layers.Dropout(dropout_conv), keras.layers.Flatten(),
            keras.layers.Dense(scaled(128, width)), act(), keras.layers.Dropout(dropout_fc), keras.layers.Dense(k)]


def tf_tutorial_cnn(shape: tuple[int, int, int], k: int, act: Activation, width: float = 1.0,
                    dropout: float = 0.5) -> list:
    """The TensorFlow tutorial MNIST CNN (seed 002 §4)."""
    c, h, w = shape
    conv1, hw = conv(scaled(32, width), 5, (h, w))
    pool1, hw = pool2(hw)
    conv2, hw = conv(scaled(64, width), 5, hw)
    pool_b, hw = pool2(hw)
    return [*conv1, act(), *pool1, *conv2, act(), *pool_b, keras.layers.Flatten(),
            keras.layers.Dense(scaled(1024, width)), act(), keras.layers.Dropout(dropout), keras.layers.Dense(k)]


def seed001_cnn(shape: tuple[int, int, int], k: int, act: Activation, width: float = 1.0) -> list:
    """The CNN of seed 001 §4.1 (cleverhans' basic CNN strides and padding)."""
    c, h, w = shape
    conv1, hw = conv(scaled(64, width), 8, (h, w), stride=2, padding="same")
    conv2, hw = conv(scaled(128, width), 6, hw, stride=2, padding="valid")
    conv3, hw = conv(scaled(128, width), 5, hw, padding="valid")
    return [*conv1, act(), *conv2, act(), *conv3, act(), keras.layers.Flatten(), keras.layers.Dense(k)]


def digits_cnn(shape: tuple[int, int, int], k: int, act: Activation, width: float = 1.0) -> list:
    """The arena's tiny digits CNN (not from a paper; the quick stand-in)."""
    c, h, w = shape
    pool, _ = pool2((h, w))
    return [keras.layers.Conv2D(scaled(16, width), 3, padding="same"), act(),
            keras.layers.Conv2D(scaled(32, width), 3, padding="same"), act(), *pool, keras.layers.Flatten(),
            keras.layers.Dense(scaled(64, width)), act(), keras.layers.Dense(k)]


ARCHITECTURES: dict[str, Callable[..., list]] = {
    "keras-mnist-cnn": keras_mnist_cnn,
    "tf-tutorial-cnn": tf_tutorial_cnn,
    "seed001-cnn": seed001_cnn,
    "digits-cnn": digits_cnn,
}


def build(architecture: str, input_shape: tuple[int, ...], num_classes: int, *,
          activation: Activation | None = None, **params: Any) -> keras.Model:
    """The Keras network ``architecture`` for arena inputs of shape ``(C, H, W)``."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"no Keras version of architecture '{architecture}'"
                          f"{did_you_mean(architecture, ARCHITECTURES)}; Keras has: {', '.join(ARCHITECTURES)}")
    c, h, w = check_shape(input_shape, num_classes)
    try:
        layers = ARCHITECTURES[architecture]((c, h, w), num_classes, activation or relu(), **params)
    except TypeError as exc:
        raise ConfigError(f"architecture '{architecture}' (Keras): {exc}") from None
    return keras.Sequential([keras.Input((h, w, c)), *layers], name=architecture.replace("-", "_"))
