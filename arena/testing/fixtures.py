"""What the contract suites share: the installed plugins, the digits data, a small trained CNN,
and a per-process cache of what they build."""
from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arena.data import DataSplits
from arena.refs import PluginRef
from arena.registry import Registry, default_registry
from arena.threat import Norm
from arena.training import accuracy, fit

DEFAULT_EPS = {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L1: 8.0, Norm.L0: 12.0}
#: The short training schedule of training-time defenses under the suites.
QUICK: dict[str, Any] = {"epochs": 5, "batch_size": 32, "lr": 3e-3}


_USED: list[Registry] = []


def registry() -> Registry:
    """The registry the suites test against: the plugins installed in this environment (loaded
    once per process), or the one given to :func:`using_registry`."""
    return _USED[-1] if _USED else default_registry()


@contextmanager
def using_registry(chosen: Registry) -> Iterator[Registry]:
    """Run the suites against ``chosen`` inside the block (plugins of your own that are not
    installed, such as test-only ones given with ``load_plugins(extra=...)``)."""
    _USED.append(chosen)
    try:
        with chosen.resolving():
            yield chosen
    finally:
        _USED.pop()


@functools.lru_cache(maxsize=1)
def digits() -> DataSplits:
    """The embedded digits data, split with seed 42."""
    return registry().make_dataset("digits").load(seed=42)


@functools.lru_cache(maxsize=1)
def contract_data() -> DataSplits:
    """The defense suites' data: 400 training and 200 test samples of :func:`digits`."""
    d = digits()
    return DataSplits(d.name, d.train.take(400, 0), d.test.take(200, 0), d.num_classes)


@functools.lru_cache(maxsize=1)
def _trained_state() -> tuple[dict[str, torch.Tensor], float]:
    torch.manual_seed(42)
    model = registry().make_architecture("digits-cnn").build((1, 8, 8), 10)
    fit(model, digits().train, lambda m, x, y: F.cross_entropy(m(x), y),
        epochs=8, batch_size=64, lr=2e-3, seed=42)
    return {k: v.clone() for k, v in model.state_dict().items()}, accuracy(model, digits().test)


def trained_model() -> nn.Module:
    """A fresh copy of a small CNN trained on digits (>90% test accuracy), in eval mode."""
    state, _ = _trained_state()
    model = registry().make_architecture("digits-cnn").build((1, 8, 8), 10)
    model.load_state_dict(state)
    return model.eval()


def attack_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test samples the trained model classifies correctly."""
    model = trained_model()
    test = digits().test
    with torch.no_grad():
        keep = model(test.x).argmax(1) == test.y
    return test.x[keep][:n].clone(), test.y[keep][:n].clone()


def canonical(value: Any) -> str:
    """A cache key for a config: JSON with sorted keys (equal configs, equal keys)."""
    return json.dumps(value, sort_keys=True, default=str)


def reference(kind: type[PluginRef], value: str | dict[str, Any]) -> PluginRef:
    """A plugin reference (an id, or ``{"id", "params"}``) resolved against :func:`registry`."""
    with registry().resolving():
        return kind.model_validate(value)


# ------------------------------------------------------------------------------- defenses

_BUILT: dict[str, Any] = {}  # what the suites build once per process, by canonical key

def built_once(key: list[Any], build: Callable[[], Any]) -> Any:
    """``build()``, called once per process per ``key`` (a JSON-able list)."""
    text = canonical(key)
    if text not in _BUILT:
        _BUILT[text] = build()
    return _BUILT[text]
