"""Gray-box and transfer matches: what each attack sees, enforced by the runner."""
from __future__ import annotations

import types
from typing import ClassVar

import pytest
import torch

import arena
from arena.attack import FixedBudgetAttack
from arena.leaderboard import tables
from arena.tournament.executors import InlineExecutor
from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

SEEN = []


class Recorder(FixedBudgetAttack):
    """Test attack: records the models it is given, then runs a few FGSM-like steps."""

    id: ClassVar[str] = "recorder"

    def run(self, model, x, y, eps, targets):
        SEEN.append(type(model).__name__)
        x_adv = x.clone()
        for _ in range(5):
            x_adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(x_adv), y)
            (g,) = torch.autograd.grad(loss, x_adv)
            x_adv = (x_adv.detach() + eps / 2 * g.sign()).clamp(0, 1)
            x_adv = x + (x_adv - x).clamp(-eps, eps)
        return x_adv


plugin = types.ModuleType("views")
plugin.arena_register_attacks = arena.hookimpl(lambda register: register(Recorder))

CONFIG = {
    "name": "views", "dataset": "digits", "architecture": "digits-cnn", "samples": 60,
    "training": {"epochs": 4, "lr": 0.003},
    "defenses": [{"id": "standard"}, {"id": "gda", "params": {"copies": 2}},
                 {"id": "feature-squeezing", "name": "squeezed", "on": "standard"}],
    "attacks": [
        {"id": "recorder", "name": "white", "budgets": [0.3]},
        {"id": "recorder", "name": "gray", "view": "gray-box", "budgets": [0.3]},
        {"id": "recorder", "name": "transfer", "surrogate": "standard", "budgets": [0.3]},
    ],
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("views")
    reg = arena.load_plugins(extra=[("views", plugin)])
    store = Store(tmp / "v.db")
    SEEN.clear()
    with pytest.MonkeyPatch.context() as mp:  # SEEN is filled in this process (tests/test_isolation.py:
        mp.setenv("ARENA_ISOLATE_ATTACKS", "0")  # gray-box attacks in a process of their own)
        run_id = Runner(parse_tournament(CONFIG, reg), store, cache_dir=tmp / "c", progress=False,
                        executor=InlineExecutor()).run()
    return store, run_id


@pytest.fixture(scope="module")
def results(finished):
    store, run_id = finished
    return {(r.defense, r.attack): r for r in store.matches(run_id)}


def test_gray_box_attacks_see_the_base_classifier_only(results):
    assert results[("squeezed", "gray")].knowledge == "gray-box"
    white, gray = results[("squeezed", "white")], results[("squeezed", "gray")]
    # rounding masks the white-box gradient; the base classifier's gradient transfers through it
    assert gray.robust_accuracy < white.robust_accuracy


def test_transfer_examples_are_crafted_once_and_judged_everywhere(results):
    rows = [results[(d, "transfer")] for d in ("standard", "gda", "squeezed")]
    assert all(r.status == "ok" and r.knowledge == "black-box" for r in rows)
    # 3 defenses × (white + gray) batches, plus one crafting pass for the transfer attack
    assert len(SEEN) == 3 * 2 + 1
    assert results[("standard", "transfer")].robust_accuracy <= results[("gda", "transfer")].robust_accuracy + 0.2


def test_the_leaderboard_names_each_attacks_threat_model(finished):
    store, run_id = finished
    board = tables.build(store, run_id)
    attacks = next(s for s in board.sections if s.norm.startswith("attacks"))
    shown = {row[0]: row[attacks.headers.index("threat model")] for row in attacks.rows}
    assert shown == {"white": "white-box linf", "gray": "gray-box linf", "transfer": "transfer linf"}
    assert "transfer linf" in board.render("table")
    assert {r["attack"]: r["threat_model"] for r in board.long_rows}["transfer"] == "transfer"
    only = tables.build(store, run_id, knowledge="transfer")
    assert {r["attack"] for r in only.long_rows} == {"transfer"}
    with pytest.raises(arena.ConfigError, match="no match"):  # transfer rows are not filed as black-box
        tables.build(store, run_id, knowledge="black-box")


def test_transfer_needs_a_white_box_attack_and_a_known_surrogate(registry):
    bad = {**CONFIG, "attacks": [{"id": "pgd", "surrogate": "standrad", "budgets": [0.1]}]}
    with pytest.raises(arena.ConfigError, match=r"attacks\[0\].surrogate: no defense named 'standrad'"):
        parse_tournament(bad, registry)
