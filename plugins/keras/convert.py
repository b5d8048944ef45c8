"""Copy a torch model's weights into its Keras twin (OIHW to HWIO, and the flatten order).

Layers are matched in order: every ``nn.Conv2d`` with the next ``Conv2D`` and every
``nn.Linear`` with the next ``Dense``. torch flattens a feature map as (C, H, W) and Keras
(channels-last) as (H, W, C), so the rows of the first ``Dense`` after a ``Flatten`` of a map
are permuted accordingly. Used by the parity tests and benchmarks, and by anyone who wants the
Keras version of a model trained here.
"""
from __future__ import annotations

import keras
import numpy as np
from torch import nn

from arena.errors import ConfigError


def _torch_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _keras_layers(model: keras.Model) -> list[tuple[keras.layers.Layer, tuple | None]]:
    """(layer, flattened map shape (H, W, C) feeding it, if it follows a Flatten)."""
    out, flat_from = [], None
    for layer in model.layers:
        if isinstance(layer, keras.layers.Flatten):
            shape = tuple(layer.input.shape[1:])
            flat_from = shape if len(shape) == 3 else None
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            out.append((layer, flat_from if isinstance(layer, keras.layers.Dense) else None))
            flat_from = None
    return out


def dense_kernel(weight: np.ndarray, flat_from: tuple | None) -> np.ndarray:
    """A torch Linear weight ``(out, in)`` as a Keras Dense kernel ``(in, out)``."""
    if flat_from is None:
        return weight.T
    h, w, c = flat_from
    return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def copy_torch_weights(torch_model: nn.Module, keras_model: keras.Model) -> keras.Model:
    """Set ``keras_model``'s weights from ``torch_model`` (same layers in the same order)."""
    sources, targets = _torch_layers(torch_model), _keras_layers(keras_model)
    if len(sources) != len(targets):
        raise ConfigError(f"torch model has {len(sources)} conv/linear layers, Keras model {len(targets)}")
    for src, (dst, flat_from) in zip(sources, targets):
        weight = src.weight.detach().cpu().numpy()
        kernel = weight.transpose(2, 3, 1, 0) if isinstance(src, nn.Conv2d) else dense_kernel(weight, flat_from)
        bias = src.bias.detach().cpu().numpy() if src.bias is not None else None
        expected = tuple(dst.kernel.shape)
        if kernel.shape != expected:
            raise ConfigError(f"{dst.name}: kernel {expected} does not fit torch weights {kernel.shape}")
        dst.set_weights([kernel] if bias is None else [kernel, bias])
    return keras_model
