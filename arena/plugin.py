"""What every plugin class shares: a kebab-case ``id``, a docstring, and a nested pydantic ``Config``."""
from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

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

