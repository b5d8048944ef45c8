"""The Ray executor on a local cluster gives the same results as the local executor."""
from __future__ import annotations

import pytest

import arena
from arena.tournament.plan import parse_tournament
from arena.tournament.executors import RayExecutor
from arena.tournament.runner import Runner
from arena.tournament.store import Store

ray = pytest.importorskip("ray", reason="the ray extra is not installed")

CONFIG = {
    "name": "ray", "dataset": "digits", "architecture": "digits-cnn", "samples": 40,
    "training": {"epochs": 2},
    "defenses": [{"id": "standard"}, {"id": "gda", "params": {"copies": 2}}],
    "attacks": [{"id": "fgsm", "budgets": [0.1, 0.3]}, {"id": "pgd", "params": {"steps": 5}, "budgets": [0.1]}],
    # a model metric, and a match metric that needs the training split shared with the tasks
    "metrics": [{"id": "loss-sensitivity"}, {"id": "training-set-distance"}],
}


def _results(store, run_id):
    return {(r.defense, r.attack, r.budget): (r.status, r.robust_mask) for r in store.matches(run_id)}


@pytest.mark.slow
def test_ray_and_local_executors_agree(tmp_path):
    reg = arena.load_plugins()
    cfg = parse_tournament(CONFIG, reg)
    local = Store(tmp_path / "local.db")
    local_id = Runner(cfg, local, cache_dir=tmp_path / "c1", progress=False).run()
    pool = RayExecutor(num_cpus=1)
    try:
        remote = Store(tmp_path / "ray.db")
        remote_id = Runner(cfg, remote, cache_dir=tmp_path / "c2", progress=False, executor=pool).run()
        workers = {n["NodeID"] for n in ray.nodes()}
    finally:
        pool.close()
    assert workers
    assert _results(local, local_id) == _results(remote, remote_id)
    measured = {(v.metric, v.defense, v.attack, v.budget): (v.status, round(v.value, 5))
                for v in remote.metrics(remote_id)}
    assert measured == {(v.metric, v.defense, v.attack, v.budget): (v.status, round(v.value, 5))
                        for v in local.metrics(local_id)}
    assert len(measured) == 2 + 2 * 3 and all(status == "ok" for status, _ in measured.values())
    assert len(_results(remote, remote_id)) == 2 * 3
    assert remote.run(remote_id).provenance["executor"] == "ray"


def _weights(prepared):
    entrant = prepared.entrant
    return entrant.cache_key, {k: v.detach().cpu().clone() for k, v in entrant.model.state_dict().items()}


@pytest.mark.slow
def test_ray_and_local_training_agree_on_a_cache_key():
    """The same cache key means the same weights, bit for bit, whichever executor trained them:
    a Ray worker trains with one intra-op thread (Ray sets OMP_NUM_THREADS to the task's CPUs),
    the driver with however many it has, and the thread count changes the float sums."""
    import dataclasses

    import torch

    from arena.tournament.entrants import EntrantSpec, prepare, providers

    reg = arena.load_plugins()
    plan = parse_tournament({**CONFIG, "defenses": [{"id": "standard"}]}, reg)
    data = plan.dataset.build().load(plan.seed)
    evaluation = data.test.take(plan.config.samples, plan.seed)
    d = plan.defenses[0]
    extra = {}
    if "code" in {f.name for f in dataclasses.fields(EntrantSpec)}:
        extra["code"] = providers(reg, defenses=d.id, architectures=d.architecture.id, datasets=plan.dataset.id)
    spec = EntrantSpec(defense=d, dataset=plan.dataset, seed=plan.seed, batch_size=plan.config.batch_size,
                       cache_root=None, **extra)
    pool = RayExecutor(num_cpus=1)
    try:
        ((_, remote),) = list(pool.map(prepare, [("standard", (spec, data, evaluation))]))
    finally:
        pool.close()
    assert not isinstance(remote, BaseException), remote
    remote_key, remote_weights = _weights(remote)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):  # the driver's thread count as the user's machine has it
            torch.set_num_threads(n)
            key, weights = _weights(prepare(spec, data, evaluation))
            same = weights.keys() == remote_weights.keys() and all(
                torch.equal(weights[k], remote_weights[k]) for k in weights)
            assert key != remote_key or same, f"{n} threads: same key {key}, different weights"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_ray_workers_keep_their_freed_buffers():
    """A Ray task's worker reuses the buffers a task freed, as a local worker does (the probe and
    its figures for glibc's defaults: tests/test_isolation.py)."""
    from ray import cloudpickle

    import tests.test_isolation as isolation_tests

    cloudpickle.register_pickle_by_value(isolation_tests)  # the probe travels by value to the worker
    pool = RayExecutor(num_cpus=1)
    try:
        ((_, faults),) = list(pool.map(isolation_tests.heap_faults, [("probe", ())]))
    finally:
        pool.close()
        cloudpickle.unregister_pickle_by_value(isolation_tests)
    assert not isinstance(faults, BaseException), faults
    assert max(faults[1:]) < 50, faults


@pytest.mark.slow
def test_a_ray_task_past_its_hard_time_limit_is_killed_and_the_next_runs():
    """The hard limit holds on Ray as in a local worker: a task still running at its ``timeout``
    (an attack that swallows its soft limit's exception, or never returns) ends its Ray worker and
    yields a timed-out WorkerFailed; a task that ends its worker by itself is a plain failure; the
    other tasks, and the next map, run."""
    import os
    import time

    from arena.processes import WorkerFailed

    pool = RayExecutor(num_cpus=1)
    try:
        started = time.monotonic()
        results = dict(pool.map(time.sleep, [("hang", (120,), {"timeout": 2.0}), ("quick", (0,), {"timeout": 60})]))
        waited = time.monotonic() - started
        crashed = dict(pool.map(os._exit, [("exit", (3,), {"timeout": 60})]))
        after = dict(pool.map(sum, [("sum", ([1, 2],), {"timeout": 60})]))
    finally:
        pool.close()
    assert isinstance(results["hang"], WorkerFailed) and results["hang"].timed_out, results["hang"]
    assert "hard time limit of 2 s" in str(results["hang"])
    assert waited < 60  # killed at its limit, not waited for the 120 s it sleeps
    assert results["quick"] is None
    assert isinstance(crashed["exit"], WorkerFailed) and not crashed["exit"].timed_out, crashed["exit"]
    assert after == {"sum": 3}
