"""Model backends: plugins that load a model file of some framework as an arena Model."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import nn

from arena.plugin import Plugin


class Backend(Plugin):
    """A model backend (plugin kind ``backend``).

    :meth:`load` turns a model file into a ``torch.nn.Module`` that takes NCHW float32 inputs
    in [0, 1] and returns logits. ``template`` is a freshly built network of the right
    architecture for formats that store weights only.
    """

    kind: ClassVar[str] = "backend"
    suffixes: ClassVar[tuple[str, ...]] = ()

    def load(self, path: Path, template: nn.Module | None = None) -> nn.Module:
        raise NotImplementedError
