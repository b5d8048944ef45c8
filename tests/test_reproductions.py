"""The side-by-side tables of docs/reproductions.md read entries that the papers' tournament
files define: every defense, attack, budget and metric a published cell maps to exists in the
file (a renamed entry would silently show as '–')."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from arena.metric import Scope
from arena.tournament.plan import load_tournament

PAPERS = Path(__file__).parent.parent / "tournaments" / "papers"
spec = importlib.util.spec_from_file_location("side_by_side", PAPERS / "side_by_side.py")
side = importlib.util.module_from_spec(spec)
sys.modules["side_by_side"] = side  # its dataclasses look their module up
spec.loader.exec_module(side)


@pytest.mark.parametrize("paper", sorted(side.PAPERS))
def test_every_published_cell_maps_to_an_entry_of_the_papers_file(paper, registry):
    plan = load_tournament(PAPERS / side.FILES[paper], registry)
    defenses = {d.label for d in plan.defenses}
    budgets = {a.label: set(a.budgets) for a in plan.attacks}
    metrics = {m.label: m for m in plan.metrics}
    for cell in side.cells(paper):
        kind = cell[0]
        if kind == "clean":
            assert cell[1] in defenses, cell
        elif kind in ("acc", "instance"):
            _, d, a, b = cell
            assert d in defenses and a in budgets and b in budgets[a], cell
            attack = next(x for x in plan.attacks if x.label == a)
            assert plan.defense(d) and attack.faces(d), cell
            assert kind == "acc" or attack.targets is not None, cell  # instances exist in a targeted match only
        else:
            _, name, d, a, b = cell
            assert name in metrics and d in defenses, cell
            mp = metrics[name]
            if mp.scope is Scope.MODEL:
                assert a == "" and mp.measures(d), cell
            else:
                assert a in budgets and b in budgets[a] and mp.measures(d, a), cell


def test_a_direction_is_judged_on_the_arenas_figures():
    assert side.holds(2.0, ">", 1.0) and not side.holds(1.0, ">", 2.0)
    assert side.holds("failed", ">", 1.0) is None  # a failed match reproduces nothing


def test_an_instance_cell_is_clean_accuracy_times_the_share_of_targets_missed():
    from types import SimpleNamespace as NS
    results = side.Results.__new__(side.Results)
    results.scale = {}
    results.models = {"combined": NS(clean_accuracy=2 / 3)}
    results.matches = {("combined", "cw-l2-t", 1.0): NS(ok=True, status="ok", robust_accuracy=1 / 3, success_rate=0.25),
                       ("combined", "pgd-l2-t", 1.0): NS(ok=False, status="timeout", robust_accuracy=None,
                                                        success_rate=None)}
    assert results.value(("instance", "combined", "cw-l2-t", 1.0)) == pytest.approx(50.0)
    assert results.value(("acc", "combined", "cw-l2-t", 1.0)) == pytest.approx(100 / 3)
    assert results.value(("instance", "combined", "pgd-l2-t", 1.0)) == "timeout"
    assert results.value(("instance", "standard", "cw-l2-t", 1.0)) is None
