"""The native PyTorch backend: state dicts loaded safely into an architecture.

A weights file holds the state dict of the *user's* network. When the architecture puts a
normalisation layer in front of it (:class:`arena.model.Normalized`, the ``import``
architecture's ``normalize``), the file loads into the network behind that layer; a file with the
wrapper's own keys (``normalize.*``, ``model.*``) loads into the whole.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from arena.backends import Backend
from arena.errors import ConfigError
from arena.hookspecs import hookimpl
from arena.model import Normalized


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
        target = template
        if isinstance(template, Normalized) and set(state) != set(template.state_dict()):
            target = template.model  # the user's network, behind the arena's normalisation
        try:
            target.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{path}: weights do not fit the architecture: {first}") from None
        return template.eval()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code from the file: ``safetensors.torch.load_file`` for
    ``.safetensors``, else ``torch.load(..., weights_only=True)``, whose unpickler refuses every
    object but tensors and plain containers (a pickled class or function is a ConfigError). The
    result must map names to tensors."""
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(f"{path}: install 'safetensors' to read .safetensors files") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # a truncated or foreign file
            raise ConfigError(f"{path}: not a readable safetensors file ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt file or pickled code that weights_only refuses
            raise ConfigError(f"{path}: not a loadable weights-only state dict ({type(exc).__name__}; "
                              "torch.load(weights_only=True) reads tensors and plain containers only)") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: expected a state dict, got {type(state).__name__}")
    odd = next((k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if odd is not None:
        raise ConfigError(f"{path}: expected a state dict of tensors; entry {odd!r} is a "
                          f"{type(state[odd]).__name__}")
    return state


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


@hookimpl
def arena_register_backends(register):
    register(TorchBackend)
