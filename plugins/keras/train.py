"""Train a model outside a tournament and save it as a model file (what ``arena train`` runs).

:func:`train_keras` trains the Keras version of a paper's network (:mod:`arena_builtins.keras`)
with Keras' own ``fit`` loop and saves a ``.keras`` (or legacy ``.h5``) file; :func:`train_torch`
trains the arena's torch network with any training-time defense and saves a weights-only state
dict (``.pt``). Either file enters a tournament through the ``model-file`` defense. Defense and
architecture parameters are validated by the torch plugins' own ``Config`` classes, so ``sigma``,
``copies``, ``t``, ``confidence``, ``width``... mean the same on both backends. Both functions
take the ``registry`` to resolve ids against (the CLI passes its own); neither loads plugins.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arena.data import DataSplits
from arena.errors import ConfigError, did_you_mean
from arena.registry import Registry

KERAS_SUFFIXES = (".keras", ".h5")
TORCH_SUFFIXES = (".pt", ".pth")


@dataclass
class Trained:
    """What a training run produced."""

    path: Path
    backend: str
    test_accuracy: float
    seconds: float


def _settings(registry: Registry, defense: str, params: dict[str, Any] | None,
              overrides: dict[str, Any]) -> Any:
    """The defense's validated config (the torch plugin's ``Config``), overrides applied."""
    cls = registry.get("defenses", defense)
    if not cls.trains:
        kind = getattr(getattr(cls, "defense_kind", None), "value", "not training-time")
        raise ConfigError(f"defense '{defense}' is {kind}; `arena train` needs a training-time defense")
    given = {k: v for k, v in overrides.items() if v is not None}
    return cls.parse_config({**(params or {}), **given})


def _data(registry: Registry, dataset: str, params: dict[str, Any] | None, seed: int) -> DataSplits:
    return registry.make_dataset(dataset, **(params or {})).load(seed)


def _check_out(out: str | Path, suffixes: tuple[str, ...], backend: str) -> Path:
    path = Path(out)
    if path.suffix not in suffixes:
        raise ConfigError(f"{path}: a {backend} model file ends in {' or '.join(suffixes)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def nhwc(x: torch.Tensor) -> np.ndarray:
    """Arena NCHW images as a channels-last numpy array."""
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def train_keras(architecture: str, dataset: str, out: str | Path, defense: str | None = None, *,
                registry: Registry, epochs: int | None = None, batch_size: int | None = None,
                lr: float | None = None, seed: int = 42, keras_backend: str | None = None,
                dataset_params: dict | None = None, architecture_params: dict | None = None,
                defense_params: dict | None = None, verbose: int = 0) -> Trained:
    """Train the Keras version of ``architecture`` on an arena dataset with Keras' ``fit`` and
    save it to ``out`` (``.keras`` or ``.h5``). ``defense``: None/standard, gda, brelu,
    gda-brelu or label-smoothing, with the torch defense's parameters."""
    from arena.backends.keras import import_keras

    keras = import_keras(keras_backend)
    from arena_builtins.keras import architectures, defenses

    defense = defense or "standard"
    if defense not in defenses.RECIPES:
        raise ConfigError(f"no Keras recipe for defense '{defense}'{did_you_mean(defense, defenses.RECIPES)}; "
                          f"Keras trains: {', '.join(defenses.RECIPES)}")
    cfg = _settings(registry, defense, defense_params, dict(epochs=epochs, batch_size=batch_size, lr=lr))
    arch_cfg = registry.get("architectures", architecture).parse_config(architecture_params)
    path = _check_out(out, KERAS_SUFFIXES, "Keras")
    data = _data(registry, dataset, dataset_params, seed)
    recipe = defenses.RECIPES[defense](cfg)
    keras.utils.set_random_seed(seed)
    model = architectures.build(architecture, data.input_shape, data.num_classes,
                                activation=recipe.activation(), **arch_cfg.model_dump())
    model.compile(optimizer=defenses.optimizer(cfg.optimizer, cfg.lr, cfg.weight_decay),
                  loss=recipe.loss(data.num_classes), metrics=["accuracy"])
    onehot = np.eye(data.num_classes, dtype=np.float32)
    start = time.perf_counter()
    model.fit(recipe.batches(nhwc(data.train.x), onehot[data.train.y.numpy()], cfg.batch_size, seed),
              epochs=cfg.epochs, verbose=verbose)
    seconds = time.perf_counter() - start
    logits = model.predict(nhwc(data.test.x), batch_size=512, verbose=0)
    accuracy = float((np.asarray(logits).argmax(1) == data.test.y.numpy()).mean())
    model.save(str(path))
    return Trained(path, f"keras ({keras.backend.backend()})", accuracy, seconds)


def train_torch(architecture: str, dataset: str, out: str | Path, defense: str | None = None, *,
                registry: Registry, epochs: int | None = None, batch_size: int | None = None,
                lr: float | None = None, seed: int = 42, dataset_params: dict | None = None,
                architecture_params: dict | None = None, defense_params: dict | None = None,
                verbose: int = 0) -> Trained:
    """Train the arena's torch ``architecture`` with any training-time ``defense`` and save its
    state dict to ``out`` (``.pt``), loadable by the torch backend (``weights_only=True``)."""
    from arena.training import accuracy

    defense = defense or "standard"
    cfg = _settings(registry, defense, defense_params, dict(epochs=epochs, batch_size=batch_size, lr=lr))
    path = _check_out(out, TORCH_SUFFIXES, "torch")
    data = _data(registry, dataset, dataset_params, seed)
    plugin = registry.make_defense(defense, **cfg.model_dump())
    arch = registry.make_architecture(architecture, **(architecture_params or {}))
    torch.manual_seed(seed)
    model = plugin.build(arch, data.input_shape, data.num_classes)
    start = time.perf_counter()
    plugin.train(model, data, seed=seed, progress=bool(verbose))
    seconds = time.perf_counter() - start
    torch.save(model.state_dict(), path)
    return Trained(path, "torch", accuracy(model, data.test), seconds)
