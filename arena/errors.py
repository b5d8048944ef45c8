"""The arena's exceptions and the helpers that turn validation failures into one-line messages."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

from pydantic import BaseModel, ValidationError


class ArenaError(Exception):
    """Base class of every error the arena raises on purpose."""


class ConfigError(ArenaError, ValueError):
    """A user's configuration is wrong: an unknown id, a bad field, a bad tournament file."""


class PluginError(ArenaError):
    """A plugin could not be loaded or broke a registration rule; the message names it."""


class AttackError(ArenaError):
    """An attack broke the harness' contract (NaN output, edited weights, bad shapes)."""


class QueryBudgetExceeded(ArenaError):
    """A black-box attack asked the oracle for more queries than its budget allows."""


class Interrupted(ArenaError):
    """The process was asked to stop (``arena run`` raises it from its SIGTERM handler; the
    message names the signal). The runner marks the run ``interrupted``, so ``--resume``
    finishes it; the CLI exits with 128 + the signal's number."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for a close miss, or an empty string."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe_validation_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """Summarise a pydantic error as ``path: message`` lines, suggesting close field names."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = _path([prefix] if prefix else [], err["loc"]) or prefix or model.__name__
        if err["type"] == "extra_forbidden":
            fields = _fields_at(model, err["loc"][:-1])
            hint = did_you_mean(loc[-1], fields) if fields else ""
            allowed = f"; valid keys: {', '.join(sorted(fields))}" if fields and not hint else ""
            parts.append(f"{path}: unknown key{hint}{allowed}")
        elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
            parts.append(f"{path}: {err['ctx']['error']}")  # a validator's own words, no "Value error, "
        else:
            parts.append(f"{path}: {err['msg']}")
    return "; ".join(parts)


def _path(head: list[str], loc: tuple) -> str:
    """A field's path as the plan's errors write it: ``attacks[0].budgets[1]``."""
    text = ".".join(head)
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) pydantic model reached by following ``loc``."""
    current: object = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = _model_of(fields[part].annotation)
    return list(getattr(current, "model_fields", {}) or [])


def _model_of(annotation: object) -> object:
    """The BaseModel inside an annotation such as ``list[Entry]`` or ``Entry | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
