"""How a tournament scores a match: targeted runs, minimal attacks clipped to each budget, and
randomised defenses judged over passes (the majority decides)."""
from __future__ import annotations

import types
from typing import ClassVar

import pytest
import torch
from torch import nn

import arena
from arena.attack import FixedBudgetAttack, MinimalAttack
from arena.defense import DefendedModel, InferenceDefense
from arena.errors import ConfigError
from arena.tournament.executors import InlineExecutor
from arena.tournament.plan import load_tournament, parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store
from arena_builtins.attacks.gradient import loss_gradient

HEAD = """
name = "scoring"
dataset = {{ id = "digits" }}
architecture = "digits-cnn"
seed = 3
samples = {samples}
{extra}

[training]
epochs = 4
lr = 0.003

[[defenses]]
id = "standard"

{defenses}

{attacks}
"""


class Overshoot(MinimalAttack):
    """Test attack: a "minimal" attack that overshoots, x + 1·sign(∇) (L∞ distance near 1)."""

    id: ClassVar[str] = "overshoot"

    def run(self, model, x, y, eps, targets):
        return x + loss_gradient(model, x, y, targets).sign()


class Unchanged(FixedBudgetAttack):
    """Test attack: returns the clean inputs (any break is the judge's luck)."""

    id: ClassVar[str] = "unchanged"

    def run(self, model, x, y, eps, targets):
        return x.clone()


SEEN: list[int] = []


class Seen(FixedBudgetAttack):
    """Test attack: records how many samples it is given, returns them unchanged."""

    id: ClassVar[str] = "seen"

    def run(self, model, x, y, eps, targets):
        SEEN.append(len(x))
        return x.clone()


class CoinModel(DefendedModel):
    """On every call, each sample's answer is a wrong class with probability ``p``."""

    randomized: ClassVar[bool] = True

    def __init__(self, base: nn.Module, p: float) -> None:
        super().__init__(base)
        self.p = p

    def forward(self, x):
        logits = self.base(x)
        flip = torch.rand(len(x), device=x.device) < self.p
        wrong = (logits.argmax(1) + 1) % logits.shape[1]
        boost = torch.nn.functional.one_hot(wrong, logits.shape[1]) * 1e3
        return torch.where(flip.unsqueeze(1), logits + boost, logits)


class Coin(InferenceDefense):
    """Test defense: a randomised model that answers wrongly 30% of the time."""

    id: ClassVar[str] = "coin"

    def wrap(self, model, data, *, seed=42):
        return CoinModel(model, 0.3)


class WrongModel(DefendedModel):
    """Answers the class after the base model's, always: no sample is classified correctly."""

    def forward(self, x):
        logits = self.base(x)
        wrong = (logits.argmax(1) + 1) % logits.shape[1]
        return logits + torch.nn.functional.one_hot(wrong, logits.shape[1]) * 1e3


class Wrong(InferenceDefense):
    """Test defense: classifies every sample wrongly (nothing is left to attack)."""

    id: ClassVar[str] = "wrong"

    def wrap(self, model, data, *, seed=42):
        return WrongModel(model)


plugins = types.ModuleType("scoring_plugins")
plugins.arena_register_attacks = arena.hookimpl(lambda register: (register(Overshoot), register(Unchanged),
                                                                            register(Seen)))
plugins.arena_register_defenses = arena.hookimpl(lambda register: (register(Coin), register(Wrong)))


@pytest.fixture(scope="module")
def reg():
    return arena.load_plugins(extra=[("scoring-plugins", plugins)])


def tournament(tmp_path, reg, attacks, defenses="", extra="", samples=40, resume=False):
    path = tmp_path / "t.toml"
    path.write_text(HEAD.format(samples=samples, extra=extra, defenses=defenses, attacks=attacks))
    store = Store(tmp_path / "r.db")
    runner = Runner(load_tournament(path, reg), store, cache_dir=tmp_path.parent / "cache", progress=False,
                    executor=InlineExecutor())
    run_id = runner.run(resume=resume)
    rows = {(r.defense, r.attack, r.budget): r for r in store.matches(run_id)}
    return runner, store, run_id, rows


def predictions(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# --- targeted runs ------------------------------------------------------------------------------

def test_targets_all_attacks_every_other_class_and_scores_pairs(tmp_path, reg):
    attacks = """
extra = 0
[[attacks]]
name = "pgd-all"
id = "pgd"
params = { steps = 10 }
budgets = [0.3]
targets = "all"
"""
    runner, store, run_id, rows = tournament(tmp_path, reg, attacks.replace("extra = 0", ""),
                                             extra="save_examples = true", samples=20)
    row = rows[("standard", "pgd-all", 0.3)]
    assert row.status == "ok" and row.provenance["targets"] == "all"
    entrant = runner.entrants["standard"]
    ex = torch.load(store.examples_dir(run_id) / "standard__pgd-all.pt")
    attacked = torch.nonzero(entrant.clean_correct).flatten()
    # every attacked sample with each of the 9 other classes, once
    assert len(ex["index"]) == 9 * len(attacked)
    data = runner.eval
    for i in attacked.tolist():
        mine = ex["targets"][ex["index"] == i]
        assert sorted(mine.tolist()) == sorted(set(range(10)) - {int(data.y[i])})
    pred = predictions(entrant.model, ex["0.3"])
    # success rate: targets reached over (sample, target) pairs
    assert row.success_rate == pytest.approx(float((pred == ex["targets"]).float().mean()))
    # robust: no example of the sample is misclassified
    broken = torch.zeros(len(data.y), dtype=torch.bool)
    broken[ex["index"][pred != data.y[ex["index"]]]] = True
    robust = entrant.clean_correct & ~broken
    assert row.robust_accuracy == pytest.approx(float(robust.float().mean()))
    assert 0 < row.success_rate < 1


@pytest.mark.parametrize("targets", ['"all"', '"least-likely"', '"random"', "2"])
def test_a_targeted_attack_on_an_entrant_that_classifies_nothing_correctly_stores_zero(tmp_path, reg, targets):
    """Nothing to attack: the match stores robust accuracy 0 (it failed with an IndexError on the
    empty clean logits, seen in the MNIST seed 000 targeted file at toy scale)."""
    attacks = f"""
[[attacks]]
name = "t"
id = "pgd"
params = {{ steps = 2 }}
budgets = [0.1, 0.3]
targets = {targets}
"""
    _, _, _, rows = tournament(tmp_path, reg, attacks, defenses='[[defenses]]\nid = "wrong"\non = "standard"',
                               samples=10)
    for budget in (0.1, 0.3):
        row = rows[("wrong", "t", budget)]
        assert (row.status, row.error) == ("ok", None)
        assert row.robust_accuracy == 0.0 and tuple(row.robust_mask) == (False,) * 10
    assert rows[("standard", "t", 0.3)].status == "ok"


def test_least_likely_and_n_random_targets(tmp_path, reg):
    attacks = """
[[attacks]]
name = "ll"
id = "pgd"
params = { steps = 5 }
budgets = [0.2]
targets = "least-likely"

[[attacks]]
name = "three"
id = "pgd"
params = { steps = 5 }
budgets = [0.2]
targets = 3
"""
    runner, store, run_id, rows = tournament(tmp_path, reg, attacks, extra="save_examples = true", samples=16)
    entrant, data = runner.entrants["standard"], runner.eval
    ll = torch.load(store.examples_dir(run_id) / "standard__ll.pt")
    with torch.no_grad():
        clean = entrant.model(data.x[ll["index"]])
    assert torch.equal(ll["targets"], clean.argmin(1))
    three = torch.load(store.examples_dir(run_id) / "standard__three.pt")
    for i in three["index"].unique().tolist():
        mine = three["targets"][three["index"] == i].tolist()
        assert len(mine) == 3 == len(set(mine)) and int(data.y[i]) not in mine
    assert rows[("standard", "three", 0.2)].provenance["targets"] == 3


@pytest.mark.parametrize("value, message", [
    ('"every"', 'expected one of "all", "random", "least-likely"'),
    ("0", "at least 1"),
    ("true", "got true"),
])
def test_bad_targets_are_config_errors(reg, value, message):
    text = HEAD.format(samples=10, extra="", defenses="", attacks=f"""
[[attacks]]
id = "pgd"
budgets = [0.1]
targets = {value}
""")
    import tomllib
    with pytest.raises(ConfigError, match=message):
        parse_tournament(tomllib.loads(text), reg, "t.toml")


def test_targets_need_a_targeted_attack_and_enough_classes(tmp_path, reg):
    import tomllib
    text = HEAD.format(samples=10, extra="", defenses="", attacks="""
[[attacks]]
id = "pgd"
budgets = [0.1]
targets = 10
""")
    plan = parse_tournament(tomllib.loads(text), reg, "t.toml")
    from arena.tournament.plan import check_samples
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.targets: 10 targets per sample.* only 9 other"):
        check_samples(plan, plan.dataset.build().load(3))
    transfer = HEAD.format(samples=10, extra="", defenses="", attacks="""
[[attacks]]
id = "pgd"
budgets = [0.1]
surrogate = "standard"
targets = "random"
""")
    with pytest.raises(ConfigError, match="transfer attacks"):
        parse_tournament(tomllib.loads(transfer), reg, "t.toml")


# --- minimal attacks at a budget ----------------------------------------------------------------

def test_a_minimal_attack_is_scored_on_its_example_clipped_to_each_budget(tmp_path, reg):
    attacks = """
[[attacks]]
id = "overshoot"
budgets = [0.1, 0.3]

[[attacks]]
id = "fgsm"
budgets = [0.1, 0.3]
"""
    _, _, _, rows = tournament(tmp_path, reg, attacks, samples=40)
    for eps in (0.1, 0.3):
        over, fgsm = rows[("standard", "overshoot", eps)], rows[("standard", "fgsm", eps)]
        # overshoot's distance (≈1) exceeds both budgets: only the clipped example can count, and
        # clipping x + sign(∇) to ε in L∞ is FGSM at ε, example for example
        assert over.robust_mask == fgsm.robust_mask
        assert over.mean_distance is None or over.mean_distance <= eps + 1e-6
    assert rows[("standard", "overshoot", 0.3)].robust_accuracy < rows[("standard", "overshoot", 0.1)].robust_accuracy
    assert rows[("standard", "overshoot", float("inf"))].robust_accuracy < 0.2


# --- randomised defenses -----------------------------------------------------------------------

COIN = """
[[defenses]]
id = "coin"
on = "standard"
"""

UNCHANGED = """
[[attacks]]
id = "unchanged"
budgets = [0.1]
"""


def test_a_randomised_model_is_judged_by_the_majority_of_its_passes(tmp_path, reg):
    one = tmp_path / "one"
    one.mkdir()
    _, _, _, lucky = tournament(one, reg, UNCHANGED, COIN, extra="judge_passes = 1", samples=80)
    many = tmp_path / "many"
    many.mkdir()
    runner, store, run_id, fair = tournament(many, reg, UNCHANGED, COIN, extra="judge_passes = 21", samples=80)
    clean = {m.defense: m.clean_accuracy for m in store.models(run_id)}
    row = fair[("coin", "unchanged", 0.1)]
    # 21 passes: a clean input stays correct on the majority (P(≥11 of 21 wrong at 30%) ≈ 2.6%),
    # and the clean accuracy of the randomised model is judged the same way
    assert clean["coin"] >= clean["standard"] - 0.1
    assert row.robust_accuracy >= clean["coin"] - 0.1
    assert row.provenance["judged"]["passes"] == 21 and row.provenance["judged"]["rule"] == "majority"
    assert row.provenance["judged"]["mean_accuracy"] == pytest.approx(0.7 * clean["coin"], abs=0.1)
    # one pass: about 30% of the attacked inputs look broken by luck
    assert lucky[("coin", "unchanged", 0.1)].robust_accuracy < row.robust_accuracy - 0.15
    # a deterministic model is judged once, and says nothing about passes
    assert "judged" not in fair[("standard", "unchanged", 0.1)].provenance


def test_the_leaderboard_says_how_examples_were_judged(tmp_path, reg):
    from arena.leaderboard import tables
    attacks = UNCHANGED + """
[[attacks]]
name = "pgd-ll"
id = "pgd"
params = { steps = 3 }
budgets = [0.1]
targets = "least-likely"

[[attacks]]
id = "overshoot"
budgets = [0.1]
"""
    _, store, run_id, _ = tournament(tmp_path, reg, attacks, COIN, extra="judge_passes = 5", samples=20)
    board = tables.build(store, run_id)
    text = "\n".join(board.notes)
    assert "coin: randomised; each example is judged on 5 passes" in text
    assert "standard: randomised" not in text
    assert "clipped to ε" in text and "(sample, target) pairs" in text
    attack_rows = board.sections[-1].rows
    assert any(r[0] == "pgd-ll" and "targeted (least-likely)" in r[1] for r in attack_rows)
    coin = [r for r in board.long_rows if r["defense"] == "coin" and r["attack"] == "unchanged"][0]
    assert coin["judged_passes"] == 5 and 0 < coin["pass_accuracy"] <= 1


# --- the worst case as a cascade ---------------------------------------------------------------

def test_a_cascade_attacks_only_the_survivors_and_labels_its_columns(tmp_path, reg):
    from arena.leaderboard import tables
    attacks = """
[[attacks]]
id = "fgsm"
budgets = [0.1, 0.3]

[[attacks]]
name = "seen-03"
id = "seen"
budgets = [0.3]

[[attacks]]
name = "pgd"
id = "pgd"
params = { steps = 5 }
budgets = [0.1, 0.3]
"""
    SEEN.clear()
    _, store, run_id, rows = tournament(tmp_path, reg, attacks, extra="cascade = true", samples=40)
    fgsm01, fgsm03 = rows[("standard", "fgsm", 0.1)], rows[("standard", "fgsm", 0.3)]
    # the recording attack saw exactly the samples fgsm left robust at 0.3 (and at 0.1: smaller ball)
    assert sum(SEEN) == sum(fgsm03.robust_mask) < sum(fgsm01.robust_mask)
    for eps in (0.1, 0.3):
        before = rows[("standard", "fgsm", eps)].robust_mask
        after = rows[("standard", "pgd", eps)].robust_mask  # cumulative: robust after fgsm and pgd
        assert all(b or not a for a, b in zip(after, before))
    board = tables.build(store, run_id)
    headers = board.sections[0].headers
    assert "fgsm ε=0.1" in headers and "pgd ε=0.1 (conditional)" in headers
    assert any(n.startswith("cascade:") for n in board.notes)
    worst = headers.index("worst ε=0.3")
    row = board.sections[0].rows[0]
    assert row[worst] == pytest.approx(rows[("standard", "pgd", 0.3)].robust_accuracy)


def test_a_resumed_cascade_attacks_the_same_survivors(tmp_path, reg):
    import sqlite3

    attacks = """
[[attacks]]
id = "fgsm"
budgets = [0.1]

[[attacks]]
name = "seen-01"
id = "seen"
budgets = [0.1]
"""
    SEEN.clear()
    _, store, run_id, rows = tournament(tmp_path, reg, attacks, extra="cascade = true", samples=40)
    first = sum(SEEN)
    store.close()
    with sqlite3.connect(tmp_path / "r.db") as conn:  # as if the run had stopped after fgsm
        conn.execute("DELETE FROM matches WHERE attack = 'seen-01'")
        conn.execute("UPDATE runs SET status = 'interrupted'")
    SEEN.clear()
    _, _, resumed, again = tournament(tmp_path, reg, attacks, extra="cascade = true", samples=40, resume=True)
    assert resumed == run_id
    assert sum(SEEN) == first == sum(rows[("standard", "fgsm", 0.1)].robust_mask)
    assert again[("standard", "seen-01", 0.1)].robust_mask == rows[("standard", "seen-01", 0.1)].robust_mask


def test_judging_an_empty_batch_gives_empty_verdicts():
    """An entrant that classifies no evaluated sample correctly leaves nothing to judge (a transfer
    match against it used to fail on the empty batch)."""
    from arena.training import judged

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model.randomized = True
    empty, labels = torch.zeros(0, 1, 2, 2), torch.zeros(0, dtype=torch.long)
    ((correct, fraction), (reached, _)) = judged(model, empty, 20, labels, labels)
    assert correct.dtype == torch.bool and correct.shape == fraction.shape == reached.shape == (0,)
