"""Results survive failure: plugin faults fail their own match, a killed run resumes exactly."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from typing import ClassVar

import pytest

import arena
from arena.attack import FixedBudgetAttack
from arena.plugin import PluginConfig
from arena.threat import Knowledge
from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store


class Sleeper(FixedBudgetAttack):
    """Test attack that never finishes in time."""

    id: ClassVar[str] = "sleeper"

    def run(self, model, x, y, eps, targets):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return x


class NaNs(FixedBudgetAttack):
    """Test attack returning NaN."""

    id: ClassVar[str] = "nans"

    def run(self, model, x, y, eps, targets):
        return x * float("nan")


class Hungry(FixedBudgetAttack):
    """Test black-box attack that ignores its query budget."""

    id: ClassVar[str] = "hungry"
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX

    class Config(PluginConfig):
        max_queries: int | None = 10

    def run(self, model, x, y, eps, targets):
        for _ in range(20):
            model(x)
        return x


faulty = types.ModuleType("faulty")
faulty.arena_register_attacks = arena.hookimpl(lambda register: [register(c) for c in (Sleeper, NaNs, Hungry)])

BASE = {
    "name": "faults", "dataset": {"id": "digits"}, "architecture": {"id": "digits-cnn"},
    "samples": 30, "training": {"epochs": 2}, "defenses": [{"id": "standard"}],
}


def test_each_fault_fails_only_its_own_match(tmp_path):
    reg = arena.load_plugins(extra=[("faulty", faulty)])
    cfg = parse_tournament({**BASE, "match_timeout": 300.0, "attacks": [
        {"id": "sleeper", "budgets": [0.1], "timeout": 1.0}, {"id": "nans", "budgets": [0.1]},
        {"id": "hungry", "budgets": [0.1]}, {"id": "fgsm", "budgets": [0.1]}]}, reg)
    store = Store(tmp_path / "f.db")
    run_id = Runner(cfg, store, cache_dir=tmp_path / "c", progress=False).run()
    rows = {r.attack: r for r in store.matches(run_id)}
    assert rows["sleeper"].status == "timed-out" and "time limit of 1 s" in rows["sleeper"].error
    assert rows["nans"].status == "failed" and "NaN" in rows["nans"].error
    assert rows["hungry"].status == "failed"
    assert rows["hungry"].error.startswith("QueryBudgetExceeded: query budget of 10 per sample")
    assert rows["fgsm"].status == "ok" and rows["fgsm"].robust_accuracy is not None


TOURNAMENT = """
name = "killable"
dataset = "digits"
architecture = "digits-cnn"
samples = 100
batch_size = 40
[training]
epochs = 3
[[defenses]]
id = "standard"
[[defenses]]
id = "gda"
params = { copies = 2 }
[[attacks]]
id = "pgd"
params = { steps = 30 }
budgets = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
[[attacks]]
name = "pgd-l2"
id = "pgd"
params = { norm = "l2", steps = 30 }
budgets = [0.5, 1.0, 1.5, 2.0]
"""


def _rows(db):
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT run_id, defense, attack, budget, started, robust_mask FROM matches").fetchall()


def _arena(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "arena", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_killed_run_resumes_with_every_match_exactly_once(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(TOURNAMENT)
    db, cache = tmp_path / "k.db", str(tmp_path / "cache")
    proc = _arena("run", str(path), "--db", str(db), "--cache-dir", cache, "--quiet", cwd=tmp_path)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if db.exists() and len(_rows(db)) >= 3:
                break
        except sqlite3.OperationalError:  # the file made, its tables not yet
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r[1:4]: r for r in _rows(db)}
    assert 3 <= len(before) < 20
    done = _arena("run", str(path), "--db", str(db), "--cache-dir", cache, "--quiet", "--resume", cwd=tmp_path)
    assert done.wait(timeout=600) == 0, done.stderr.read()
    after = _rows(db)
    assert len(after) == 20 and len({r[1:4] for r in after}) == 20 and {r[0] for r in after} == {1}
    for row in after:
        if row[1:4] in before:
            assert row == before[row[1:4]]  # kept, not recomputed
    fresh = _arena("run", str(path), "--db", str(tmp_path / "fresh.db"), "--cache-dir", cache, "--quiet",
                   cwd=tmp_path)
    assert fresh.wait(timeout=600) == 0
    masks = {r[1:4]: r[5] for r in _rows(tmp_path / "fresh.db")}
    assert masks == {r[1:4]: r[5] for r in after}  # same seed, same file: identical results
