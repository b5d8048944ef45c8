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
    assert len(_results(remote, remote_id)) == 2 * 3
    assert remote.run(remote_id).provenance["executor"] == "ray"
