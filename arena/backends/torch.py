"""The native PyTorch backend: state dicts loaded safely into an architecture."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from arena.backends import Backend
from arena.errors import ConfigError
from arena.hookspecs import hookimpl


class TorchBackend(Backend):
    """PyTorch models stored as state dicts (``.pt``/``.pth`` through ``torch.load(...,
    weights_only=True)``, or ``.safetensors`` when the safetensors package is installed),
    loaded into a network built from an arena architecture. No pickled code is ever run."""

    id: ClassVar[str] = "torch"
    suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".safetensors")

    def load(self, path: Path, template: nn.Module | None = None) -> nn.Module:
        path = Path(path)
        if template is None:
            raise ConfigError(f"{path}: the torch backend needs an architecture to load weights into")
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        state = read_state_dict(path)
        try:
            template.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{path}: weights do not fit the architecture: {first}") from None
        return template.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code from the file."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"{path}: install 'safetensors' to read .safetensors files") from None
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or pickled code that weights_only refuses
        raise ConfigError(f"{path}: not a loadable weights-only state dict ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


@hookimpl
def arena_register_backends(register):
    register(TorchBackend)
