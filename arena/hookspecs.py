"""Hook specifications of the ``arena`` plugin system.

Every hook receives a ``register`` callback and calls it once per plugin class it contributes.
Plugins are modules (or objects) whose functions carry :data:`hookimpl` and are found through
the ``arena`` entry-point group, built-ins and third parties alike.
"""
from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("arena")
hookimpl = pluggy.HookimplMarker("arena")

Register = Callable[[type], None]


@hookspec
def arena_register_attacks(register: Register) -> None:
    """Register attack classes (subclasses of :class:`arena.attack.Attack`).

    Call ``register(cls)`` once for each class. Its ``id`` must be kebab-case and unique
    across every installed plugin.
    """


@hookspec
def arena_register_defenses(register: Register) -> None:
    """Register defense classes (subclasses of :class:`arena.defense.Defense`): training-time,
    inference-time or detector defenses."""


@hookspec
def arena_register_datasets(register: Register) -> None:
    """Register dataset classes (subclasses of :class:`arena.data.Dataset`)."""


@hookspec
def arena_register_architectures(register: Register) -> None:
    """Register architecture classes (subclasses of :class:`arena.model.Architecture`)."""


@hookspec
def arena_register_backends(register: Register) -> None:
    """Register model backends (subclasses of :class:`arena.backends.Backend`): loaders that
    turn a model file of some framework into an arena Model."""
