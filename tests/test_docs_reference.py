"""The reference of tournament-file keys (docs/tournament-files.md) stays complete, and
CITATION.cff names the package's version.

The convention the reference follows (stated at its top): a key is documented by a Markdown
heading whose whole text is its path in backticks (``### `seed` ``, ``### `defenses[].on` ``),
or by a table row whose first cell is its path in backticks (``| `resources.num_cpus` | ...``).
A path joins names with ``.``; a list of entries adds ``[]`` (``attacks[].budgets``), and a
table of tables named by the user has ``*`` for the name (``resources.attacks.*.num_cpus``). The
schema's models are walked through pydantic's ``model_fields``, into every nested model (a
plugin table such as ``dataset``, the ``[[defenses]]`` entries, ``resources``), and the keys of
``[training]`` are those of the shared ``TrainingConfig``, which is what validates them.
"""
from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

import arena
from arena.defense import TrainingConfig
from arena.tournament.config import AttackEntry, DefenseEntry, MetricEntry, Resources, TournamentConfig

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "tournament-files.md"
CITATION = ROOT / "CITATION.cff"

HEADING = re.compile(r"^#{2,6}\s+`([^`]+)`\s*$", re.MULTILINE)
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)
KEY_PATH = re.compile(r"^[a-z_][a-z0-9_]*(\[\])?(\.([a-z_][a-z0-9_]*(\[\])?|\*))*$")


def _models(annotation: typing.Any) -> tuple[type[BaseModel] | None, str]:
    """The pydantic model inside a field's annotation (through Optional, unions, Annotated, lists
    and dicts), and how its keys continue the field's path: ``"."`` for a table, ``"[]."`` for a
    list of entries (``list[DefenseEntry]``), ``".*."`` for a table of named tables
    (``dict[str, TaskResources]``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, "."
    if origin is typing.Annotated:
        return _models(args[0])
    if origin in (list, tuple, set, frozenset) and args:
        inner, _ = _models(args[0])
        return inner, "[]."
    if origin is dict and len(args) == 2:
        inner, _ = _models(args[1])
        return inner, ".*."
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            found = _models(arg)
            if found[0] is not None:
                return found
    return None, "."


def schema_paths(model: type[BaseModel] = TournamentConfig, prefix: str = "") -> set[str]:
    """Every key path of ``model``, recursively into nested models."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}{key}"
        paths.add(path)
        inner, joint = _models(field.annotation)
        if inner is not None:
            paths |= schema_paths(inner, f"{path}{joint}")
    return paths


def expected_paths() -> set[str]:
    return schema_paths() | {f"training.{name}" for name in TrainingConfig.model_fields}


def reference_text() -> str:
    """The reference with the insides of its fenced code blocks blanked (same length, so offsets
    hold): a ``# comment`` line in a TOML example is not a heading."""
    text = REFERENCE.read_text(encoding="utf-8")
    return re.sub(r"^```[^\n]*\n.*?^```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text,
                  flags=re.MULTILINE | re.DOTALL)


def documented() -> tuple[set[str], set[str]]:
    """The paths documented in headings, and those documented in table rows."""
    text = reference_text()
    return set(HEADING.findall(text)), set(ROW.findall(text))


def test_the_walk_sees_every_entry_model():
    """The schema walk reaches the models the reference is about (a change of annotation style
    that hid one would make the completeness test vacuous)."""
    paths = schema_paths()
    for model, prefix in ((DefenseEntry, "defenses[]."), (AttackEntry, "attacks[]."),
                          (MetricEntry, "metrics[]."), (Resources, "resources.")):
        assert {prefix + name for name in model.model_fields} <= paths, model.__name__
    assert {"dataset.id", "dataset.params", "defenses[].architecture.id"} <= paths


@pytest.mark.parametrize("path", sorted(expected_paths()))
def test_every_key_is_documented(path):
    headings, rows = documented()
    assert path in headings or path in rows, (
        f"tournament-file key `{path}` is not documented in docs/tournament-files.md: add a heading "
        f"'### `{path}`' (or, for a key inside a table, a row '| `{path}` | ...') with its type, "
        "default, meaning, an example and the error a typical mistake gives")


def test_no_documented_key_is_stale():
    """A key heading names a key that exists (a renamed or removed key leaves no heading behind)."""
    headings, _ = documented()
    stale = sorted(h for h in headings if KEY_PATH.match(h) and h not in expected_paths())
    assert not stale, f"docs/tournament-files.md documents keys the schema does not have: {stale}"


CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def key_sections() -> dict[str, str]:
    """The text under each key heading, up to the next heading of any level."""
    text, plain = REFERENCE.read_text(encoding="utf-8"), reference_text()
    any_heading = [m.start() for m in re.finditer(r"^#{1,6} ", plain, re.MULTILINE)] + [len(text)]
    out = {}
    for m in HEADING.finditer(plain):
        if KEY_PATH.match(m.group(1)):
            end = min(h for h in any_heading if h > m.start())
            out[m.group(1)] = text[m.end():end]
    return out


def test_every_key_heading_has_an_example_and_an_error():
    """Each key heading's section holds an example (a code block without an error) and the
    one-line `Error: ...` message of a typical mistake (copied from `arena run`)."""
    missing = []
    for path, body in key_sections().items():
        blocks = CODE_BLOCK.findall(body)
        example = any("Error: " not in b for b in blocks)
        error = any(line.startswith("Error: ") for b in blocks for line in b.splitlines())
        if not (example and error):
            missing.append(path)
    assert not missing, f"key sections without an example or an error line: {missing}"


def _citation_version(text: str) -> str | None:
    match = re.search(r"^version:\s*['\"]?([^'\"\s#]+)", text, re.MULTILINE)
    return match.group(1) if match else None


def test_citation_version_is_the_package_version():
    text = CITATION.read_text(encoding="utf-8")
    assert _citation_version(text) == arena.__version__, (
        f"CITATION.cff says version {_citation_version(text)}, arena.__version__ is {arena.__version__}")


def test_citation_is_valid_cff_yaml():
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load(CITATION.read_text(encoding="utf-8"))
    assert data["cff-version"] == "1.2.0"
    for key in ("message", "title", "version", "authors", "license", "date-released"):
        assert data.get(key), key
    assert str(data["version"]) == arena.__version__
    for ref in data.get("references", []):
        assert ref.get("type") and ref.get("title") and ref.get("authors"), ref
