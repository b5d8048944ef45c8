"""References from one plugin (or a tournament file) to another: ``{id, params}`` or a bare id,
resolved against the registry building the plan or plugin (:func:`arena.registry.active_registry`)
when validated, so that a wrong id or key is an error when the file loads."""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from arena.plugin import PluginConfig
from arena.registry import active_registry, resolving_with


class PluginRef(BaseModel):
    """A plugin that a plugin's config (or a tournament file) names: ``{id, params}``, or a bare
    id string. Validating a reference resolves it against the active registry and validates its
    params against the named plugin's ``Config`` (references inside those params too), so a
    wrong id or key is a config error at load time, naming the field; :meth:`build` makes the
    plugin from what was resolved then. A reference travels to other processes as the class it
    resolved to and its validated config (no registry), so a worker builds the same plugin.
    Subclasses fix the kind (:class:`AttackRef`, ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    plugin_kind: ClassVar[str] = ""

    id: str
    params: dict[str, Any] = {}
    _registry: Any = PrivateAttr(None)
    _cls: Any = PrivateAttr(None)
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
        self._registry, self._cls = registry, plugin
        return self

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private["_registry"] = None  # the class and the config travel; the registry stays here
        return {**state, "__pydantic_private__": private}

    @property
    def cls(self) -> type:
        """The plugin class this reference names."""
        return self._cls

    @property
    def config(self) -> PluginConfig:
        """The referenced plugin's validated config."""
        return self._config

    def build(self, **overrides: Any) -> Any:
        """A new instance of the referenced plugin: its validated params (nested references as
        resolved), ``overrides`` over them."""
        given = {name: getattr(self._config, name) for name in self._config.model_fields_set}
        with resolving_with(self._registry or active_registry()):
            return self._cls(**{**given, **overrides})


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
