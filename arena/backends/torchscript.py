"""The TorchScript backend: whole compiled models (``torch.jit.save``) as arena models.

A TorchScript archive carries its own graph and weights, so no architecture template is needed.
It is loaded with ``torch.jit.load(path, map_location="cpu")`` and moved to the tournament's
device afterwards. The archive is read by TorchScript's own loader, which rebuilds a compiled
graph and imports no Python module of the file's author (unlike a pickle); the graph still runs
whatever operators it holds, so, as for any model file, enter archives you trust to be a model.

The loaded module is wrapped into a :class:`TorchScriptModel`, a plain ``torch.nn.Module``
that pickles by re-serialising the archive, so that the tournament can send it to worker and
attacker processes (a bare ScriptModule does not pickle).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from arena.backends import Backend
from arena.errors import ConfigError
from arena.hookspecs import hookimpl
from arena.model import model_device


class TorchScriptModel(nn.Module):
    """A loaded TorchScript module (``.script``) behind a plain module: ``forward`` calls it;
    pickling saves the archive to bytes and loads it again on the other side (same device when
    there is one, else the CPU)."""

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.script = script

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.script(x)

    def __reduce__(self) -> tuple:
        buffer = io.BytesIO()
        torch.jit.save(self.script, buffer)
        return (_unpickle, (buffer.getvalue(), str(model_device(self)), self.training))

    def describe(self) -> dict[str, Any]:
        """Provenance: the format and the torch version that ran it."""
        return {"format": "torchscript", "torch": torch.__version__}


def _unpickle(data: bytes, device: str, training: bool) -> TorchScriptModel:
    script = torch.jit.load(io.BytesIO(data), map_location="cpu")
    wanted = torch.device(device)
    if wanted.type == "cuda" and not torch.cuda.is_available():
        wanted = torch.device("cpu")
    return TorchScriptModel(script).to(wanted).train(training)


class TorchScriptBackend(Backend):
    """TorchScript archives (``.torchscript``/``.ts``, written by ``torch.jit.save``) loaded with
    ``torch.jit.load`` on the CPU, then moved to the tournament's device. The archive holds the
    architecture: no template."""

    id: ClassVar[str] = "torchscript"
    suffixes: ClassVar[tuple[str, ...]] = (".torchscript", ".ts")
    needs_template: ClassVar[bool] = False

    def load(self, path: Path, template: nn.Module | None = None) -> nn.Module:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        try:
            script = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # not an archive, or one this torch cannot read
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"{path}: not a loadable TorchScript archive ({type(exc).__name__}: {first})") from None
        return TorchScriptModel(script).eval()


@hookimpl
def arena_register_backends(register):
    register(TorchScriptBackend)
