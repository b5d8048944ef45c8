"""A sharded match on a local Ray cluster (or the local executor's worker processes) against the same match unsharded.

One expensive match (PGD without early stop on the digits CNN, every test sample in many
batches) is the whole tournament, so an unsharded run keeps one Ray worker busy and leaves the
other idle; with ``shards = "auto"`` the match's only attack call is split into as many shards as
the cluster runs tasks at once (two on two CPUs). The script starts a local Ray cluster with
``--workers`` CPUs, warms it up (the model is trained into a temporary cache, every worker
imports torch and the plugins), then times whole runs, sharded and unsharded interleaved,
checks that both store identical rows (everything but how they ran: shards, wall times) and
prints the wall times and their ratio (target ≤ 0.6 on two cores), and the attack's own seconds
(a sharded row's are its shards' added up: about the unsharded figure when the cores were free).

    .venv/bin/python benchmarks/sharding.py [--workers 2] [--repeats 2] [--steps 800] [--executor local]

``--executor local`` runs the same comparison in the local executor's worker processes
(``arena run --workers N``: each worker with 1/N of the torch threads), and adds a third row: the
match unsharded in one worker that has every thread (``--workers 1``, the default), which is what
sharding has to beat there, intra-op threads against shards.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import arena
from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

MATCH = {
    "name": "sharding", "dataset": "digits", "architecture": "digits-cnn", "samples": 450, "batch_size": 30,
    "training": {"epochs": 4}, "defenses": [{"id": "standard"}],
    "attacks": [{"id": "pgd", "params": {"steps": 800, "early_stop": False}, "budgets": [0.1]}],
}


def timed_run(data: dict, registry: arena.Registry, executor, work: Path, cache: Path) -> tuple[float, list]:
    """A fresh run (nothing reused) of ``data`` into a new database; its wall time and rows."""
    store = Store(work / f"r{time.perf_counter_ns()}.db")
    start = time.perf_counter()
    run_id = Runner(parse_tournament(data, registry), store, cache_dir=cache, progress=False, executor=executor,
                    reuse=False).run()
    seconds = time.perf_counter() - start
    rows = store.matches(run_id)
    store.close()
    return seconds, rows


def figures(rows: list) -> list[tuple]:
    """What a row says of the match, less how it ran (shards, seconds)."""
    return [(r.defense, r.attack, r.budget, r.status, r.robust_accuracy, r.success_rate, r.mean_distance,
             r.mean_queries, r.robust_mask, r.provenance.get("details")) for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster (one task each)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=800, help="PGD steps (the match's cost)")
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    args = parser.parse_args()
    data = {**MATCH, "attacks": [{**MATCH["attacks"][0], "params": {**MATCH["attacks"][0]["params"],
                                                                    "steps": args.steps}}]}
    registry = arena.load_plugins()
    if args.executor == "local":
        return local(args, data, registry)
    try:
        import ray
    except ImportError:
        print("the ray extra is not installed: pip install 'adversarial-arena[ray]'")
        return 1
    from arena.tournament.executors import RayExecutor

    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(num_cpus=1)  # joins the cluster above; one CPU (one torch thread) per task
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work, cache = Path(tmp), Path(tmp) / "cache"
            warm = {**data, "samples": 120, "shards": args.workers,
                    "attacks": [{**data["attacks"][0], "params": {"steps": 2}}]}
            timed_run(warm, registry, executor, work, cache)  # trains the model, starts every worker
            times: dict[str, list[float]] = {"unsharded": [], "sharded": []}
            work_s: dict[str, list[float]] = {"unsharded": [], "sharded": []}
            rows: dict[str, list] = {}
            for _ in range(args.repeats):  # interleaved, so that background load hits both alike
                for name, shards in (("unsharded", 1), ("sharded", "auto")):
                    seconds, rows[name] = timed_run({**data, "shards": shards}, registry, executor, work, cache)
                    times[name].append(seconds)
                    work_s[name].append(sum(r.wall_seconds or 0.0 for r in rows[name]))
    finally:
        executor.close()
        ray.shutdown()
    same = figures(rows["unsharded"]) == figures(rows["sharded"])
    (row,) = rows["sharded"]
    attacked = row.provenance.get("shards")
    whole, split = statistics.median(times["unsharded"]), statistics.median(times["sharded"])
    print(f"PGD {args.steps} steps (no early stop) on digits-cnn, {MATCH['samples']} samples in batches of "
          f"{MATCH['batch_size']}; local Ray cluster of {args.workers} CPUs, one per task; load average "
          f"{os.getloadavg()[0]:.2f}; median of {args.repeats} runs each")
    print(f"unsharded  {whole:7.2f} s   ({', '.join(f'{t:.2f}' for t in times['unsharded'])}; attack "
          f"{', '.join(f'{t:.2f}' for t in work_s['unsharded'])} s)")
    print(f"sharded    {split:7.2f} s   ({', '.join(f'{t:.2f}' for t in times['sharded'])}; attack "
          f"{', '.join(f'{t:.2f}' for t in work_s['sharded'])} s over its shards; shards = \"auto\" chose {attacked})")
    print(f"ratio      {split / whole:7.2f}    (target <= 0.6)")
    print(f"rows       {'identical' if same else 'DIFFERENT'}: robust accuracy {row.robust_accuracy:.4f}, "
          f"success rate {row.success_rate:.4f}, mean distance {row.mean_distance}")
    return 0 if same else 1


def local(args: argparse.Namespace, data: dict, registry: arena.Registry) -> int:
    """The comparison in the local executor's worker processes: ``--workers`` of them, unsharded
    and sharded, and one worker with every thread, unsharded."""
    import torch

    from arena.tournament.executors import LocalExecutor

    executors = {"one worker": LocalExecutor(), "workers": LocalExecutor(workers=args.workers)}
    cases = (("one worker, unsharded", "one worker", 1), ("unsharded", "workers", 1), ("sharded", "workers", "auto"))
    times: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    work_s: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    rows: dict[str, list] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            warm = {**data, "samples": 120, "shards": args.workers,
                    "attacks": [{**data["attacks"][0], "params": {"steps": 2}}]}
            for executor in executors.values():  # its own cache: the model trained with its workers' threads
                timed_run(warm, registry, executor, work, work / f"cache-{id(executor)}")
            for _ in range(args.repeats):  # interleaved, so that background load hits every case alike
                for name, which, shards in cases:
                    executor = executors[which]
                    seconds, rows[name] = timed_run({**data, "shards": shards}, registry, executor, work,
                                                    work / f"cache-{id(executor)}")
                    times[name].append(seconds)
                    work_s[name].append(sum(r.wall_seconds or 0.0 for r in rows[name]))
    finally:
        for executor in executors.values():
            executor.close()
    threads = torch.get_num_threads()
    print(f"PGD {args.steps} steps (no early stop) on digits-cnn, {MATCH['samples']} samples in batches of "
          f"{MATCH['batch_size']}; local executor, {args.workers} workers of {max(1, threads // args.workers)} "
          f"torch thread(s) against one worker of {threads}; load average {os.getloadavg()[0]:.2f}; median of "
          f"{args.repeats} runs each")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, _, _ in cases:
        print(f"{name:22s} {medians[name]:7.2f} s   ({', '.join(f'{t:.2f}' for t in times[name])}; attack "
              f"{', '.join(f'{t:.2f}' for t in work_s[name])} s)")
    (row,) = rows["sharded"]
    print(f"ratio sharded / unsharded, same workers   {medians['sharded'] / medians['unsharded']:5.2f}  (target <= 0.6)")
    print(f"ratio sharded / one worker of {threads} threads {medians['sharded'] / medians['one worker, unsharded']:5.2f}"
          f"  (shards = \"auto\" chose {row.provenance.get('shards')})")
    same = figures(rows["unsharded"]) == figures(rows["sharded"])
    print(f"rows       {'identical' if same else 'DIFFERENT'} (sharded and unsharded on the same workers; one worker "
          f"of {threads} threads trains and attacks with other float sums): robust accuracy "
          f"{row.robust_accuracy:.4f}, success rate {row.success_rate:.4f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
