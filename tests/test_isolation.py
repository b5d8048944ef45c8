"""Faults stay in their match: with the local executor every match runs in a worker process that
the driver can kill, so an attack that exits, crashes, hangs past its time limit or keeps memory
fails its own match and the tournament goes on with a fresh worker."""
from __future__ import annotations

import ctypes
import os
import sys
import time
import types
from typing import ClassVar

import pytest
import torch

import arena
from arena.attack import FixedBudgetAttack
from arena.tournament.executors import InlineExecutor, LocalExecutor
from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store
from arena.tournament.workers import WorkerFailed, WorkerPool

HOARD: list[torch.Tensor] = []


class Exits(FixedBudgetAttack):
    """Test attack that ends its process with ``os._exit``."""

    id: ClassVar[str] = "exits"

    def run(self, model, x, y, eps, targets):
        os._exit(3)


class Quits(FixedBudgetAttack):
    """Test attack that calls ``sys.exit(0)``."""

    id: ClassVar[str] = "quits"

    def run(self, model, x, y, eps, targets):
        sys.exit(0)


class Swallows(FixedBudgetAttack):
    """Test attack whose ``except Exception`` swallows the time limit's alarm."""

    id: ClassVar[str] = "swallows"

    def run(self, model, x, y, eps, targets):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(0.02)
            except Exception:
                pass
        return x


class Segfaults(FixedBudgetAttack):
    """Test attack that crashes the interpreter."""

    id: ClassVar[str] = "segfaults"

    def run(self, model, x, y, eps, targets):
        ctypes.string_at(0)


class Hoards(FixedBudgetAttack):
    """Test attack that keeps 256 MB alive after it returns."""

    id: ClassVar[str] = "hoards"

    def run(self, model, x, y, eps, targets):
        HOARD.append(torch.ones(64 << 20))
        return x


def _register(register):
    for cls in (Exits, Quits, Swallows, Segfaults, Hoards):
        register(cls)


hostile = types.ModuleType("hostile")
hostile.arena_register_attacks = arena.hookimpl(_register)

CONFIG = {"name": "isolation", "dataset": "digits", "architecture": "digits-cnn", "samples": 40,
          "training": {"epochs": 2}, "match_timeout": 1.0, "defenses": [{"id": "standard"}],
          "attacks": [{"id": "fgsm", "name": "before", "budgets": [0.1]},
                      *({"id": i, "budgets": [0.1]} for i in ("exits", "quits", "swallows", "segfaults", "hoards")),
                      {"id": "fgsm", "name": "after", "budgets": [0.1]}]}


@pytest.fixture(scope="module", params=[1, 2], ids=["one-worker", "two-workers"])
def outcome(tmp_path_factory, request):
    """The hostile tournament with one worker process, and with two side by side (``--workers 2``:
    a fault fails its own match while the other worker's task goes on)."""
    tmp = tmp_path_factory.mktemp("iso")
    reg = arena.load_plugins(extra=[("hostile", hostile)])
    executor = LocalExecutor(workers=request.param)
    store = Store(tmp / "r.db")
    started = time.perf_counter()
    try:
        run_id = Runner(parse_tournament(CONFIG, reg), store, cache_dir=tmp / "c", progress=False,
                        executor=executor).run()
        workers = [pool.started for pool in executor.pools]
    finally:
        executor.close()
    rows = {r.attack: r for r in store.matches(run_id)}
    return rows, store.run(run_id), workers, time.perf_counter() - started


def test_each_fault_fails_its_own_match(outcome):
    rows, run, _, _ = outcome
    assert run.status == "finished"
    assert rows["exits"].status == "failed" and "exit status 3" in rows["exits"].error
    assert rows["quits"].status == "failed" and "SystemExit" in rows["quits"].error
    assert rows["segfaults"].status == "failed" and "SIGSEGV" in rows["segfaults"].error
    assert rows["swallows"].status == "timed-out" and "hard time limit" in rows["swallows"].error
    assert rows["hoards"].status == "ok"


def test_the_tournament_goes_on_with_fresh_workers(outcome):
    rows, _, workers, seconds = outcome
    assert rows["before"].status == rows["after"].status == "ok"
    assert rows["before"].robust_mask == rows["after"].robust_mask  # the model was not touched
    if len(workers) == 1:
        assert workers == [4]  # the first, and one after each of exits, segfaults, swallows
    else:  # each worker started, and a killed one replaced when its next task came (if one did)
        assert all(n >= 1 for n in workers) and 3 <= sum(workers) <= 5, workers
    assert seconds < 60  # the swallowing attack was killed, not waited for (it runs 60 s)


def test_memory_a_plugin_keeps_is_given_back_with_its_worker():
    pool = WorkerPool(max_rss=None)
    try:
        pool.run(time.sleep, (0,))
        baseline = pool.worker.rss_bytes()
        pool.max_rss = baseline + (128 << 20)
        pool.run(time.sleep, (0,))
        assert pool.started == 1  # an honest task keeps its worker
        pool.run(Hoards().run, (None, torch.zeros(1), None, None, None))
        assert pool.worker is None  # the hoarding worker was ended with its 256 MB
        pool.run(time.sleep, (0,))
        assert pool.started == 2
    finally:
        pool.close()


def heap_faults(cycles: int = 6) -> list[int]:
    """Minor page faults of each cycle of: two 20 MiB arrays written, then both freed (40 MiB at
    the heap's top, past glibc's default trim threshold once its mmap threshold has moved to
    20 MiB: the heap is trimmed and the pages faulted in again next cycle)."""
    import resource

    import numpy as np

    faults = []
    for _ in range(cycles):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = np.ones(5 << 20, dtype=np.float32)
        b = np.ones(5 << 20, dtype=np.float32)
        del b, a
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_workers_keep_their_freed_buffers_instead_of_faulting_them_in_again():
    """A worker reuses the buffers a task freed (arena.processes.steady_heap): after the first
    cycle, no cycle faults its pages in afresh; a process with glibc's defaults does, every cycle."""
    import subprocess

    script = "import tests.test_isolation as t; print(t.heap_faults())"
    default = eval(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                                  cwd=os.path.dirname(os.path.dirname(__file__))).stdout)
    assert min(default[1:]) > 200, default  # the pattern does fault with the defaults
    pool = WorkerPool()
    try:
        steady = pool.run(heap_faults, ())
    finally:
        pool.close()
    assert max(steady[1:]) < 50, steady


def test_a_hard_time_limit_kills_the_worker():
    pool = WorkerPool()
    try:
        started = time.perf_counter()
        with pytest.raises(WorkerFailed, match="hard time limit of 0.5 s") as info:
            pool.run(time.sleep, (30,), timeout=0.5)
        assert info.value.timed_out and time.perf_counter() - started < 10
        assert pool.run(sum, ([1, 2],)) == 3  # a fresh worker takes the next task
    finally:
        pool.close()


def test_inline_and_local_executors_agree(tmp_path):
    reg = arena.load_plugins()
    config = {**CONFIG, "match_timeout": None, "attacks": [{"id": "fgsm", "budgets": [0.1, 0.2]},
                                                           {"id": "pgd", "params": {"steps": 5}, "budgets": [0.1]}]}
    results = []
    for i, executor in enumerate((InlineExecutor(), LocalExecutor())):
        store = Store(tmp_path / f"r{i}.db")
        try:
            run_id = Runner(parse_tournament(config, reg), store, cache_dir=tmp_path / f"c{i}", progress=False,
                            executor=executor).run()
        finally:
            executor.close()
        results.append(sorted((r.attack, r.budget, r.robust_mask) for r in store.matches(run_id)))
    assert results[0] == results[1]


# ------------------------------------------------------------------ access by construction
class SnoopConfig(arena.plugin.PluginConfig):
    report: str


def _snoop(model, report: str, context=None) -> None:
    """Write down what a plugin can reach from where it runs: its process, what it was given
    (the model and the defense object), and every torch module that exists in that process."""
    import gc
    import json

    modules = sorted({type(o).__name__ for o in gc.get_objects() if isinstance(o, torch.nn.Module)})
    with open(report, "w") as fh:
        json.dump({"pid": os.getpid(), "given": type(model).__name__, "modules": modules,
                   "context": type(context).__name__}, fh)


class SnoopsBlackBox(FixedBudgetAttack):
    """Test black-box attack that looks for the model it must not see."""

    id: ClassVar[str] = "snoops-black-box"
    knowledge: ClassVar = arena.threat.Knowledge.BLACK_BOX
    Config = SnoopConfig

    def run(self, model, x, y, eps, targets):
        _snoop(model, self.config.report, self.context)
        model(x)
        return x


class SnoopsGrayBox(FixedBudgetAttack):
    """Test white-box attack, run gray-box, that looks for the defense it must not see."""

    id: ClassVar[str] = "snoops-gray-box"
    Config = SnoopConfig

    def run(self, model, x, y, eps, targets):
        _snoop(model, self.config.report)
        return x


def _report(path) -> dict:
    import json

    return json.loads(path.read_text())


@pytest.mark.parametrize("isolated", [True, False])
def test_a_black_box_attack_runs_where_no_model_exists(tmp_path, monkeypatch, isolated):
    monkeypatch.setenv("ARENA_ISOLATE_ATTACKS", "1" if isolated else "0")
    from arena import testing

    class Detector:  # a defense object holding a network of its own (e.g. a detector's embedding)
        def __init__(self):
            self.embedding = torch.nn.Bilinear(2, 2, 2)

    model, (x, y) = testing.trained_model(), testing.attack_batch(8)
    result = SnoopsBlackBox(report=str(tmp_path / "r.json"))(model, x, y, 0.1, seed=0, context=Detector())
    seen = _report(tmp_path / "r.json")
    assert torch.equal(result.queries, torch.ones(8, dtype=torch.long))  # counted by the harness here
    assert seen["context"] == "NoneType"  # a black-box attack is never given the defense object
    if isolated:
        assert seen["pid"] != os.getpid() and seen["given"] == "RemoteOracle" and seen["modules"] == []
    else:  # the same plugin in process finds the network: what isolation takes away
        assert seen["pid"] == os.getpid() and "FeatureClassifier" in seen["modules"]


class Threads(FixedBudgetAttack):
    """Test black-box attack that reports the threads it runs with, through its details."""

    id: ClassVar[str] = "threads"
    knowledge: ClassVar = arena.threat.Knowledge.BLACK_BOX

    def run(self, model, x, y, eps, targets):
        from arena.attack import RunOutput

        return RunOutput(x, details={"threads": torch.get_num_threads(), "pid": os.getpid(),
                                     "spins": os.environ.get("GOMP_SPINCOUNT")})


def test_the_attacker_process_takes_the_harness_threads_without_spinning(monkeypatch):
    from arena import isolation

    """Attacker and harness take turns: the attacker runs the harness's thread count for each
    task, and its OpenMP threads spin only briefly before they sleep (GOMP_SPINCOUNT)."""
    monkeypatch.setenv("ARENA_ISOLATE_ATTACKS", "1")
    from arena import testing

    model, (x, y) = testing.trained_model(), testing.attack_batch(4)
    before = torch.get_num_threads()
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            details = Threads()(model, x, y, 0.1, seed=0).details
            assert details["pid"] != os.getpid()
            assert details["threads"] == threads and details["spins"] == isolation.SPINS
    finally:
        torch.set_num_threads(before)


class DiesMidQueries(FixedBudgetAttack):
    """Test black-box attack that asks a few queries, then ends its process between two."""

    id: ClassVar[str] = "dies-mid-queries"
    knowledge: ClassVar = arena.threat.Knowledge.BLACK_BOX

    def run(self, model, x, y, eps, targets):
        for _ in range(3):
            model(x)
        os._exit(3)


def test_the_harness_stops_waiting_when_the_attacker_process_dies(monkeypatch):
    """The harness waits for the next query by polling the pipe for a few milliseconds before a
    blocking read; an attacker process that dies between queries ends that wait at once (the
    pipe's end-of-file), fails its attack only, and the next attack gets a fresh process."""
    monkeypatch.setenv("ARENA_ISOLATE_ATTACKS", "1")
    from arena import testing
    from arena.errors import AttackError

    model, (x, y) = testing.trained_model(), testing.attack_batch(4)
    start = time.monotonic()
    with pytest.raises(AttackError, match="'dies-mid-queries': its attacker process died"):
        DiesMidQueries()(model, x, y, 0.1, seed=0)
    assert time.monotonic() - start < 30  # a hang would sit here until pytest's own limits
    assert Threads()(model, x, y, 0.1, seed=0).details["pid"] != os.getpid()


def test_the_wait_for_a_query_returns_late_messages_and_ends_at_end_of_file():
    """``_wait`` polls for ``spin`` seconds, then blocks: a message arriving after the spin is
    still read, and a closed pipe raises EOFError instead of spinning or blocking for ever."""
    import multiprocessing as mp
    import pickle
    import threading

    from arena import isolation

    ours, theirs = mp.Pipe()
    late = threading.Timer(0.05, lambda: theirs.send_bytes(pickle.dumps(("query", 7))))
    late.start()
    assert isolation._wait(ours, spin=0.001) == ("query", 7)  # sent long after a 1 ms spin
    theirs.send_bytes(pickle.dumps(("done", 8)))
    assert isolation._wait(ours, spin=0.5) == ("done", 8)  # there already: no spin at all
    threading.Timer(0.05, theirs.close).start()
    with pytest.raises(EOFError):
        isolation._wait(ours, spin=0.001)
    late.join()


@pytest.mark.parametrize("isolated", [True, False])
def test_a_gray_box_attack_runs_where_the_defense_does_not_exist(tmp_path, monkeypatch, isolated):
    monkeypatch.setenv("ARENA_ISOLATE_ATTACKS", "1" if isolated else "0")
    snoops = types.ModuleType("snoops")
    snoops.arena_register_attacks = arena.hookimpl(_register_snoops)
    reg = arena.load_plugins(extra=[("snoops", snoops)])
    report = tmp_path / "r.json"
    config = {**CONFIG, "match_timeout": None,
              "defenses": [{"id": "standard"}, {"id": "feature-squeezing", "name": "squeezed", "on": "standard"}],
              "attacks": [{"id": "snoops-gray-box", "view": "gray-box", "params": {"report": str(report)},
                           "budgets": [0.1], "against": ["squeezed"]}]}
    executor = LocalExecutor()
    try:
        store = Store(tmp_path / "r.db")
        run_id = Runner(parse_tournament(config, reg), store, cache_dir=tmp_path / "c", progress=False,
                        executor=executor).run()
    finally:
        executor.close()
    (row,) = store.matches(run_id)
    seen = _report(report)
    assert row.status == "ok" and seen["given"] == "FeatureClassifier"
    if isolated:
        assert seen["modules"] and "SqueezedModel" not in seen["modules"]
    else:
        assert "SqueezedModel" in seen["modules"]


def _register_snoops(register):
    register(SnoopsGrayBox)


def test_workers_run_after_the_driver_used_threads(tmp_path):
    """With two OpenMP threads the driver's thread pool is up before the first worker starts;
    a worker forked from the driver then hung in its first convolution (seen with `make demo`).
    Workers come from a forkserver: the run finishes."""
    import subprocess

    (tmp_path / "t.toml").write_text(
        'name = "threads"\ndataset = "digits"\narchitecture = "digits-cnn"\nsamples = 20\n'
        '[training]\nepochs = 1\n[[defenses]]\nid = "standard"\n'
        '[[attacks]]\nid = "fgsm"\nbudgets = [0.1]\n')
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", "from arena.cli import main; main()", "run", str(tmp_path / "t.toml"),
                          "--db", str(tmp_path / "t.db"), "--cache-dir", str(tmp_path / "c"), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=180)
    assert run.returncode == 0, run.stderr[-500:]


def _a_tensor(device: str) -> torch.Tensor:
    return torch.arange(6, dtype=torch.float32, device=device)


def test_a_worker_answers_by_value(device):
    """A worker's result is a copy the driver owns, not memory shared with the worker (CUDA IPC
    memory lives only as long as the worker; the driver keeps entrants after their worker is
    replaced)."""
    pool = WorkerPool()
    try:
        value = pool.run(_a_tensor, (str(device),))
        pool._lost(pool.worker)  # the worker is gone: its memory with it
        assert not value.is_shared() and value.device.type == device.type
        assert value.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    finally:
        pool.close()


DRIVER_GONE = """
import multiprocessing as mp, time
from arena.tournament import workers
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=workers._serve, args=(theirs,))
    p.start()
    theirs.close()
    ours.send((time.sleep, (0.5,), {}, None))  # a task still running when the driver goes
    ours.close()
    p.join(30)
    print("exit", p.exitcode)
"""


def test_a_worker_whose_driver_is_gone_exits_without_a_traceback():
    """A driver killed by SIGKILL leaves its workers to find the pipe closed when they answer:
    each must exit quietly (a BrokenPipeError traceback, twice over, was printed on the user's
    terminal after a `kill -9` of `arena run`)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", DRIVER_GONE], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "exit 0", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr


HARNESS_GONE = """
import multiprocessing as mp
import torch
from arena import isolation, testing
if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    p = ctx.Process(target=isolation._serve, args=(theirs,))
    p.start()
    theirs.close()
    attack = testing.registry().make_attack("hopskipjump", max_iterations=2, init_evals=10)
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    isolation._send(ours, ("attack", 1, attack, x, y, None, None, "cpu", 0, "labels", None))
    ours.close()  # the harness is gone before the attack's first query
    p.join(60)
    print("exit", p.exitcode)
"""


def test_an_attacker_process_whose_harness_is_gone_exits_without_a_traceback():
    """The same for the attacker process: a harness killed (e.g. at its hard time limit) while
    its black-box attack runs leaves the attack's next query without a pipe; the attacker
    process ends quietly instead of printing the failed report of that failure."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", HARNESS_GONE], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "exit 0", done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
