"""Every hook specification is documented and tested (datasette's rule).

The hooks are discovered from ``arena.hookspecs`` (functions named ``arena_*`` that carry
pluggy's spec marker), so a new hook fails here until docs/plugins.md names it and some test
file exercises it.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from arena import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins.md"


def hook_names() -> list[str]:
    return sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
                  if name.startswith("arena_") and hasattr(fn, "arena_spec"))


def test_the_hookspecs_are_found():
    names = hook_names()
    assert {"arena_register_attacks", "arena_register_defenses", "arena_register_datasets",
            "arena_register_architectures", "arena_register_backends"} <= set(names)
    # a helper named arena_* without the spec marker is not a hook
    assert all(getattr(hookspecs, name).arena_spec is not None for name in names)


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_documented(hook):
    assert hook in DOCS.read_text(), f"docs/plugins.md does not mention {hook}"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_has_a_docstring_and_typed_arguments(hook):
    fn = getattr(hookspecs, hook)
    assert (fn.__doc__ or "").strip(), f"{hook} needs a docstring"
    params = inspect.signature(fn).parameters.values()
    assert all(p.annotation is not inspect.Parameter.empty for p in params), f"{hook}'s arguments need types"


@pytest.mark.parametrize("hook", hook_names())
def test_hook_is_exercised_by_a_test(hook):
    tests = [p for p in (ROOT / "tests").glob("*.py") if p.name != Path(__file__).name]
    users = [p.name for p in tests if hook in p.read_text()]
    assert users, f"no test file other than {Path(__file__).name} mentions {hook}"
