"""Loading plugin modules of an entry-point group with pluggy: the one loader behind
:func:`arena.load_plugins` (group ``arena``) and the CLI's command plugins (group
``arena.commands``).

Light on purpose (pluggy and the standard library): the ``arena`` command loads its command
plugins through it for ``--help`` without importing pydantic or torch. Errors are
:class:`arena.PluginError` naming the plugin and its distribution.
"""
from __future__ import annotations

import importlib.metadata as md
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from arena import hookspecs

DISABLE_ENV = "ARENA_DISABLE_PLUGINS"
TRACE_ENV = "ARENA_TRACE_HOOKS"


@dataclass(frozen=True)
class Owner:
    """Who registered a plugin class: the pluggy plugin name and its distribution."""

    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' ({self.distribution} {self.version})"


def disabled() -> set[str]:
    """Entry-point names blocked by ``ARENA_DISABLE_PLUGINS`` (comma-separated)."""
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def owner_of(ep: md.EntryPoint) -> Owner:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return Owner(ep.name, "unknown", "")
    return Owner(ep.name, dist.metadata["Name"] or dist.name, dist.version)


def plugin_error(message: str) -> Exception:
    from arena.errors import PluginError  # pydantic comes with arena.errors: only on the error path

    return PluginError(message)


@dataclass
class Loaded:
    """The plugin modules of one group, registered with a pluggy manager, with their owners."""

    plugin_manager: pluggy.PluginManager
    owners: dict[str, Owner]

    def implementations(self, hook: str) -> Iterator[tuple[Owner, Callable[..., Any]]]:
        """``(owner, function)`` of every implementation of ``hook`` (traced with
        ``ARENA_TRACE_HOOKS=1``)."""
        trace = bool(os.environ.get(TRACE_ENV))
        for impl in getattr(self.plugin_manager.hook, hook).get_hookimpls():
            owner = self.owners[impl.plugin_name]
            if trace:
                sys.stderr.write(f"arena: calling {hook} of {owner}\n")
            yield owner, impl.function


def load(group: str, extra: Iterable[tuple[str, object]] = (), *, entry_points: bool = True,
         blocked: Iterable[str] | None = None) -> Loaded:
    """Import every module of the entry-point ``group`` (but those ``blocked``, by default those
    disabled by ``ARENA_DISABLE_PLUGINS``) and ``extra`` (name, module) pairs, register them with
    pluggy and check that every hook they implement exists."""
    pm = pluggy.PluginManager(hookspecs.hookimpl.project_name)
    pm.add_hookspecs(hookspecs)
    owners: dict[str, Owner] = {}
    blocked = disabled() if blocked is None else set(blocked)
    for name in blocked:
        pm.set_blocked(name)
    candidates: list[tuple[str, Owner, Any]] = []
    if entry_points:
        for ep in sorted(md.entry_points(group=group), key=lambda e: e.name):
            if ep.name in blocked or ep.name in owners:
                continue
            owner = owner_of(ep)
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party import must not crash the arena
                raise plugin_error(f"{owner} failed to import: {type(exc).__name__}: {exc}") from exc
            owners[ep.name] = owner
            candidates.append((ep.name, owner, module))
    for name, module in extra:
        if name not in blocked:
            owners[name] = Owner(name, "local", "")
            candidates.append((name, owners[name], module))
    for name, owner, module in candidates:
        try:
            pm.register(module, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise plugin_error(f"{owner}: {exc}") from exc
    _check_pending(pm, owners)
    return Loaded(pm, owners)


def _check_pending(pm: pluggy.PluginManager, owners: dict[str, Owner]) -> None:
    """Hook implementations that match no hookspec are errors, naming plugin and hook."""
    hooks = vars(pm.hook)
    specs = [name for name, hook in hooks.items() if getattr(hook, "spec", None) is not None]
    for name, hook in hooks.items():
        if name.startswith("_") or name in specs:
            continue
        for impl in hook.get_hookimpls():
            if not impl.optionalhook:
                from arena.errors import did_you_mean

                owner = owners.get(impl.plugin_name, impl.plugin_name)
                raise plugin_error(f"{owner} implements unknown hook '{name}'{did_you_mean(name, specs)}")
