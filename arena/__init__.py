"""arena: adversarial defenses meet adversarial attacks in round-robin tournaments."""
from arena.errors import ArenaError, AttackError, ConfigError, PluginError, QueryBudgetExceeded
from arena.hookspecs import hookimpl
from arena.registry import Registry, load_plugins

__version__ = "0.1.1"

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
