"""Module attributes imported on first access, so that importing a package stays cheap."""
from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_attributes(namespace: dict[str, Any], table: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``table`` (attribute -> module that defines it) into the
    module's ``namespace`` on first access."""
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module '{namespace['__name__']}' has no attribute '{name}'")
        value = getattr(import_module(table[name]), name)
        namespace[name] = value
        return value

    return __getattr__
