"""A first honest tournament end to end: training, matches, the results database, leaderboards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from typing import ClassVar

import pytest
import torch

import arena
from arena.attack import FixedBudgetAttack
from arena.defense import DetectorDefense
from arena.leaderboard import tables
from arena.tournament.executors import InlineExecutor
from arena.tournament.plan import load_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

TOURNAMENT = """
name = "tiny"
dataset = {{ id = "digits" }}
architecture = "digits-cnn"
seed = 42
samples = 60

[training]
epochs = 4
lr = 0.003

[[defenses]]
id = "standard"

[[defenses]]
id = "gda"
params = {{ copies = 2 }}

{extra_defenses}

[[attacks]]
name = "fgsm-linf"
id = "fgsm"
budgets = [0.05, 0.3]

[[attacks]]
name = "pgd-l2"
id = "pgd"
params = {{ norm = "l2", steps = 5 }}
budgets = [1.0]

{extra_attacks}
"""

CALLS = {"count": 0}


class Explodes(FixedBudgetAttack):
    """Test attack that always raises."""

    id: ClassVar[str] = "explodes"

    def run(self, model, x, y, eps, targets):
        raise RuntimeError("kaboom")


class Counted(FixedBudgetAttack):
    """Test attack: uniform noise, counting its calls."""

    id: ClassVar[str] = "counted"

    def run(self, model, x, y, eps, targets):
        CALLS["count"] += 1
        return x + eps * torch.empty_like(x).uniform_(-1, 1)


class OffGrid(DetectorDefense):
    """Test detector: digits pixels are multiples of 1/16; flags inputs with pixels off that grid."""

    id: ClassVar[str] = "off-grid"

    def fit(self, model, data, *, seed=42):
        self.calibrate(model, data.x[:200])

    def score(self, model, x):
        off = (x * 16 - (x * 16).round()).abs() > 1e-3
        return off.flatten(1).float().mean(1)


test_plugins = types.ModuleType("test_plugins")
test_plugins.arena_register_attacks = arena.hookimpl(lambda register: (register(Explodes), register(Counted)))
test_plugins.arena_register_defenses = arena.hookimpl(lambda register: register(OffGrid))


@pytest.fixture(scope="module")
def reg():
    return arena.load_plugins(extra=[("test-plugins", test_plugins)])


def write(tmp_path, extra_defenses="", extra_attacks="", name="t.toml"):
    path = tmp_path / name
    path.write_text(TOURNAMENT.format(extra_defenses=extra_defenses, extra_attacks=extra_attacks))
    return path


def run(path, reg, db, cache, resume=False, executor=None):
    """The tournament in ``path``; ``executor=InlineExecutor()`` for tests that watch what the
    plugins do from this process (the default runs them in worker processes)."""
    store = Store(db)
    runner = Runner(load_tournament(path, reg), store, cache_dir=cache, progress=False, executor=executor)
    return store, runner.run(resume=resume)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, reg):
    tmp = tmp_path_factory.mktemp("t")
    path = write(tmp, extra_defenses='[[defenses]]\nid = "off-grid"\non = "standard"',
                 extra_attacks='[[attacks]]\nid = "explodes"\nbudgets = [0.1]')
    store, run_id = run(path, reg, tmp / "r.db", tmp / "cache")
    return tmp, path, store, run_id


def test_every_match_is_stored(finished):
    _, _, store, run_id = finished
    rows = store.matches(run_id)
    assert len(rows) == 3 * (2 + 1 + 1)  # 3 defenses × (fgsm 2 budgets, pgd 1, explodes 1)
    models = {m.defense: m for m in store.models(run_id)}
    assert models["standard"].clean_accuracy > 0.85 and models["gda"].clean_accuracy > 0.8
    ok = [r for r in rows if r.attack != "explodes"]
    assert all(r.status == "ok" and len(r.robust_mask) == 60 for r in ok)
    assert store.run(run_id).status == "finished"


def test_a_failing_plugin_fails_only_its_own_match(finished):
    _, _, store, run_id = finished
    failed = [r for r in store.matches(run_id) if r.status == "failed"]
    assert {r.attack for r in failed} == {"explodes"} and len(failed) == 3
    assert failed[0].error == "RuntimeError: kaboom"
    board = tables.build(store, run_id).render("table")
    assert "explodes vs standard (ε=0.1): failed: RuntimeError: kaboom" in board


def test_robust_accuracy_falls_with_the_budget(finished):
    _, _, store, run_id = finished
    acc = {(r.defense, r.budget): r.robust_accuracy for r in store.matches(run_id) if r.attack == "fgsm-linf"}
    clean = {m.defense: m.clean_accuracy for m in store.models(run_id)}
    assert clean["standard"] >= acc[("standard", 0.05)] > acc[("standard", 0.3)]
    assert acc[("standard", 0.3)] < 0.5


def test_detected_adversarial_examples_count_as_defended(finished):
    _, _, store, run_id = finished
    models = {m.defense: m for m in store.models(run_id)}
    assert models["off-grid"].false_positive_rate == 0.0
    rows = {(r.defense, r.attack, r.budget): r for r in store.matches(run_id)}
    assert rows[("off-grid", "fgsm-linf", 0.3)].robust_accuracy == models["standard"].clean_accuracy
    assert rows[("standard", "fgsm-linf", 0.3)].robust_accuracy < models["standard"].clean_accuracy


def test_worst_case_is_per_example(finished):
    _, _, store, run_id = finished
    board = tables.build(store, run_id)
    linf = next(s for s in board.sections if s.norm == "linf")
    row = next(r for r in linf.rows if r[0] == "standard")
    worst = row[linf.headers.index("worst ε=0.3")]
    assert worst <= row[linf.headers.index("fgsm-linf ε=0.3")]
    data = json.loads(board.render("json"))
    assert {r["attack"] for r in data["results"]} == {"fgsm-linf", "pgd-l2", "explodes"}
    for fmt, marker in (("markdown", "| defense"), ("latex", "\\toprule"), ("html", "<table>"),
                        ("csv", "defense,attack,attack_id")):
        assert marker in board.render(fmt)


def test_same_file_and_seed_give_identical_results_from_the_cache(finished, reg):
    tmp, path, store, run_id = finished
    again, run2 = run(path, reg, tmp / "again.db", tmp / "cache")
    first = {(r.defense, r.attack, r.budget): r.robust_mask for r in store.matches(run_id)}
    second = {(r.defense, r.attack, r.budget): r.robust_mask for r in again.matches(run2)}
    assert first == second
    keys = [m.cache_key for m in store.models(run_id) if m.cache_key]
    assert len(keys) == 2 and all((tmp / "cache" / "models" / f"{k}.pt").is_file() for k in keys)


def test_a_new_release_of_a_defense_plugin_trains_its_model_again(finished, reg):
    """Cache keys name the distribution and version that provide each plugin: weights trained by
    an older release of a defense are not reused, those of the others are."""
    import dataclasses

    from arena.registry import Owner

    tmp, path, store, run_id = finished
    owner = reg.owners[("defenses", "gda")]
    bumped = dataclasses.replace(reg, owners={**reg.owners, ("defenses", "gda"): Owner(
        owner.plugin, owner.distribution, owner.version + ".post1")})
    again, run2 = run(path, bumped, tmp / "bumped.db", tmp / "cache")
    before = {m.defense: m.cache_key for m in store.models(run_id)}
    after = {m.defense: m.cache_key for m in again.models(run2)}
    assert after["standard"] == before["standard"] and after["gda"] != before["gda"]
    assert (tmp / "cache" / "models" / f"{after['gda']}.pt").is_file()


def test_resume_skips_finished_matches(tmp_path, reg):
    path = write(tmp_path, extra_attacks='[[attacks]]\nid = "counted"\nbudgets = [0.1, 0.2]')
    store, run_id = run(path, reg, tmp_path / "r.db", tmp_path / "cache", executor=InlineExecutor())
    assert CALLS["count"] == 4  # 2 defenses × 2 budgets, one batch each
    store.conn.execute("DELETE FROM matches WHERE defense = 'gda' AND attack = 'counted' AND budget = 0.2")
    store.conn.execute("UPDATE runs SET status = 'running'")
    store.conn.commit()
    store, resumed = run(path, reg, tmp_path / "r.db", tmp_path / "cache", resume=True, executor=InlineExecutor())
    assert resumed == run_id and CALLS["count"] == 5
    assert len(store.matches(run_id)) == 2 * 5


def test_cli_runs_a_tournament_and_prints_the_leaderboard(tmp_path):
    path = write(tmp_path)
    db = tmp_path / "cli.db"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "arena", "run", str(path), "--db", str(db), "--quiet",
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "tiny on digits (run 1, seed 42)" in proc.stdout and "worst ε=0.3" in proc.stdout
    board = subprocess.run([sys.executable, "-m", "arena", "leaderboard", str(db), "--format", "markdown"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert board.returncode == 0 and "| standard" in board.stdout


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('id = "fgsm"', 'id = "fgsn"'),
     r"t.toml: attacks\[0\].id: unknown attack 'fgsn' \(did you mean 'fgsm'\?\)"),
    (lambda t: t.replace('steps = 5', 'stpes = 5'),
     r"t.toml: attacks\[1\].params: attack 'pgd': stpes: unknown key \(did you mean 'steps'\?\)"),
    (lambda t: t.replace('samples = 60', 'sample = 60'),
     r"t.toml: sample: unknown key \(did you mean 'samples'\?\)"),
    (lambda t: t.replace('budgets = [1.0]', ''),
     r"t.toml: attacks\[1\].budgets: fixed-budget attack 'pgd' needs at least one budget"),
    (lambda t: t.replace('copies = 2', 'copies = -2'),
     r"t.toml: defenses\[1\].params: defense 'gda': copies: Input should be greater than or equal to 1"),
    (lambda t: t + '\n[[defenses]]\nid = "off-grid"\non = "standrad"\n',
     r"t.toml: defenses\[2\].on: no defense named 'standrad' \(did you mean 'standard'\?\)"),
    (lambda t: t.replace('budgets = [1.0]', 'budgets = [1.0]\nagainst = ["gdaa"]'),
     r"t.toml: attacks\[1\].against: no defense named 'gdaa' \(did you mean 'gda'\?\)"),
    (lambda t: t.replace('name = "tiny"', 'name = "tiny'), r"t.toml: invalid TOML"),
])
def test_bad_tournament_files_give_one_line_errors(tmp_path, reg, edit, message):
    path = tmp_path / "t.toml"
    path.write_text(edit(TOURNAMENT.format(extra_defenses="", extra_attacks="")))
    with pytest.raises(arena.ConfigError, match=message):
        load_tournament(path, reg)


def test_cli_user_errors_exit_2_without_traceback(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text(TOURNAMENT.format(extra_defenses="", extra_attacks="").replace('"digits-cnn"', '"digit-cnn"'))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    cases = ((["run", str(path)], "architecture.id: unknown architecture 'digit-cnn' (did you mean 'digits-cnn'?)"),
             (["run", str(tmp_path / "missing.toml")], "missing.toml: no such tournament file"))
    for args, message in cases:
        proc = subprocess.run([sys.executable, "-m", "arena", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1
        assert message in proc.stderr


def test_a_wrapper_around_a_fixed_budget_attack_gets_no_unbounded_run(tmp_path, reg):
    """eot's class is minimal (its default inner attack is cw-l2), but eot around fgsm is a
    fixed-budget attack: it must be run at its budgets only, never at ε = ∞ (which crashed)."""
    path = write(tmp_path, extra_attacks='[[attacks]]\nname = "eot-fgsm"\nid = "eot"\n'
                                         'params = { inner = "fgsm", samples = 2 }\nbudgets = [0.1]')
    store, run_id = run(path, reg, tmp_path / "r.db", tmp_path / "cache")
    rows = [r for r in store.matches(run_id) if r.attack == "eot-fgsm"]
    assert sorted((r.defense, r.budget) for r in rows) == [("gda", 0.1), ("standard", 0.1)]
    assert all(r.status == "ok" for r in rows), [r.error for r in rows]


def test_a_wrapper_around_a_fixed_budget_attack_needs_budgets(tmp_path, reg):
    path = write(tmp_path, extra_attacks='[[attacks]]\nname = "eot-fgsm"\nid = "eot"\nparams = { inner = "fgsm" }')
    with pytest.raises(arena.ConfigError, match=r"attacks\[2\].budgets: fixed-budget attack 'eot' needs"):
        load_tournament(path, reg)


def test_a_randomised_entrant_gives_the_same_results_whatever_the_rng_state(tmp_path, reg):
    """NAC draws fresh logit noise on every call: its clean predictions, the gray-box re-judging
    and the detector/transfer judging must be seeded by the tournament, not by whatever the
    process did before (training consumed the generator on the first run, the cache did not)."""
    path = write(tmp_path, extra_defenses='[[defenses]]\nid = "nac"\non = "standard"\nparams = { sigma = 3.0 }',
                 extra_attacks='[[attacks]]\nname = "gray"\nid = "fgsm"\nview = "gray-box"\nbudgets = [0.05]\n'
                               '[[attacks]]\nname = "transfer"\nid = "fgsm"\nsurrogate = "standard"\nbudgets = [0.05]')
    results = []
    for i, junk in enumerate((0, 12345)):
        torch.manual_seed(junk)
        store, run_id = run(path, reg, tmp_path / f"r{i}.db", tmp_path / "cache", executor=InlineExecutor())
        clean = {m.defense: m.clean_mask for m in store.models(run_id)}
        masks = {(r.defense, r.attack, r.budget): r.robust_mask for r in store.matches(run_id)}
        results.append((clean, masks))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]


def test_an_attack_runs_only_against_the_defenses_it_names(tmp_path, reg):
    """``against`` pairs an attack with some defenses only (cw-wb with detectors): the other
    pairs are not matches at all, not failures, and a resumed run does not ask for them."""
    path = write(tmp_path, extra_attacks='[[attacks]]\nname = "counted-gda"\nid = "counted"\n'
                                         'budgets = [0.1]\nagainst = ["gda"]')
    store, run_id = run(path, reg, tmp_path / "r.db", tmp_path / "cache", executor=InlineExecutor())
    rows = [r for r in store.matches(run_id) if r.attack == "counted-gda"]
    assert [(r.defense, r.status) for r in rows] == [("gda", "ok")]
    assert len(store.matches(run_id)) == 2 * 3 + 1
    calls = CALLS["count"]
    store.conn.execute("UPDATE runs SET status = 'running'")  # as if killed before finishing
    store.conn.commit()
    store, resumed = run(path, reg, tmp_path / "r.db", tmp_path / "cache", resume=True, executor=InlineExecutor())
    assert resumed == run_id and CALLS["count"] == calls and len(store.matches(run_id)) == 7


def test_a_trained_sanitiser_is_cached_like_a_trained_model(tmp_path, reg, monkeypatch):
    """DLN trains a sanitiser inside ``wrap``; a second tournament on the same cache restores
    it instead of training it again, and gives the same results."""
    from arena_builtins.defenses.sanitizer import DLN

    trained = []
    original = DLN._train_sanitizer
    monkeypatch.setattr(DLN, "_train_sanitizer", lambda self, *a: (trained.append(1), original(self, *a)))
    path = write(tmp_path, extra_defenses='[[defenses]]\nid = "dln"\non = "standard"\n'
                                          'params = { samples = 120, epochs = 1 }')
    results = []
    for i in range(2):
        store, run_id = run(path, reg, tmp_path / f"r{i}.db", tmp_path / "cache", executor=InlineExecutor())
        results.append(sorted((r.attack, r.budget, r.robust_mask, r.status)
                              for r in store.matches(run_id) if r.defense == "dln"))
        assert len(trained) == 1, f"run {i} trained the sanitiser {len(trained)} times in all"
    assert results[0] == results[1] and len(results[0]) == 3
