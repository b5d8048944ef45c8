"""arena: adversarial defenses meet adversarial attacks in round-robin tournaments.

Importing ``arena`` is cheap (the ``arena`` command imports it for ``--help``): the errors,
:class:`Registry`, :func:`load_plugins` and the Python API (:func:`evaluate`,
:class:`Tournament`, :mod:`arena.api`) are imported on first access.
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
    # the Python API (not imported for type checkers either: arena.api imports the tournament,
    # which imports this package, and tests/test_imports.py counts every import statement)
    "evaluate": "arena.api",
    "Evaluation": "arena.api",
    "Tournament": "arena.api",
    "TournamentResult": "arena.api",
}

__all__ = [
    "ArenaError",
    "AttackError",
    "ConfigError",
    "Evaluation",
    "PluginError",
    "QueryBudgetExceeded",
    "Registry",
    "Tournament",
    "TournamentResult",
    "__version__",
    "evaluate",
    "hookimpl",
    "load_plugins",
]


__getattr__ = lazy_attributes(globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
