"""arena: adversarial defenses meet adversarial attacks in round-robin tournaments.

Importing ``arena`` is cheap (the ``arena`` command imports it for ``--help``): the errors,
:class:`Registry` and :func:`load_plugins` are imported on first access.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from arena.hookspecs import hookimpl

if TYPE_CHECKING:
    from arena.errors import ArenaError, AttackError, ConfigError, PluginError, QueryBudgetExceeded
    from arena.registry import Registry, load_plugins

__version__ = "0.1.1"

_LAZY = {
    "ArenaError": "arena.errors",
    "AttackError": "arena.errors",
    "ConfigError": "arena.errors",
    "PluginError": "arena.errors",
    "QueryBudgetExceeded": "arena.errors",
    "Registry": "arena.registry",
    "load_plugins": "arena.registry",
}

__all__ = [
    "ArenaError",
    "AttackError",
    "ConfigError",
    "PluginError",
    "QueryBudgetExceeded",
    "Registry",
    "__version__",
    "hookimpl",
    "load_plugins",
]


def __getattr__(name: str) -> Any:
    """``arena.ConfigError``, ``arena.load_plugins``...: imported when first asked for."""
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'arena' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
