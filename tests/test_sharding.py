"""Sharded matches store exactly the rows of unsharded ones; --resume keeps finished shards;
batch_size = "auto" halves on out-of-memory errors; per-attack resources reach Ray's options."""
from __future__ import annotations

import sqlite3
import types
from typing import ClassVar

import pytest
import torch

import arena
from arena.attack import FixedBudgetAttack, RunOutput
from arena.plugin import PluginConfig
from arena.tournament import shards as shards_module
from arena.tournament.config import read_tournament
from arena.tournament.executors import InlineExecutor, LocalExecutor, RayExecutor, task_options
from arena.tournament.matches import out_of_memory
from arena.tournament.plan import parse_tournament
from arena.tournament.progress import Output
from arena.tournament.runner import Runner
from arena.tournament.shards import missing, ranges, shard_count
from arena.tournament.store import Store

CALLS = {"count": 0, "rows": [], "stop_at": None, "fail_at": None}


class Counted(FixedBudgetAttack):
    """Test attack: seeded uniform noise; counts its calls, reports details, stops the run (^C)
    at call ``CALLS["stop_at"]``."""

    id: ClassVar[str] = "counted"

    def run(self, model, x, y, eps, targets):
        CALLS["count"] += 1
        CALLS["rows"].append(len(x))
        if CALLS["stop_at"] is not None and CALLS["count"] >= CALLS["stop_at"]:
            raise KeyboardInterrupt
        if CALLS["fail_at"] is not None and CALLS["count"] == CALLS["fail_at"]:
            raise RuntimeError("kaboom")
        x_adv = x + eps * torch.empty_like(x).uniform_(-1, 1)
        return RunOutput(x_adv, torch.full((len(x),), 3), {"calls": 1, "rows": len(x), "name": "counted"})


class SmallMemoryConfig(PluginConfig):
    max_rows: int = 16


class SmallMemory(FixedBudgetAttack):
    """Test attack: seeded noise, but "out of memory" (torch.OutOfMemoryError) on more than
    ``max_rows`` rows."""

    id: ClassVar[str] = "small-memory"
    Config = SmallMemoryConfig

    def run(self, model, x, y, eps, targets):
        CALLS["rows"].append(len(x))
        if len(x) > self.config.max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} rows")
        return x + eps * torch.empty_like(x).uniform_(-1, 1).sign()


class Dies(FixedBudgetAttack):
    """Test attack: its worker process exits."""

    id: ClassVar[str] = "dies"

    def run(self, model, x, y, eps, targets):
        import os

        os._exit(3)


plugins = types.ModuleType("sharding_plugins")
plugins.arena_register_attacks = arena.hookimpl(
    lambda register: (register(Counted), register(SmallMemory), register(Dies)))

BASE = {"name": "shards", "dataset": "digits", "architecture": "mlp", "samples": 60, "batch_size": 8,
        "training": {"epochs": 2}, "judge_passes": 5,
        "defenses": [{"id": "standard"}, {"id": "nac", "on": "standard", "params": {"sigma": 0.2}}]}


@pytest.fixture(scope="module")
def reg():
    return arena.load_plugins(extra=[("sharding-plugins", plugins)])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(autouse=True)
def calls():
    CALLS.update(count=0, rows=[], stop_at=None, fail_at=None)
    return CALLS


def play(reg, data, db, cache, executor=None, resume=False, progress=False):
    store = Store(db)
    runner = Runner(parse_tournament(data, reg), store, cache_dir=cache, progress=progress,
                    executor=executor or InlineExecutor(), reuse=False)
    return store, runner.run(resume=resume)


def rows(store, run_id, drop=("shards", "executor", "config_hash")):
    """Each stored row's figures and provenance, less what says how it ran (and the seconds an
    attack reports, which no two runs share)."""
    out = {}
    for m in store.matches(run_id):
        provenance = {k: v for k, v in m.provenance.items() if k not in drop}
        out[(m.defense, m.attack, m.budget)] = (m.status, m.error, m.robust_accuracy, m.success_rate, m.mean_distance,
                                                m.mean_queries, m.robust_mask, provenance)
    return out


def sharded(store, run_id):
    return {(m.defense, m.attack, m.budget): m.provenance.get("shards") for m in store.matches(run_id)}


ATTACKS = [
    {"id": "pgd", "params": {"steps": 3}, "budgets": [0.1, 0.3]},
    {"name": "pgd-two-targets", "id": "pgd", "params": {"steps": 2}, "budgets": [0.3], "targets": 2},
    {"name": "fgsm-least-likely", "id": "fgsm", "budgets": [0.3], "targets": "least-likely"},
    {"id": "deepfool", "params": {"steps": 5}, "budgets": [0.5, 1.0]},  # minimal: one call, 3 rows
    {"id": "counted", "budgets": [0.2]},  # reports details and queries
]


def test_sharded_runs_store_the_rows_of_unsharded_ones(reg, cache, tmp_path, capsys):
    """Targeted (random draws replayed for earlier shards, least-likely), minimal, details and
    queries, a randomised defense judged over passes, saved examples: the same rows and examples
    with 3 shards per attack call; the progress counts each match once."""
    data = {**BASE, "attacks": ATTACKS, "save_examples": True}
    whole, whole_id = play(reg, {**data, "shards": 1}, tmp_path / "whole.db", cache)
    capsys.readouterr()
    split, split_id = play(reg, {**data, "shards": 3}, tmp_path / "split.db", cache,
                           progress=Output(mode="lines"))
    lines = [line for line in capsys.readouterr().err.splitlines() if "] match " in line]
    assert rows(whole, whole_id) == rows(split, split_id)
    counts = sharded(split, split_id)
    assert set(counts.values()) == {3}, [(k, v) for k, v in counts.items() if v != 3]
    assert set(sharded(whole, whole_id).values()) == {None}
    details = {m.attack: m.provenance.get("details") for m in split.matches(split_id) if m.defense == "standard"}
    assert details["counted"]["calls"] == 7 and details["counted"]["name"] == "counted"  # 52 samples / 8
    assert len(lines) == 2 * len(ATTACKS) and lines[-1].startswith(f"[{2 + 2 * len(ATTACKS)}/{2 + 2 * len(ATTACKS)} ")
    for pair in ("standard__pgd-two-targets", "nac__deepfool", "nac__fgsm-least-likely"):
        a = torch.load(whole.examples_dir(whole_id) / f"{pair}.pt", weights_only=True)
        b = torch.load(split.examples_dir(split_id) / f"{pair}.pt", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not split.shards(split_id)  # forgotten once the rows are stored


def test_a_cascade_shards_as_it_runs_whole(reg, cache, tmp_path):
    data = {**BASE, "cascade": True, "attacks": [
        {"id": "fgsm", "budgets": [0.1, 0.3]}, {"id": "pgd", "params": {"steps": 3}, "budgets": [0.1]},
        {"id": "deepfool", "params": {"steps": 5}, "budgets": [1.0]}]}
    whole, whole_id = play(reg, {**data, "shards": 1}, tmp_path / "whole.db", cache)
    split, split_id = play(reg, {**data, "shards": 2}, tmp_path / "split.db", cache)
    assert rows(whole, whole_id) == rows(split, split_id)
    counts = sharded(split, split_id)  # a call left with one batch of survivors runs whole
    assert counts[("standard", "pgd", 0.1)] == 2 and set(counts.values()) <= {2, None}


def test_the_local_executor_shards_gray_box_matches_alike(reg, cache, tmp_path):
    """Shards in killable worker processes, a gray-box attack in the attacker process."""
    data = {**BASE, "attacks": [{"id": "pgd", "params": {"steps": 2}, "budgets": [0.2]},
                                {"name": "gray", "id": "pgd", "params": {"steps": 2}, "budgets": [0.2],
                                 "view": "gray-box"}]}
    results = []
    pool = LocalExecutor()  # one worker for both runs: the attacker process starts once
    try:
        for count in (1, 2):
            store, run_id = play(reg, {**data, "shards": count}, tmp_path / f"{count}.db", cache, executor=pool)
            results.append(rows(store, run_id))
            assert set(sharded(store, run_id).values()) == ({None} if count == 1 else {2})
    finally:
        pool.close()
    assert results[0] == results[1]


def test_two_local_workers_store_the_rows_of_one_process(reg, cache, tmp_path):
    """Matches and their shards side by side in two worker processes (``arena run --workers 2``):
    the rows of an unsharded run in this process, targeted, minimal and randomised alike."""
    data = {**BASE, "attacks": [a for a in ATTACKS if a["id"] != "counted"]}  # counted: CALLS in this process
    whole, whole_id = play(reg, {**data, "shards": 1}, tmp_path / "whole.db", cache)
    pool = LocalExecutor(workers=2)
    try:
        split, split_id = play(reg, {**data, "shards": 2}, tmp_path / "split.db", cache, executor=pool)
        assert sum(p.started for p in pool.pools) == 2  # both workers ran tasks
    finally:
        pool.close()
    assert rows(whole, whole_id) == rows(split, split_id)
    assert set(sharded(split, split_id).values()) == {2}


def test_the_ray_executor_shards_alike(reg, cache, tmp_path):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    data = {**BASE, "defenses": [{"id": "standard"}],
            "attacks": [{"id": "pgd", "params": {"steps": 2}, "budgets": [0.1, 0.3]}]}
    pool = RayExecutor(num_cpus=1)
    try:
        assert ray.is_initialized() and pool.parallelism >= 1
        plan = parse_tournament(data, arena.load_plugins())  # Ray workers load the installed plugins
        results = []
        for count in (1, 3):
            store = Store(tmp_path / f"{count}.db")
            run_id = Runner(parse_tournament({**data, "shards": count}, plan.registry), store, cache_dir=cache,
                            progress=False, executor=pool, reuse=False).run()
            results.append(rows(store, run_id))
            assert set(sharded(store, run_id).values()) == ({None} if count == 1 else {3})
    finally:
        pool.close()
    assert results[0] == results[1]


def test_a_failing_or_dying_shard_fails_its_rows_as_unsharded(reg, cache, tmp_path, calls):
    """An attack that raises in batch 5 of the second call fails that call's rows with its error,
    sharded or not; a worker that dies fails the whole match."""
    data = {**BASE, "defenses": [{"id": "standard"}], "attacks": [{"id": "counted", "budgets": [0.1, 0.2]}]}
    results = []
    for count in (1, 3):
        calls.update(count=0, fail_at=12)  # 7 batches per call: the 5th batch of eps = 0.2
        store, run_id = play(reg, {**data, "shards": count}, tmp_path / f"{count}.db", cache)
        results.append(rows(store, run_id))
    assert results[0] == results[1]
    assert [v[:2] for v in results[1].values()] == [("ok", None), ("failed", "RuntimeError: kaboom")]
    data = {**data, "attacks": [{"id": "dies", "budgets": [0.1, 0.2]}]}
    pool = LocalExecutor()
    try:
        for count in (1, 3):
            store, run_id = play(reg, {**data, "shards": count}, tmp_path / f"d{count}.db", cache, executor=pool)
            assert {(m.status, m.error) for m in store.matches(run_id)} == {
                ("failed", "WorkerFailed: the worker process died (exit status 3)")}
            assert not store.shards(run_id)
    finally:
        pool.close()


def test_a_resumed_run_runs_only_the_missing_shards(reg, cache, tmp_path, calls):
    data = {**BASE, "defenses": [{"id": "standard"}], "batch_size": 10, "shards": 3,
            "attacks": [{"id": "counted", "budgets": [0.2]}]}
    whole, whole_id = play(reg, {**data, "shards": 1}, tmp_path / "whole.db", cache)
    batches = calls["count"]
    assert batches == 6  # 52 correctly classified samples in batches of 10: shards of 2 batches
    calls.update(count=0, stop_at=3)  # ^C in the first batch of the second shard
    with pytest.raises(KeyboardInterrupt):
        play(reg, data, tmp_path / "split.db", cache)
    store = Store(tmp_path / "split.db")
    (stored,) = store.shards(store.latest_run())
    assert (stored.call, stored.start, stored.stop) == ("0.2", 0, 2)
    assert store.run(store.latest_run()).status == "interrupted"
    store.close()
    calls.update(count=0, stop_at=None)
    split, split_id = play(reg, data, tmp_path / "split.db", cache, resume=True)
    assert calls["count"] == batches - 2  # only the missing shards ran
    assert rows(whole, whole_id) == rows(split, split_id)
    assert not split.shards(split_id)


@pytest.mark.parametrize("again, pieces", [(2, 3), (1, 2)])
def test_a_resumed_run_uses_stored_shards_whatever_it_splits_now(reg, cache, tmp_path, calls, again, pieces):
    """Resumed with 2 shards (planned [0, 3) [3, 6)) or 1 ([0, 6)), the stored [0, 2) is used and
    the rest of the plan runs: [2, 3) [3, 6), or [2, 6); one stored under another key (other
    samples attacked) is not used."""
    data = {**BASE, "defenses": [{"id": "standard"}], "batch_size": 10, "shards": 3,
            "attacks": [{"id": "counted", "budgets": [0.2]}]}
    calls.update(stop_at=3)
    with pytest.raises(KeyboardInterrupt):
        play(reg, data, tmp_path / "r.db", cache)
    with sqlite3.connect(tmp_path / "r.db") as conn:  # a stranger's shard: another key
        conn.execute("INSERT INTO shards SELECT run_id, defense, attack, call, 2, 4, 'other', result, seconds, "
                     "stored FROM shards")
    calls.update(count=0, stop_at=None)
    split, split_id = play(reg, {**data, "shards": again}, tmp_path / "r.db", cache, resume=True)
    assert calls["count"] == 4  # batches 2-5
    assert set(sharded(split, split_id).values()) == {pieces}
    assert not split.shards(split_id)
    whole, whole_id = play(reg, {**data, "shards": 1}, tmp_path / "whole.db", cache)
    assert rows(whole, whole_id) == rows(split, split_id)


def test_auto_batch_size_halves_on_out_of_memory(reg, cache, tmp_path, calls):
    """52 attacked samples: 52 rows are out of memory, 26 too, 13 fit; the rows equal those of a
    run with batch_size = 13, and provenance says 13."""
    data = {**BASE, "defenses": [{"id": "standard"}], "shards": 4,
            "attacks": [{"id": "small-memory", "params": {"max_rows": 16}, "budgets": [0.1, 0.2]}]}
    auto, auto_id = play(reg, {**data, "batch_size": "auto"}, tmp_path / "auto.db", cache)
    assert calls["rows"][:3] == [52, 26, 13]
    found = {m.budget: m.provenance.get("batch_size") for m in auto.matches(auto_id)}
    assert found == {0.1: 13, 0.2: 13} and set(sharded(auto, auto_id).values()) == {None}  # not sharded
    fixed, fixed_id = play(reg, {**data, "batch_size": 13}, tmp_path / "fixed.db", cache)
    assert rows(auto, auto_id, drop=("shards", "executor", "config_hash", "batch_size")) == \
        rows(fixed, fixed_id, drop=("shards", "executor", "config_hash"))
    tiny, tiny_id = play(reg, {**data, "batch_size": "auto",
                               "attacks": [{"id": "small-memory", "params": {"max_rows": 0}, "budgets": [0.1]}]},
                         tmp_path / "tiny.db", cache)
    (row,) = tiny.matches(tiny_id)  # even one row does not fit: the error, once
    assert row.status == "failed" and row.error.startswith("OutOfMemoryError: CUDA out of memory")


def test_out_of_memory_errors_are_told_apart():
    assert out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
                                      "memory: you tried to allocate 8589934592 bytes"))
    assert out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not out_of_memory(RuntimeError("shape mismatch")) and not out_of_memory(ValueError("out of memory"))


def test_auto_shards_follow_expected_cost_and_parallelism(reg, cache, tmp_path, monkeypatch):
    """On an executor running 2 tasks at once, the one expensive match is split (into 2: its
    share over a balanced task's), the cheap ones are not; on one worker nothing is."""
    monkeypatch.setattr(shards_module, "MIN_SHARD_UNITS", 0.0)

    class Wide(InlineExecutor):
        parallelism = 2

    data = {**BASE, "defenses": [{"id": "standard"}], "attacks": [
        {"id": "fgsm", "budgets": [0.1]}, {"id": "pgd", "params": {"steps": 40}, "budgets": [0.2]}]}
    store, run_id = play(reg, data, tmp_path / "wide.db", cache, executor=Wide())
    assert sharded(store, run_id) == {("standard", "fgsm", 0.1): None, ("standard", "pgd", 0.2): 2}
    store, run_id = play(reg, data, tmp_path / "one.db", cache)
    assert set(sharded(store, run_id).values()) == {None}


def test_shard_counts_and_ranges():
    assert shard_count(8, 1e9, 3, None) == 3  # never more shards than batches
    assert shard_count(2, 1.0, 1, None) == 1
    assert shard_count("auto", 100.0, 10, None) == 1  # one worker
    assert shard_count("auto", 100.0, 10, 200.0) == 1  # cheaper than a balanced task
    assert shard_count("auto", 1e6, 10, 3e5) == 4
    assert shard_count("auto", 2e4, 10, 1e3) == 2  # no shard under MIN_SHARD_UNITS
    assert ranges(7, 3) == [(0, 3), (3, 5), (5, 7)] and ranges(0, 3) == [(0, 0)] and ranges(2, 5) == [(0, 1), (1, 2)]
    assert missing([(0, 3), (3, 6)], [(0, 3)]) == ([(0, 3)], [(3, 6)])
    assert missing([(0, 3), (3, 6)], [(0, 2), (1, 4), (4, 6)]) == ([(0, 2), (4, 6)], [(2, 3), (3, 4)])
    assert missing([(0, 0)], []) == ([], [(0, 0)])


class FakeRay:
    """Enough of Ray for :meth:`RayExecutor.map`: records each task's options, runs it at once."""

    def __init__(self):
        self.submitted, self.results = [], {}

    def remote(self, **options):
        return lambda fn: FakeRemote(self, fn, options)

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return self.results[ref]


class FakeRemote:
    def __init__(self, ray, fn, options):
        self.ray, self.fn, self.opts = ray, fn, options

    def options(self, **options):
        return FakeRemote(self.ray, self.fn, options)

    def remote(self, *args):
        ref = object()
        self.ray.submitted.append(self.opts)
        self.ray.results[ref] = self.fn(*args)
        return ref


def test_per_attack_resources_reach_the_ray_task_options(reg, tmp_path):
    data = {**BASE, "resources": {"num_cpus": 0.5, "num_gpus": 0.25, "attacks": {"cw": {"num_gpus": 0.5},
                                                                               "fgsm": {"num_cpus": 2}}},
            "attacks": [{"name": "cw", "id": "cw-l2", "budgets": [1.0]}, {"id": "fgsm", "budgets": [0.1]},
                        {"id": "pgd", "budgets": [0.1]}]}
    plan = parse_tournament(data, reg)
    resources = plan.config.resources
    assert (resources.num_cpus, resources.num_gpus) == (0.5, 0.25)  # fractions as given
    runner = Runner(plan, Store(tmp_path / "r.db"), cache_dir=None, progress=False, executor=InlineExecutor())
    options = {a.label: runner._options(runner._spec(a, a.budgets, "standard")) for a in plan.attacks}
    assert options == {"cw": {"resources": {"num_gpus": 0.5}}, "fgsm": {"resources": {"num_cpus": 2.0}}, "pgd": {}}
    defaults = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "max_retries": 0}
    assert task_options(defaults, options["cw"]) == {"num_cpus": 0.5, "num_gpus": 0.5, "max_retries": 0}
    executor = RayExecutor.__new__(RayExecutor)  # no cluster: Ray's calls recorded
    executor.ray, executor.options, executor.started = FakeRay(), defaults, False
    executor.expiries = object()  # the hard limit's actor (never called: no task outlives its limit here)
    jobs = [(label, (label,), {**opts, "timeout": 10.0}) for label, opts in options.items()]
    assert dict(executor.map(str.upper, jobs)) == {"cw": "CW", "fgsm": "FGSM", "pgd": "PGD"}
    named = {**defaults, "name": "upper"}  # each task named after the function, not the executor's wrapper
    assert executor.ray.submitted == [{**named, "num_gpus": 0.5}, {**named, "num_cpus": 2.0}, named]


@pytest.mark.parametrize("extra, message", [
    ({"shards": 0}, 'shards: expected "auto" or a whole number (at least 1) of shards per attack call, got 0'),
    ({"shards": "autp"}, "(did you mean 'auto'?)"),
    ({"batch_size": "max"}, 'batch_size: expected a whole number or "auto", got "max"'),
    ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ({"resources": {"attacks": {"pgd-l2": {"num_gpus": 0.5}}}},
     "resources.attacks.pgd-l2: no attack entry named 'pgd-l2' (did you mean 'pgd-linf'?)"),
    ({"resources": {"attacks": {"pgd-linf": {"num_gpu": 0.5}}}},
     "resources.attacks: pgd-linf: num_gpu: unknown key (did you mean 'num_gpus'?)"),
    ({"resources": {"attacks": {"pgd-linf": {"num_cpus": 0}}}},
     "resources.attacks: pgd-linf: num_cpus: Input should be greater than 0"),
    ({"resources": {"attacks": {"pgd-linf": 2}}}, "resources.attacks: pgd-linf: expected a table"),
])
def test_config_errors_are_one_line(extra, message):
    data = {"dataset": "digits", "architecture": "mlp", "defenses": ["standard"],
            "attacks": [{"name": "pgd-linf", "id": "pgd", "budgets": [0.1]}], **extra}
    with pytest.raises(arena.ConfigError) as err:
        read_tournament(data, "mine.toml")
    text = str(err.value)
    assert text.startswith("mine.toml: ") and message in text and "\n" not in text


def test_the_digest_ignores_shards_and_unset_per_attack_resources():
    data = {"dataset": "digits", "architecture": "mlp", "defenses": ["standard"],
            "attacks": [{"id": "pgd", "budgets": [0.1]}]}
    plain = read_tournament(data, "t.toml").digest()
    assert read_tournament({**data, "shards": 4}, "t.toml").digest() == plain
    assert read_tournament({**data, "resources": {"attacks": {}}}, "t.toml").digest() == plain
    assert read_tournament({**data, "resources": {"attacks": {"pgd": {"num_gpus": 1}}}}, "t.toml").digest() != plain
    assert read_tournament({**data, "batch_size": "auto"}, "t.toml").digest() != plain
