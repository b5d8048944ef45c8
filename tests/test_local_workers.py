"""The local executor with several worker processes (``arena run --workers N``): tasks run side by
side, a task that kills its worker fails alone, each worker takes its share of the threads, and
``--workers`` is refused where it means nothing."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from arena.cli import cli
from arena.processes import WorkerFailed
from arena.tournament.executors import LocalExecutor
from arena.tournament.workers import WorkerPool


def meet(mine: str, other: str, seconds: float = 30.0) -> bool:
    """Leave the file ``mine``, then wait for ``other``: True when it came (both tasks ran at
    once), False after ``seconds``."""
    Path(mine).touch()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if Path(other).exists():
            return True
        time.sleep(0.01)
    return False


def threads() -> int:
    return torch.get_num_threads()


def test_two_workers_run_two_tasks_at_once(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    executor = LocalExecutor(workers=2)
    try:
        assert executor.parallelism == 2
        results = dict(executor.map(meet, [("a", (a, b)), ("b", (b, a))]))
    finally:
        executor.close()
    assert results == {"a": True, "b": True}  # one worker would have run them one after the other


def test_one_worker_runs_them_one_after_the_other(tmp_path):
    """The control of the test above: with one worker, the first task waits in vain."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    executor = LocalExecutor()
    try:
        results = dict(executor.map(meet, [("a", (a, b, 1.0)), ("b", (b, a, 1.0))]))
    finally:
        executor.close()
    assert results == {"a": False, "b": True}


def test_a_task_that_kills_its_worker_or_hangs_fails_alone():
    """Among tasks in flight on two workers: one exits its process, one runs past its hard time
    limit; each fails with its own error, every other task gets its result, and the dead and the
    killed worker are replaced."""
    executor = LocalExecutor(workers=2)
    jobs = [("exit", (os._exit, 3)), *((i, (sum, [i, 1])) for i in range(3)),
            ("hang", (time.sleep, 60), {"timeout": 0.5}), *((i, (sum, [i, 1])) for i in range(3, 6))]
    try:
        results = dict(executor.map(_call, jobs))
    finally:
        executor.close()
    exited, hung = results.pop("exit"), results.pop("hang")
    assert isinstance(exited, WorkerFailed) and "exit status 3" in str(exited)
    assert isinstance(hung, WorkerFailed) and hung.timed_out
    assert results == {i: i + 1 for i in range(6)}
    assert sum(pool.started for pool in executor.pools) >= 3  # a dead worker was replaced for a later task


def _call(fn, *args):
    return fn(*args)


def test_a_map_left_early_leaves_no_task_behind():
    """An interrupted run stops reading the results with a task in flight: that task's worker is
    killed (not waited for, not left running), and the next map has every worker to itself."""
    executor = LocalExecutor(workers=2)
    try:
        results = executor.map(_call, [("fast", (sum, [1, 2])), ("slow", (time.sleep, 60))])
        assert next(results) == ("fast", 3)
        started = time.monotonic()
        results.close()
        assert time.monotonic() - started < 5  # the 60 s task was killed, not joined for 10 s
        assert dict(executor.map(sum, [(i, ([i, 1],)) for i in range(4)])) == {i: i + 1 for i in range(4)}
        assert not any(pool.busy for pool in executor.pools)
    finally:
        executor.close()


def test_each_worker_takes_its_share_of_the_threads():
    pool = WorkerPool(threads=3)
    try:
        assert pool.run(threads, ()) == 3
    finally:
        pool.close()
    executor = LocalExecutor(workers=2)
    try:
        assert {pool.threads for pool in executor.pools} == {max(1, torch.get_num_threads() // 2)}
    finally:
        executor.close()
    assert LocalExecutor().pools[0].threads is None  # one worker: torch's default, as before


@pytest.mark.parametrize("args, message", [
    (["--workers", "2", "--executor", "ray"], "--workers 2 is for the local executor; a Ray cluster runs"),
    (["--workers", "3", "--executor", "inline"], "--workers 3 is for the local executor; the inline executor"),
    (["--workers", "0"], "0 is not in the range x>=1"),
])
def test_workers_is_refused_where_it_means_nothing(tmp_path, args, message):
    file = tmp_path / "t.toml"
    file.write_text('name = "t"\ndataset = "digits"\narchitecture = "mlp"\n[[defenses]]\nid = "standard"\n'
                    '[[attacks]]\nid = "fgsm"\nbudgets = [0.1]\n')
    result = CliRunner().invoke(cli, ["run", str(file), "--db", str(tmp_path / "r.db"), *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "r.db").exists()


def test_the_python_api_refuses_workers_for_another_executor(tmp_path):
    import arena
    from arena.errors import ConfigError

    tournament = arena.Tournament.from_dict({"name": "t", "dataset": "digits", "architecture": "mlp",
                                             "defenses": [{"id": "standard"}],
                                             "attacks": [{"id": "fgsm", "budgets": [0.1]}]})
    with pytest.raises(ConfigError, match="workers=2 is for the local executor"):
        tournament.run(db=tmp_path / "r.db", executor="inline", workers=2)
    with pytest.raises(ConfigError, match="workers: expected a whole number"):
        LocalExecutor(workers=0)
    assert not (tmp_path / "r.db").exists()
