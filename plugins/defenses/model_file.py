"""A pretrained model file as a tournament entrant (torch state dicts, Keras models)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from arena import hookimpl
from arena.data import DataSplits
from arena.defense import PretrainedDefense
from arena.errors import ConfigError, did_you_mean
from arena.model import Architecture
from arena.plugin import PluginConfig


class ModelFileConfig(PluginConfig):
    path: str = Field(description="the model file (relative to the working directory)")
    backend: str | None = Field(None, description="backend id (torch, keras); None: by the file's suffix")
    keras_backend: Literal["tensorflow", "torch"] | None = Field(
        None, description="Keras backend to run a Keras file on; must match the process (KERAS_BACKEND)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="further backend options (keras: input_scale, outputs)")


def backend_classes() -> dict[str, type]:
    """The registered backends, by id (the registry of the installed plugins)."""
    from arena.registry import load_plugins

    return dict(load_plugins().backends)


class ModelFile(PretrainedDefense):
    """A ready-made model file entered as it is: no training, no cache (the "defense" is whatever
    produced the file; researchers evaluate the papers' original Keras/TensorFlow models this way,
    e.g. the Keras MNIST CNN of seed 000 or the TensorFlow tutorial network of seed 002).

    Torch files (``.pt``/``.pth``/``.safetensors``, weights only) are loaded into the
    tournament's architecture; Keras files (``.keras``, legacy ``.h5``) carry their own
    architecture and load with ``safe_mode=True``. Inference-time defenses and detectors wrap it
    through ``on``. After :meth:`load`, ``provenance`` records the backend that ran it, its
    versions and the file's SHA-256.
    """

    id: ClassVar[str] = "model-file"
    Config = ModelFileConfig

    provenance: dict[str, Any]

    def load(self, architecture: Architecture, data: DataSplits) -> nn.Module:
        cfg = self.config
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise ConfigError(f"defense '{self.id}': model file not found: {path}")
        backend_id, cls = self._backend(path)
        options = dict(cfg.options)
        if cfg.keras_backend is not None:
            if "keras_backend" not in getattr(cls.Config, "model_fields", {}):
                raise ConfigError(f"defense '{self.id}': keras_backend set for a {backend_id} file ({path})")
            options["keras_backend"] = cfg.keras_backend
        backend = cls(**options)
        template = None
        if getattr(cls, "needs_template", True):
            template = architecture.build(data.input_shape, data.num_classes)
        model = backend.load(path, template)
        _check_outputs(model, data, path)
        describe = getattr(model, "describe", None)
        self.provenance = {"backend": backend_id, "sha256": _sha256(path),
                           **(describe() if callable(describe) else {})}
        return model

    def _backend(self, path: Path) -> tuple[str, type]:
        table = backend_classes()
        wanted = self.config.backend
        if wanted is not None:
            if wanted not in table:
                raise ConfigError(f"defense '{self.id}': unknown backend '{wanted}'{did_you_mean(wanted, table)}")
            return wanted, table[wanted]
        for backend_id, cls in table.items():
            if path.suffix.lower() in cls.suffixes:
                return backend_id, cls
        known = ", ".join(f"{s} ({b})" for b, c in table.items() for s in c.suffixes)
        raise ConfigError(f"defense '{self.id}': no backend reads '{path.suffix}' files ({path}); known: {known}")


def _check_outputs(model: nn.Module, data: DataSplits, path: Path) -> None:
    """One forward pass on two test images: logits of shape (2, num_classes)."""
    with torch.no_grad():
        out = model.eval()(data.test.x[:2])
    if tuple(out.shape) != (2, data.num_classes):
        raise ConfigError(f"{path}: the model returns shape {tuple(out.shape)[1:]} per input; "
                          f"dataset '{data.name}' has {data.num_classes} classes")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@hookimpl
def arena_register_defenses(register):
    register(ModelFile)
