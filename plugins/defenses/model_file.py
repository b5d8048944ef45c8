"""A pretrained model file as a tournament entrant (torch state dicts, Keras models)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from arena import hookimpl
from arena.data import DataSplits
from arena.defense import PretrainedDefense
from arena.errors import ConfigError
from arena.model import Architecture
from arena.plugin import PluginConfig
from arena.refs import BackendRef
from arena.registry import active_registry


class ModelFileConfig(PluginConfig):
    path: str = Field(description="the model file (relative to the working directory)")
    backend: BackendRef = Field(description="the backend (torch, keras) as an id or {id, params}; "
                                "left out: the backend that reads the file's suffix")
    keras_backend: Literal["tensorflow", "torch"] | None = Field(
        None, description="Keras backend to run a Keras file on; must match the process (KERAS_BACKEND)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="further backend options (keras: input_scale, outputs)")

    @model_validator(mode="before")
    @classmethod
    def _backend_by_suffix(cls, data: Any) -> Any:
        """No backend named: the registered backend that reads the file's suffix."""
        if not isinstance(data, dict) or data.get("backend") is not None or not isinstance(data.get("path"), str):
            return data
        suffix = Path(data["path"]).suffix.lower()
        table = active_registry().backends
        for backend_id, backend in table.items():
            if suffix in backend.suffixes:
                return {**data, "backend": backend_id}
        known = ", ".join(f"{s} ({b})" for b, c in table.items() for s in c.suffixes)
        raise ValueError(f"no backend reads '{suffix}' files ({data['path']}); known: {known}")

    @model_validator(mode="after")
    def _keras_backend_applies(self) -> "ModelFileConfig":
        if self.keras_backend is not None and "keras_backend" not in self.backend.cls.Config.model_fields:
            raise ValueError(f"keras_backend set for a {self.backend.id} file ({self.path})")
        return self


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
        options = dict(cfg.options)
        if cfg.keras_backend is not None:
            options["keras_backend"] = cfg.keras_backend
        backend = cfg.backend.build(**options)
        template = None
        if getattr(backend, "needs_template", True):
            template = architecture.build(data.input_shape, data.num_classes)
        model = backend.load(path, template)
        _check_outputs(model, data, path)
        describe = getattr(model, "describe", None)
        self.provenance = {"backend": cfg.backend.id, "sha256": _sha256(path),
                           **(describe() if callable(describe) else {})}
        return model


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
