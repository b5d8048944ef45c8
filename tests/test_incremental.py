"""Incremental tournaments: a result is identified by what determines it, and a new run of a
database computes only what no earlier run stored (arena.tournament.identity, Runner._reuse)."""
from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest

from arena.leaderboard import tables
from arena.registry import Owner
from arena.tournament import identity, runner as runner_module
from arena.tournament.executors import InlineExecutor
from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

import tomllib

BASE = """
name = "grow"
dataset = "digits"
architecture = "mlp"
samples = 30

[training]
epochs = 2

[[defenses]]
id = "standard"

[[attacks]]
name = "fgsm"
id = "fgsm"
budgets = [0.1, 0.2]
"""

PGD = """
[[attacks]]
name = "pgd"
id = "pgd"
params = { steps = 3 }
budgets = [0.1]
"""

GDA = """
[[defenses]]
id = "gda"
params = { copies = 2 }
"""


class Calls:
    """Counts the matches the runner plays (run_match calls, one per defense × attack)."""

    def __init__(self, monkeypatch):
        self.played: list[tuple[str, str, tuple[float, ...]]] = []
        real = runner_module.run_match

        def counted(entrant, spec, *data):
            self.played.append((entrant.label, spec.attack.label, spec.budgets))
            return real(entrant, spec, *data)

        monkeypatch.setattr(runner_module, "run_match", counted)


def play(text, registry, db, cache, **options):
    """Run the tournament ``text`` into ``db`` in this process; the store, run id and runner."""
    plan = parse_tournament(tomllib.loads(text), registry, source="grow.toml")
    store = Store(db)
    runner = Runner(plan, store, cache_dir=cache, progress=False, executor=InlineExecutor(), **options)
    return store, runner.run(), runner


@pytest.fixture()
def first(tmp_path, registry, monkeypatch):
    calls = Calls(monkeypatch)
    store, run_id, _ = play(BASE, registry, tmp_path / "r.db", tmp_path / "cache")
    assert calls.played == [("standard", "fgsm", (0.1, 0.2))]
    calls.played.clear()
    return tmp_path, store, run_id, calls


def rows(store, run_id):
    return {(m.defense, m.attack, m.budget): m for m in store.matches(run_id)}


def test_adding_an_attack_runs_exactly_its_matches(first, registry):
    tmp, store, run1, calls = first
    store2, run2, runner = play(BASE + PGD, registry, tmp / "r.db", tmp / "cache")
    assert run2 != run1 and calls.played == [("standard", "pgd", (0.1,))]
    assert runner.reused == 2
    new, old = rows(store2, run2), rows(store2, run1)
    assert set(new) == {("standard", "fgsm", 0.1), ("standard", "fgsm", 0.2), ("standard", "pgd", 0.1)}
    for pair in old:  # the same result, marked as taken from run 1, with its key
        assert new[pair].robust_mask == old[pair].robust_mask and new[pair].key == old[pair].key
        assert new[pair].provenance["reused"]["run"] == run1
    assert "reused" not in new[("standard", "pgd", 0.1)].provenance
    # the new run's leaderboard is complete: the reused model row and all three columns
    board = tables.build(store2, run2)
    linf = next(s for s in board.sections if s.norm == "linf")
    assert {"fgsm ε=0.1", "fgsm ε=0.2", "pgd ε=0.1"} <= set(linf.headers) and not linf.marks
    # and running the grown file again computes nothing
    _, run3, runner = play(BASE + PGD, registry, tmp / "r.db", tmp / "cache")
    assert calls.played == [("standard", "pgd", (0.1,))] and runner.reused == 3


def test_adding_a_budget_or_a_defense_runs_only_the_new_matches(first, registry):
    tmp, _, _, calls = first
    grown = BASE.replace("budgets = [0.1, 0.2]", "budgets = [0.1, 0.2, 0.3]") + GDA
    play(grown, registry, tmp / "r.db", tmp / "cache")
    assert sorted(calls.played) == [("gda", "fgsm", (0.1, 0.2, 0.3)), ("standard", "fgsm", (0.3,))]


def test_renaming_or_moving_entries_reuses_and_fresh_recomputes(first, registry):
    tmp, store, run1, calls = first
    renamed = BASE.replace('name = "fgsm"', 'name = "fgsm-linf"').replace('name = "grow"', 'name = "other"')
    store2, run2, _ = play(renamed, registry, tmp / "r.db", tmp / "cache")
    assert calls.played == [] and set(rows(store2, run2)) == {("standard", "fgsm-linf", 0.1),
                                                              ("standard", "fgsm-linf", 0.2)}
    play(BASE, registry, tmp / "r.db", tmp / "cache", reuse=False)
    assert calls.played == [("standard", "fgsm", (0.1, 0.2))]


def test_what_determines_a_result_changes_its_key(registry):
    def matches(text, reg=registry):
        return identity.keys(parse_tournament(tomllib.loads(text), reg)).matches

    base = matches(BASE)
    assert matches(BASE.replace('name = "grow"', 'name = "x"')) == base  # the run's name: no
    assert matches(BASE.replace("samples = 30", "match_timeout = 9\nsamples = 30")) == base
    for changed in (BASE.replace("samples = 30", "samples = 31"), BASE.replace("epochs = 2", "epochs = 3"),
                    BASE.replace('architecture = "mlp"', 'architecture = "digits-cnn"'),
                    BASE.replace('id = "fgsm"', 'id = "fgsm"\nparams = { norm = "l2" }'),
                    BASE.replace("samples = 30", "seed = 7\nsamples = 30")):
        assert set(matches(changed).values()).isdisjoint(base.values()), changed
    owner = registry.owners[("attacks", "fgsm")]
    bumped = dataclasses.replace(registry, owners={**registry.owners, ("attacks", "fgsm"): Owner(
        owner.plugin, owner.distribution, owner.version + ".post1")})
    assert set(matches(BASE, bumped).values()).isdisjoint(base.values())
    # the defense's key does not depend on the attacks: adding one keeps the others' keys
    grown = matches(BASE + PGD)
    assert {k: v for k, v in grown.items() if k[1] == "fgsm"} == base


def test_a_new_plugin_release_recomputes_what_it_touched(first, registry):
    tmp, _, _, calls = first
    owner = registry.owners[("attacks", "fgsm")]
    bumped = dataclasses.replace(registry, owners={**registry.owners, ("attacks", "fgsm"): Owner(
        owner.plugin, owner.distribution, owner.version + ".post1")})
    play(BASE + PGD, bumped, tmp / "r.db", tmp / "cache")
    assert sorted(calls.played) == [("standard", "fgsm", (0.1, 0.2)), ("standard", "pgd", (0.1,))]


def test_failed_matches_are_run_again(first, registry):
    tmp, store, run1, calls = first
    with sqlite3.connect(tmp / "r.db") as conn:
        conn.execute("UPDATE matches SET status = 'timed-out' WHERE run_id = ? AND budget = 0.2", (run1,))
    play(BASE, registry, tmp / "r.db", tmp / "cache")
    assert calls.played == [("standard", "fgsm", (0.2,))]


def test_reused_matches_on_another_build_of_the_model_are_run_again(first, registry):
    """The key says nothing of the trained bits: when the entrant is rebuilt with another cache
    key (trained again elsewhere), the matches taken from the older run are dropped and run."""
    tmp, store, run1, calls = first
    with sqlite3.connect(tmp / "r.db") as conn:
        conn.execute("UPDATE models SET cache_key = 'trained-elsewhere' WHERE run_id = ?", (run1,))
    store2, run2, runner = play(BASE + PGD, registry, tmp / "r.db", tmp / "cache")
    assert sorted(calls.played) == [("standard", "fgsm", (0.1, 0.2)), ("standard", "pgd", (0.1,))]
    assert runner.reused == 0
    assert not any("reused" in m.provenance for m in store2.matches(run2))


def test_an_added_model_metric_builds_the_entrant_again_without_playing(first, registry):
    tmp, _, _, calls = first
    text = BASE + '\n[[metrics]]\nid = "jacobian-norm"\n'
    store2, run2, _ = play(text, registry, tmp / "r.db", tmp / "cache")
    assert calls.played == []
    assert [v.metric for v in store2.metrics(run2)] == ["jacobian-norm"]
    assert len(store2.models(run2)) == 1 and "reused" not in store2.models(run2)[0].provenance


def test_an_older_database_gains_keys_and_its_rows_are_not_reused(first, registry):
    tmp, store, run1, calls = first
    with sqlite3.connect(tmp / "r.db") as conn:  # rows stored before keys existed
        conn.execute("UPDATE matches SET key = NULL")
        conn.execute("UPDATE models SET key = NULL")
    play(BASE, registry, tmp / "r.db", tmp / "cache")
    assert calls.played == [("standard", "fgsm", (0.1, 0.2))]


# ---------------------------------------------------------------- leaderboards that grow and merge
def cli(*args):
    from click.testing import CliRunner

    from arena.cli import cli as arena_cli

    return CliRunner().invoke(arena_cli, [str(a) for a in args])


def board_json(*args):
    result = cli("leaderboard", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def worst(data, defense, budget):
    return next(w for w in data["worst_cases"] if w["defense"] == defense and w["budget"] == budget)


def test_the_leaderboard_of_a_database_shows_the_newest_result_of_each_pair(tmp_path, registry):
    store, run1, _ = play(BASE + GDA, registry, tmp_path / "r.db", tmp_path / "cache")
    store, run2, _ = play(BASE, registry, tmp_path / "r.db", tmp_path / "cache")  # gda left out of the file
    combined = board_json(tmp_path / "r.db")
    assert {w["defense"] for w in combined["worst_cases"]} == {"standard", "gda"}
    assert any(n.startswith("combined: ") and f"run {run1}" in n for n in combined["notes"])
    only = board_json(tmp_path / "r.db", "--run", run2)
    assert {w["defense"] for w in only["worst_cases"]} == {"standard"}
    assert worst(only, "standard", 0.1) == worst(combined, "standard", 0.1)


def test_an_attack_changed_under_its_name_shows_only_its_newest_configuration(tmp_path, registry):
    play(BASE, registry, tmp_path / "r.db", tmp_path / "cache")
    changed = BASE.replace('id = "fgsm"\nbudgets = [0.1, 0.2]', 'id = "fgsm"\nparams = { norm = "l2" }\nbudgets = [1.0]')
    play(changed, registry, tmp_path / "r.db", tmp_path / "cache")
    data = board_json(tmp_path / "r.db")
    assert {(r["attack"], r["norm"], r["budget"]) for r in data["results"]} == {("fgsm", "l2", 1.0)}


def test_databases_merge_and_other_samples_are_refused(tmp_path, registry):
    play(BASE, registry, tmp_path / "a.db", tmp_path / "cache")
    gda_only = BASE.replace('[[defenses]]\nid = "standard"\n', "") + GDA
    play(gda_only, registry, tmp_path / "b.db", tmp_path / "cache")
    merged = board_json(tmp_path / "a.db", tmp_path / "b.db")
    assert {w["defense"] for w in merged["worst_cases"]} == {"standard", "gda"}
    assert all(w["complete"] for w in merged["worst_cases"])
    site = cli("publish", tmp_path / "a.db", tmp_path / "b.db", tmp_path / "site")
    assert site.exit_code == 0, site.output
    index = (tmp_path / "site" / "index.html").read_text()
    assert "gda" in index and "standard" in index
    play(BASE.replace("samples = 30", "samples = 20"), registry, tmp_path / "c.db", tmp_path / "cache")
    refused = cli("leaderboard", tmp_path / "a.db", tmp_path / "c.db")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "a.db: its runs are on dataset 'digits', seed 42, 30 samples, not dataset 'digits', seed 42, " \
           "20 samples" in refused.output
    assert cli("leaderboard", tmp_path / "a.db", tmp_path / "b.db", "--run", 1).exit_code == 2


def test_the_export_has_one_file_per_defense_with_what_broke_each_example(tmp_path, registry):
    with_paper = GDA + 'paper = "https://example.org/gda"\n'
    store, run_id, _ = play(BASE + PGD + with_paper, registry, tmp_path / "r.db", tmp_path / "cache")
    result = cli("export", tmp_path / "r.db", tmp_path / "out")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["gda.json", "standard.json"]
    data = json.loads((tmp_path / "out" / "standard.json").read_text())
    assert data["defense"] == "standard" and data["samples"] == 30 and data["architecture"] == {"id": "mlp", "params": {}}
    assert data["training_data"]["dataset"] == {"id": "digits", "params": {}} and data["training_data"]["training"] == {"epochs": 2}
    model = {m.defense: m for m in store.models(run_id)}["standard"]
    assert data["clean_accuracy"] == model.clean_accuracy
    rows = rows_of(store, run_id, "standard")
    for r in data["robust"]:
        assert len(r["broken_by"]) == 30 and r["complete"]
        robust = sum(b is None for b in r["broken_by"])
        assert robust / 30 == pytest.approx(r["robust_accuracy"])
        assert r["broken_by"].count("clean") == 30 - sum(model.clean_mask)
        for i, who in enumerate(r["broken_by"]):  # the first attack in file order that broke it
            if who not in (None, "clean"):
                assert not rows[(who, r["budget"])].robust_mask[i]
                assert all(rows[(a, r["budget"])].robust_mask[i] for a in ("fgsm", "pgd")[:("fgsm", "pgd").index(who)])
        assert set(r["attacks"]) == {a for (a, b) in rows if b == r["budget"]}
    assert data["provenance"]["runs"] == [run_id] and data["provenance"]["packages"]
    assert data["paper"] is None
    assert json.loads((tmp_path / "out" / "gda.json").read_text())["paper"] == "https://example.org/gda"
    site = cli("publish", tmp_path / "r.db", tmp_path / "site")
    assert site.exit_code == 0, site.output
    page = next((tmp_path / "site").rglob("gda.html")).read_text()
    assert '<a href="https://example.org/gda" rel="noopener">' in page


def rows_of(store, run_id, defense):
    return {(m.attack, m.budget): m for m in store.matches(run_id) if m.defense == defense}


def test_new_data_under_the_same_path_changes_every_key(tmp_path, registry):
    """A local data set is named by its path: its contents go into the keys (and the model
    cache's), so adding images to a folder or rewriting a tensor file recomputes everything."""
    import numpy as np

    from arena.tournament.identity import fingerprint

    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=rng.random((40, 1, 8, 8), dtype=np.float32), y=np.arange(40) % 4)
    text = BASE.replace('dataset = "digits"', f'dataset = {{ id = "tensor-file", params = {{ path = "{path}" }} }}')
    text = text.replace("samples = 30", "samples = 5")
    before = identity.keys(parse_tournament(tomllib.loads(text), registry))
    np.savez(path, x=rng.random((40, 1, 8, 8), dtype=np.float32), y=np.arange(40) % 4)
    after = identity.keys(parse_tournament(tomllib.loads(text), registry))
    assert set(after.matches.values()).isdisjoint(before.matches.values())
    assert set(after.models.values()).isdisjoint(before.models.values())
    tree = tmp_path / "tree" / "cat"
    tree.mkdir(parents=True)
    (tree / "a.png").write_bytes(b"1")
    first = fingerprint({"path": str(tmp_path / "tree")})
    (tree / "b.png").write_bytes(b"2")
    assert fingerprint({"path": str(tmp_path / "tree")}) != first and len(first) == 1
    assert fingerprint({"norm": "linf", "hidden": [32]}) == []


def test_dry_run_lists_what_would_run_and_fresh_recomputes(tmp_path):
    file, db = tmp_path / "grow.toml", tmp_path / "grow.db"
    file.write_text(BASE)
    common = ("--db", db, "--executor", "inline", "--cache-dir", tmp_path / "cache")
    before = cli("run", file, *common, "--dry-run")
    assert before.exit_code == 0 and not db.exists(), before.output
    assert "(new database)" in before.output and "matches: 2: 2 to run, 0 stored" in before.output
    assert "  build   standard" in before.output
    assert cli("run", file, *common, "-q").exit_code == 0
    file.write_text(BASE + PGD)
    after = cli("run", file, *common, "--dry-run")
    assert after.exit_code == 0, after.output
    assert "matches: 3: 1 to run, 2 stored" in after.output
    assert "  run     pgd vs standard at ε = 0.1" in after.output
    assert "  stored  fgsm vs standard at ε = 0.1, 0.2 (run 1)" in after.output
    assert "estimated work:" in after.output
    store = Store(db, readonly=True)
    assert store.run_ids() == [1]  # the dry run wrote nothing
    assert cli("run", file, *common, "-q").exit_code == 0
    assert cli("run", file, *common, "-q", "--fresh").exit_code == 0
    store = Store(db, readonly=True)
    reused = [["reused" in m.provenance for m in store.matches(r)] for r in store.run_ids()]
    assert reused == [[False, False], [True, True, False], [False, False, False]]
    listing = cli("runs", db, "--format", "json")
    assert listing.exit_code == 0 and len(json.loads(listing.output)) == 3


def test_smoke_runs_the_file_at_toy_scale_into_a_database_of_its_own(tmp_path, monkeypatch):
    """``arena run --smoke``: every entry and budget of the file, a few samples, images, epochs and
    steps, into results/FILE-smoke.db; the file's own database is not touched."""
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "grow.toml"
    file.write_text(BASE + PGD.replace("steps = 3", "steps = 50") + GDA)
    common = ("--executor", "inline", "--cache-dir", tmp_path / "cache", "-q")
    dry = cli("run", file, "--smoke", "--dry-run", *common[:-1])
    assert dry.exit_code == 0 and "grow-smoke.db (new database)" in dry.output, dry.output
    result = cli("run", file, "--smoke", *common)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "results" / "grow.db").exists()
    store = Store(tmp_path / "results" / "grow-smoke.db", readonly=True)
    (run,) = store.run_ids()
    config = store.run(run).config
    assert config["name"] == "grow-smoke" and config["samples"] == 4 and config["training"]["epochs"] == 1
    assert [a["params"]["steps"] for a in config["attacks"] if a.get("name") == "pgd"] == [3]
    assert {(m.defense, m.attack, m.budget) for m in store.matches(run)} == {
        (d, a, b) for d in ("standard", "gda") for a, b in (("fgsm", 0.1), ("fgsm", 0.2), ("pgd", 0.1))}
    assert all(m.ok and len(m.robust_mask) == 4 for m in store.matches(run))
