"""Plugin discovery: the ``arena`` entry-point group loaded with pluggy into a :class:`Registry`."""
from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Annotated, Any

import pluggy

from arena import discovery
from arena.discovery import DISABLE_ENV, TRACE_ENV, Owner  # noqa: F401  (part of the registry's API)
from arena.errors import ConfigError, PluginError, did_you_mean
from arena.plugin import ID_PATTERN, Plugin, PluginConfig

GROUP = "arena"
KINDS = ("attacks", "defenses", "datasets", "architectures", "backends", "metrics")


@dataclass
class Registry:
    """Everything the installed plugins registered, by kind, each a mapping from id to class."""

    plugin_manager: pluggy.PluginManager
    _tables: dict[str, dict[str, type]] = field(default_factory=lambda: {k: {} for k in KINDS})
    owners: dict[tuple[str, str], Owner] = field(default_factory=dict)
    origin: tuple = ()  # how to load it again elsewhere: (entry_points, blocked, extra)

    @property
    def attacks(self) -> Mapping[str, type]:
        return MappingProxyType(self._tables["attacks"])

    @property
    def defenses(self) -> Mapping[str, type]:
        return MappingProxyType(self._tables["defenses"])

    @property
    def datasets(self) -> Mapping[str, type]:
        return MappingProxyType(self._tables["datasets"])

    @property
    def architectures(self) -> Mapping[str, type]:
        return MappingProxyType(self._tables["architectures"])

    @property
    def backends(self) -> Mapping[str, type]:
        return MappingProxyType(self._tables["backends"])

    @property
    def metrics(self) -> Mapping[str, type]:
        return MappingProxyType(self._tables["metrics"])

    def __reduce__(self) -> tuple:
        """A registry travels to other processes (worker processes, Ray workers) as "load the
        same plugins there": the installed ones with the same ones blocked, and the ``extra``
        modules by module name (or, for a module built at run time, by its hook functions,
        which must be importable)."""
        return (_reloaded, self.origin)

    def get(self, kind: str, plugin_id: str) -> type:
        """The class registered under ``plugin_id``; a ConfigError suggests a close id."""
        table = self._tables[kind]
        if plugin_id not in table:
            singular = kind[:-1]
            hint = did_you_mean(plugin_id, table) or f"; known: {', '.join(sorted(table)) or 'none'}"
            raise ConfigError(f"unknown {singular} '{plugin_id}'{hint}")
        return table[plugin_id]

    def make(self, kind: str, plugin_id: str, **config: Any) -> Any:
        """A new instance; plugin references in its config resolve against this registry."""
        cls = self.get(kind, plugin_id)
        with resolving_with(self):
            return cls(**config)

    def resolving(self) -> Any:
        """A block in which plugin references (:class:`arena.refs.PluginRef`) resolve here."""
        return resolving_with(self)

    def make_attack(self, plugin_id: str, **config: Any) -> Any:
        return self.make("attacks", plugin_id, **config)

    def make_defense(self, plugin_id: str, **config: Any) -> Any:
        return self.make("defenses", plugin_id, **config)

    def make_dataset(self, plugin_id: str, **config: Any) -> Any:
        return self.make("datasets", plugin_id, **config)

    def make_architecture(self, plugin_id: str, **config: Any) -> Any:
        return self.make("architectures", plugin_id, **config)

    def make_backend(self, plugin_id: str, **config: Any) -> Any:
        return self.make("backends", plugin_id, **config)

    def make_metric(self, plugin_id: str, **config: Any) -> Any:
        return self.make("metrics", plugin_id, **config)

    def rows(self, kinds: Iterable[str] | None = None) -> list[dict[str, str]]:
        """One row per registered class (of ``kinds``, default all): id, kind, knowledge, norm
        (every norm an attack supports, its default first: :meth:`norms`), distribution, version."""
        rows = []
        for kind in KINDS if kinds is None else [plural_kind(k) for k in kinds]:
            for pid, cls in sorted(self._tables[kind].items()):
                owner = self.owners[(kind, pid)]
                rows.append({
                    "id": pid,
                    "kind": _describe_kind(cls),
                    "knowledge": _enum_value(getattr(cls, "knowledge", None)),
                    "norm": ", ".join(self.norms(cls)),
                    "distribution": owner.distribution,
                    "version": owner.version,
                    "plugin": owner.plugin,
                })
        return rows

    def norms(self, cls: type) -> list[str]:
        """The norms a plugin class works in, its default first: for a ``norm`` config field,
        each norm that its type and the config's validators accept with the other fields at
        their defaults (a Literal, an Enum, an ``Annotated`` validator such as
        :data:`arena.threat.L2OrLinf`); for an attack that runs an ``inner`` attack (and has
        no norm field), the norms of its default inner attack; else its class attribute
        ``norm`` (none for a plugin without one)."""
        default = _enum_value(_default_of(cls, "norm"))
        fields = getattr(getattr(cls, "Config", None), "model_fields", {})
        if "norm" in fields:
            accepted = [n for n in _norm_values() if self._accepts_norm(cls, n)]
        elif "inner" in fields and getattr(cls, "kind", None) == "attack":
            inner = fields["inner"].default
            inner_id = getattr(inner, "id", inner)
            accepted = self.norms(self._tables["attacks"][inner_id]) \
                if isinstance(inner_id, str) and inner_id in self._tables["attacks"] else []
            default = accepted[0] if accepted else default
        else:
            accepted = []
        ordered = ([default] if default else []) + [n for n in accepted if n != default]
        return ordered

    def _accepts_norm(self, cls: type, norm: str) -> bool:
        config = cls.Config
        try:
            with self.resolving():
                config(norm=norm)
            return True
        except Exception:  # the config as a whole, or only its norm field, rejects it
            pass
        field = config.model_fields["norm"]
        try:
            from pydantic import TypeAdapter

            TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata
                        else field.annotation).validate_python(norm)
        except Exception:
            return False
        # the field takes it: the config rejects it only when nothing at all can be built with defaults
        try:
            with self.resolving():
                config()
            return False
        except Exception:
            return True

    def find(self, plugin_id: str, kind: str | None = None) -> tuple[str, type]:
        """The kind (plural, as in :data:`KINDS`) and class registered under ``plugin_id``, of
        ``kind`` (singular or plural) if given; a ConfigError suggests a close id, or asks for
        ``kind`` when two kinds use the id."""
        if kind is not None:
            kind = plural_kind(kind)
            return kind, self.get(kind, plugin_id)
        found = [k for k in KINDS if plugin_id in self._tables[k]]
        if len(found) == 1:
            return found[0], self._tables[found[0]][plugin_id]
        if found:
            kinds = " and ".join(("an " if k[0] in "aeiou" else "a ") + k[:-1] for k in found)
            raise ConfigError(f"'{plugin_id}' names {kinds}; choose one with --kind")
        every = sorted({pid for k in KINDS for pid in self._tables[k]})
        raise ConfigError(f"unknown plugin '{plugin_id}'{did_you_mean(plugin_id, every)}")

    def describe(self, plugin_id: str, kind: str | None = None) -> dict[str, Any]:
        """Everything ``arena plugins show`` prints of one plugin: id, kind, class, docstring,
        knowledge, norms, distribution, version, entry point, and each config field with its
        type, default, constraints and description (from the pydantic ``model_fields``)."""
        table, cls = self.find(plugin_id, kind)
        owner = self.owners[(table, plugin_id)]
        info: dict[str, Any] = {
            "id": plugin_id,
            "kind": _describe_kind(cls),
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "doc": inspect.cleandoc(cls.__doc__ or ""),
            "distribution": owner.distribution,
            "version": owner.version,
            "plugin": owner.plugin,
        }
        if getattr(cls, "knowledge", None) is not None:
            info["knowledge"] = _enum_value(cls.knowledge)
        norms = self.norms(cls)
        if norms:
            info["norms"] = norms
        for flag in ("minimal", "supports_targeted", "wraps_model", "trains", "learned"):
            if isinstance(getattr(cls, flag, None), bool):
                info[flag] = getattr(cls, flag)
        info["config"] = [_describe_field(name, f) for name, f in cls.Config.model_fields.items()]
        for entry in info["config"]:
            if entry["name"] == "norm" and norms:  # the norms the config accepts, not every Norm
                entry["type"] = " | ".join(norms)
        return info

    def _add(self, kind: str, cls: Any, owner: Owner) -> None:
        if not (isinstance(cls, type) and issubclass(cls, Plugin)):
            raise PluginError(f"{owner} registered {cls!r} among {kind}, which is not a plugin class")
        pid = getattr(cls, "id", "")
        if not isinstance(pid, str) or not ID_PATTERN.match(pid):
            raise PluginError(f"{owner}: {cls.__name__}.id {pid!r} must be kebab-case")
        if not (cls.__doc__ or "").strip():
            raise PluginError(f"{owner}: {cls.__name__} ({pid}) needs a docstring citing its source")
        cfg = cls.Config
        if not (issubclass(cfg, PluginConfig) or cfg.model_config.get("extra") == "forbid"):
            raise PluginError(f"{owner}: {cls.__name__}.Config must forbid extra keys")
        if pid in self._tables[kind]:
            other = self.owners[(kind, pid)]
            raise PluginError(f"duplicate {kind[:-1]} id '{pid}': registered by {other} and by {owner}")
        self._tables[kind][pid] = cls
        self.owners[(kind, pid)] = owner


def plural_kind(kind: str) -> str:
    """A plugin kind as in :data:`KINDS`, from its singular or plural name (any case); an
    unknown one is a ConfigError with a close choice."""
    text = str(kind).strip().lower()
    for known in KINDS:
        if text in (known, known[:-1]):
            return known
    choices = [k[:-1] for k in KINDS]
    hint = did_you_mean(text, choices + list(KINDS)) or ""
    raise ConfigError(f"unknown plugin kind '{kind}'{hint}; choose {', '.join(choices)}")


def _norm_values() -> list[str]:
    from arena.threat import Norm

    return [n.value for n in Norm]


def _describe_field(name: str, field: Any) -> dict[str, Any]:
    """One config field: name, type, default (None when required), required, constraints,
    description."""
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        try:
            default: Any = field.default_factory()
        except Exception:
            default = None
    else:
        default = None if field.default is PydanticUndefined else field.default
    constraints = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "min length"),
                           ("max_length", "max length")):
            value = getattr(item, attr, None)
            if value is not None:
                constraints.append(f"{sign} {value}")
    return {"name": name, "type": _type_name(field.annotation), "default": _jsonable(default),
            "required": field.is_required(), "constraints": constraints, "description": field.description or ""}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump(mode="json"))
    return str(value)


def _type_name(annotation: Any) -> str:
    """A config field's type as a reader writes it: ``int``, ``float | None``, ``'ce' | 'margin'``,
    ``linf | l2 | ...`` for an Enum, ``attack`` for a plugin reference."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is None or annotation is type(None):
        return "None"
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " | ".join(str(m.value) for m in annotation)
    kind = getattr(annotation, "plugin_kind", None)
    if isinstance(kind, str) and kind:
        return f"{kind[:-1]} (id or {{id, params}})"
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{inner}]" if args else name
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _describe_kind(cls: type) -> str:
    sub = getattr(cls, "defense_kind", None)
    return f"defense ({sub.value})" if sub is not None else str(getattr(cls, "kind", "plugin"))


def _enum_value(value: Any) -> str:
    return "" if value is None else str(getattr(value, "value", value))


def _default_of(cls: type, name: str) -> Any:
    fields = getattr(cls.Config, "model_fields", {})
    if name in fields and fields[name].default is not None:
        return fields[name].default
    return getattr(cls, name, None)


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The installed plugins, loaded once per process: what plugin references resolve against
    when no registry is building a plan or a plugin (a plugin constructed by hand)."""
    return load_plugins()


def load_plugins(extra: Iterable[tuple[str, object]] = (), *, entry_points: bool = True,
                 blocked: Iterable[str] | None = None) -> Registry:
    """Load every plugin of the ``arena`` entry-point group (and ``extra`` (name, module) pairs).

    Plugins named in ``ARENA_DISABLE_PLUGINS`` (comma-separated), or in ``blocked``, are blocked. A plugin that
    fails to import, implements an unknown hook or registers a duplicate id raises
    :class:`arena.PluginError` naming the plugin and its distribution. ``ARENA_TRACE_HOOKS=1``
    prints every hook call.
    """
    extra = list(extra)
    blocked = frozenset(discovery.disabled() if blocked is None else blocked)
    loaded = discovery.load(GROUP, extra, entry_points=entry_points, blocked=blocked)
    registry = Registry(loaded.plugin_manager, origin=(entry_points, blocked, tuple(map(_portable, extra))))
    for kind in KINDS:
        for owner, function in loaded.implementations(f"arena_register_{kind}"):
            try:
                function(register=lambda cls, k=kind, o=owner: registry._add(k, cls, o))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"{owner} failed in arena_register_{kind}: {exc}") from exc
    return registry

def _portable(pair: tuple[str, object]) -> tuple[str, str | None, dict[str, Any] | None]:
    """An ``extra`` plugin as something that pickles: its module's name, if importable, else its
    hook functions."""
    name, module = pair
    module_name = getattr(module, "__name__", None)
    if isinstance(module, types.ModuleType) and sys.modules.get(module_name or "") is module:
        return name, module_name, None
    hooks = {attr: getattr(module, attr) for attr in dir(module) if attr.startswith("arena_")}
    return name, None, hooks


_RELOADED: dict[bytes, Registry] = {}


def _reloaded(entry_points: bool, blocked: frozenset[str], extra: tuple) -> Registry:
    """The registry described by ``origin``, loaded once per process."""
    import pickle

    key = pickle.dumps((entry_points, sorted(blocked), [(n, m, sorted(h or {})) for n, m, h in extra]))
    if key not in _RELOADED:
        modules = []
        for name, module_name, hooks in extra:
            if module_name is not None:
                modules.append((name, importlib.import_module(module_name)))
            else:
                module = types.ModuleType(name)
                module.__dict__.update(hooks or {})
                modules.append((name, module))
        _RELOADED[key] = load_plugins(modules, entry_points=entry_points, blocked=blocked)
    return _RELOADED[key]


# The registry that plugin references resolve against while a plan, a config or a plugin is
# being built (set by :class:`arena.registry.Registry`); outside of one, the installed plugins.
_ACTIVE: ContextVar[Any] = ContextVar("arena_active_registry", default=None)


@contextmanager
def resolving_with(registry: Any) -> Iterator[Any]:
    """Resolve every :class:`PluginRef` validated inside the block against ``registry``."""
    token = _ACTIVE.set(registry)
    try:
        yield registry
    finally:
        _ACTIVE.reset(token)


def active_registry() -> Any:
    """The registry references resolve against now: the one building the current plan or plugin,
    else the installed plugins (loaded once, by the core)."""
    registry = _ACTIVE.get()
    return default_registry() if registry is None else registry
