"""On-disk cache of trained models, keyed by a content hash of everything that determines them.

An entry is ``root/<key>.pt``, written atomically (a temporary file, then a rename) and read
with ``weights_only``: ``{"format": FORMAT, "sha256": ..., "state": state_dict}``, the digest
taken over every tensor's name, dtype, shape and bytes (:func:`state_digest`). An entry is
handed out only when it is exactly what was saved and fits the model completely: same keys,
shapes and dtypes. Anything else (a damaged file, a digest that does not match, an entry of an
older format, a model whose shape changed) is rejected with a warning; the caller trains again,
from scratch, and its :meth:`ModelCache.save` overwrites the entry. The weights are loaded into a
module built afresh for the purpose, so a rejected entry leaves nothing in the model trained
next.

The key includes :func:`numerics`, what besides the inputs decides the trained bits on this
machine: the same key means the same weights, whichever executor trained them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena import __version__

FORMAT = "arena-model-cache/1"

log = logging.getLogger(__name__)


def content_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (defense config, architecture, dataset, seed...)."""
    text = json.dumps({"arena": __version__, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def numerics(device: torch.device) -> dict[str, Any]:
    """What decides the floating-point bits of a training on ``device`` here, besides its inputs:
    torch's version and the device; on a CPU, the intra-op thread count and the instruction set
    (the thread count changes the order of float sums: a Ray worker trains with one thread, as Ray
    sets ``OMP_NUM_THREADS`` to the task's CPUs, the driver with one per core); on a GPU, its
    model. Part of every cache key."""
    out: dict[str, Any] = {"torch": torch.__version__, "device": device.type}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        out["threads"] = torch.get_num_threads()
        out["cpu"] = torch.backends.cpu.get_cpu_capability()
    return out


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Rejected(Exception):
    """A cache entry that is not handed out; the message says why."""


def _verified(entry: Any) -> dict[str, torch.Tensor]:
    """The state dict of a loaded entry whose digest matches."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise Rejected("not an entry of this cache's format")
    state = entry.get("state")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Rejected("no state dict in it")
    if state_digest(state) != entry.get("sha256"):
        raise Rejected("its checksum does not match: the file changed on disk")
    return state


def _fits(state: dict[str, torch.Tensor], model: nn.Module) -> None:
    """Raise :class:`Rejected` unless ``state`` has exactly the keys, shapes and dtypes of ``model``."""
    expected = model.state_dict()
    if set(state) != set(expected):
        extra, missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
        raise Rejected(f"its keys differ from the model's (extra {extra[:3]}, missing {missing[:3]})")
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise Rejected(f"'{name}' is {got.dtype} {tuple(got.shape)}, the model's {want.dtype} {tuple(want.shape)}")


class ModelCache:
    """Trained weights under ``root/<key>.pt`` (no cache at all where ``root`` is None)."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{key}.pt"

    def load(self, key: str, fresh: Callable[[], nn.Module]) -> nn.Module | None:
        """A module from ``fresh()`` with the weights cached under ``key``, in eval mode; None when
        the key is not cached or its entry is rejected (then the caller trains and saves anew)."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            state = _verified(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # a damaged or foreign file is retrained, never trusted
            reason = str(exc) if isinstance(exc, Rejected) else f"it cannot be read: {type(exc).__name__}: {exc}"
            log.warning("%s: cached weights rejected, training again (%s)", path, reason)
            return None
        model = fresh()
        try:
            _fits(state, model)
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # the module is thrown away: nothing of the entry reaches a model in use
            log.warning("%s: cached weights rejected, training again (%s)", path, exc)
            return None
        return model.eval()

    def save(self, key: str, model: nn.Module) -> None:
        """Write ``model``'s weights under ``key`` atomically, replacing any entry. A cache that
        cannot be written is skipped with a warning: the trained model is still used."""
        path = self.path(key)
        if path is None:
            return
        tmp = None
        try:
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            entry = {"format": FORMAT, "sha256": state_digest(state), "state": state}
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
            os.close(fd)
            torch.save(entry, tmp)
            os.replace(tmp, path)
            tmp = None
        except (OSError, RuntimeError, TypeError) as exc:
            log.warning("%s: could not cache the trained weights (%s: %s)", path, type(exc).__name__, exc)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)
