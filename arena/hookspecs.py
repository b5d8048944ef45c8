"""Hook specifications of the ``arena`` plugin system.

Every ``arena_register_<kind>`` hook receives a ``register`` callback and calls it once per
plugin class it contributes. Plugins are modules (or objects) whose functions carry
:data:`hookimpl` and are found through the ``arena`` entry-point group, built-ins and third
parties alike. :func:`arena_register_commands` is the exception: it receives the ``arena``
click group, and its modules come from the separate, light ``arena.commands`` group.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # click is imported by the CLI only; hookspecs stay cheap to import
    import click

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


@hookspec
def arena_register_metrics(register: Register) -> None:
    """Register metric classes (subclasses of :class:`arena.metric.Metric`): measurements a
    tournament file can ask for, stored per model or per match (:mod:`arena.metric`)."""


@hookspec
def arena_register_commands(cli: click.Group) -> None:
    """Add click commands or groups to the ``arena`` command line.

    ``cli`` is the ``arena`` :class:`click.Group`: decorate with ``@cli.command()`` /
    ``@cli.group()``, or call ``cli.add_command(cmd)``. A command name that another plugin or
    the core already provides is an error naming both owners.

    Implementations live in modules of the ``arena.commands`` entry-point group (not the
    ``arena`` group), because building the CLI imports every one of them, even for
    ``arena --help``: such a module imports click and the arena CLI only, and keeps heavy
    imports (torch, Keras) inside its command functions. Wrap a command in
    :func:`arena.cli.user_errors` so that an :class:`arena.ArenaError` becomes a one-line
    ``Error: ...`` with exit code 2, and take the installed plugins from the click context
    object (``@click.pass_obj``, then ``obj.registry``), which loads them on first use; a
    command never calls ``load_plugins()`` itself.
    """
