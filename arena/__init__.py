"""arena: adversarial defenses meet adversarial attacks in round-robin tournaments.

Importing ``arena`` is cheap (the ``arena`` command imports it for ``--help``): the errors,
:class:`Registry` and :func:`load_plugins` are imported on first access.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from arena.hookspecs import hookimpl
from arena.lazy import lazy_attributes

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


__getattr__ = lazy_attributes(globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
