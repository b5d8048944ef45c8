"""On-disk cache of trained models, keyed by a content hash of everything that determines them."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena import __version__


def content_key(**parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (defense config, architecture, dataset, seed...)."""
    text = json.dumps({"arena": __version__, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class ModelCache:
    """Trained weights under ``root/<key>.pt``, written atomically, read with ``weights_only``."""

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root) if root is not None else None

    def path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{key}.pt"

    def load(self, key: str, template: nn.Module) -> nn.Module | None:
        """``template`` with the cached weights, or None when the key is not cached."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            template.load_state_dict(state)
        except Exception:  # a corrupt or stale entry is retrained, not trusted
            return None
        return template.eval()

    def save(self, key: str, model: nn.Module) -> None:
        path = self.path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp)
        os.replace(tmp, path)
