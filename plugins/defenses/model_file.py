"""A pretrained model file as a tournament entrant (torch state dicts, TorchScript, Keras models)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from arena import hookimpl
from arena.data import DataSplits
from arena.defense import PretrainedDefense
from arena.errors import ConfigError
from arena.model import Architecture, Normalized, with_normalization
from arena.plugin import PluginConfig
from arena.refs import BackendRef
from arena.registry import active_registry
from arena_builtins.architectures.imported import NormalizeConfig


class ModelFileConfig(PluginConfig):
    path: str = Field(description="the model file (relative to the working directory)")
    backend: BackendRef = Field(description="the backend (torch, keras) as an id or {id, params}; "
                                "left out: the backend that reads the file's suffix")
    keras_backend: Literal["tensorflow", "torch"] | None = Field(
        None, description="Keras backend to run a Keras file on; must match the process (KERAS_BACKEND)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="further backend options (keras: input_scale, outputs)")
    normalize: NormalizeConfig | None = Field(
        None, description="{mean, std} per channel: the model was trained on (x - mean) / std of [0, 1] "
        "pixels; applied as its first layer, whatever the backend")

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

    @field_validator("path")
    @classmethod
    def _readable_model_file(cls, v: str) -> str:
        """When the tournament loads, not mid-run: the file is there, readable, and its first bytes
        are those of its format (full loading stays in :meth:`ModelFile.load`)."""
        check_model_file(Path(v).expanduser())
        return v


# The first bytes of each format a built-in backend reads, by suffix (a file of another suffix,
# read by a third-party backend, is only checked to be a readable file).
ZIP = b"PK\x03\x04"  # torch.save since 1.6, torch.jit.save, and .keras files
LEGACY_TORCH = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's old pickle magic number
HDF5 = b"\x89HDF\r\n\x1a\n"
FORMATS = {".pt": ("a torch.save file", (ZIP, LEGACY_TORCH)), ".pth": ("a torch.save file", (ZIP, LEGACY_TORCH)),
           ".torchscript": ("a TorchScript archive", (ZIP,)), ".ts": ("a TorchScript archive", (ZIP,)),
           ".keras": ("a Keras zip archive", (ZIP,)), ".h5": ("an HDF5 file", (HDF5,)),
           ".hdf5": ("an HDF5 file", (HDF5,))}


def check_model_file(path: Path) -> None:
    """ValueError naming ``path`` unless it is a readable file whose head fits its suffix's format
    (a zip or ``torch.save`` file, a safetensors header, a Keras archive, HDF5)."""
    if not path.exists():
        raise ValueError(f"model file not found: {path}")
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ValueError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if not head:
        raise ValueError(f"model file {path} is empty")
    if suffix == ".safetensors":
        size = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        if not (0 < size <= path.stat().st_size - 8 and head[8:9] == b"{"):
            raise ValueError(f"{path} is not a safetensors file (no safetensors header)")
    elif suffix in FORMATS:
        what, magics = FORMATS[suffix]
        if not any(head.startswith(m) for m in magics):
            raise ValueError(f"{path} is not {what} (it starts with {head[:8]!r})")


class ModelFile(PretrainedDefense):
    """A ready-made model file entered as it is: no training, no cache (the "defense" is whatever
    produced the file; researchers evaluate the papers' original Keras/TensorFlow models this way,
    e.g. the Keras MNIST CNN of seed 000 or the TensorFlow tutorial network of seed 002).

    Torch files (``.pt``/``.pth``/``.safetensors``, weights only) are loaded into the
    tournament's architecture (``import`` enters a network of one's own code); TorchScript
    archives (``.torchscript``/``.ts``) and Keras files (``.keras``, legacy ``.h5``, loaded with
    ``safe_mode=True``) carry their own architecture. ``normalize = {mean, std}`` puts a
    per-channel normalisation layer first, for a model trained on normalised inputs: the entrant
    takes [0, 1] pixels and attack budgets stay in pixel space (for Keras, before
    ``input_scale``). Inference-time defenses and detectors wrap it through ``on``. After
    :meth:`load`, ``provenance`` records the backend that ran it, its versions and the file's
    SHA-256.
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
        describe = getattr(model, "describe", None)
        if cfg.normalize is not None:
            if isinstance(template, Normalized) or isinstance(model, Normalized):
                raise ConfigError(f"defense '{self.id}': {path}: normalize is given twice, in the model file's "
                                  "params and in its architecture's; keep one")
            cfg.normalize.check_channels(data.input_shape[0], f"defense '{self.id}': {path}")
            model = with_normalization(model, cfg.normalize.mean, cfg.normalize.std).eval()
        _check_outputs(model, data, path)
        self.provenance = {"backend": cfg.backend.id, "sha256": _sha256(path),
                           **(describe() if callable(describe) else {})}
        return model


def _check_outputs(model: nn.Module, data: DataSplits, path: Path) -> None:
    """One forward pass on two test images: logits of shape (2, num_classes); a model that
    cannot take the dataset's inputs is a one-line ConfigError too."""
    x = data.test.x[:2]
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # a shape mismatch inside the network, most often
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"{path}: the model fails on inputs of shape {tuple(x.shape)} of dataset "
                          f"'{data.name}': {type(exc).__name__}: {first}") from None
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{path}: the model returns a {type(out).__name__}, not a tensor of logits")
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
