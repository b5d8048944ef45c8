"""What every plugin class shares: a kebab-case ``id``, a docstring, and a nested pydantic ``Config``."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from arena.errors import ConfigError, describe_validation_error

ID_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class PluginConfig(BaseModel):
    """Base of every plugin's nested ``Config``: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin:
    """Base of attacks, defenses, datasets, architectures and backends.

    Subclasses set ``id`` and may override the nested ``Config``. Instances are built with
    keyword parameters that the ``Config`` validates; a bad parameter raises
    :class:`arena.ConfigError` naming the plugin and the field.
    """

    id: ClassVar[str] = ""
    kind: ClassVar[str] = "plugin"

    class Config(PluginConfig):
        pass

    def __init__(self, **params: Any) -> None:
        self.config = self.parse_config(params)

    @classmethod
    def parse_config(cls, params: dict[str, Any] | None) -> PluginConfig:
        """Validate ``params`` against ``cls.Config``, raising a one-line ConfigError."""
        try:
            return cls.Config(**(params or {}))
        except ValidationError as exc:
            where = f"{cls.kind} '{cls.id}'"
            raise ConfigError(f"{where}: {describe_validation_error(exc, cls.Config)}") from None

    @classmethod
    def summary(cls) -> str:
        """First line of the docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({params})"


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
    if registry is None:
        from arena.registry import default_registry

        registry = default_registry()
    return registry


class PluginRef(BaseModel):
    """A plugin that a plugin's config (or a tournament file) names: ``{id, params}``, or a bare
    id string. Validating a reference resolves it against the active registry and validates its
    params against the named plugin's ``Config`` (references inside those params too), so a
    wrong id or key is a config error at load time, naming the field; :meth:`build` makes the
    plugin from that same registry. Subclasses fix the kind (:class:`AttackRef`, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    plugin_kind: ClassVar[str] = ""

    id: str
    params: dict[str, Any] = {}
    _registry: Any = PrivateAttr(None)
    _config: Any = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, value: Any) -> Any:
        return {"id": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _resolve(self) -> "PluginRef":
        if not self.plugin_kind:
            return self
        registry = active_registry()
        plugin = registry.get(self.plugin_kind, self.id)
        with resolving_with(registry):
            self._config = plugin.parse_config(self.params)
        self._registry = registry
        return self

    @property
    def cls(self) -> type:
        """The plugin class this reference names."""
        return self._registry.get(self.plugin_kind, self.id)

    @property
    def config(self) -> PluginConfig:
        """The referenced plugin's validated config."""
        return self._config

    def build(self, **overrides: Any) -> Any:
        """A new instance of the referenced plugin (``overrides`` over its params)."""
        with resolving_with(self._registry):
            return self.cls(**{**self.params, **overrides})


class AttackRef(PluginRef):
    """A reference to an attack plugin."""

    plugin_kind: ClassVar[str] = "attacks"


class DefenseRef(PluginRef):
    """A reference to a defense plugin."""

    plugin_kind: ClassVar[str] = "defenses"


class DatasetRef(PluginRef):
    """A reference to a dataset plugin."""

    plugin_kind: ClassVar[str] = "datasets"


class ArchitectureRef(PluginRef):
    """A reference to an architecture plugin."""

    plugin_kind: ClassVar[str] = "architectures"


class BackendRef(PluginRef):
    """A reference to a model backend plugin."""

    plugin_kind: ClassVar[str] = "backends"
