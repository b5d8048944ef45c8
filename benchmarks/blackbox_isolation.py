"""What running a black-box attack where the model does not exist costs: HopSkipJump and the
substitute attack through the harness, in process (``ARENA_ISOLATE_ATTACKS=0``, the path every
black-box attack took before) against the attacker process (the default), on the same model,
samples, settings and seed, cases interleaved, median of the repeats. The attacker process is
started once, before the timed runs; its start-up is reported apart. Strength is reported next to
speed: both paths must give the same adversarial examples and query counts. This process is the
harness, as a tournament's worker process is, and sets up its heap as a worker does
(:func:`arena.processes.steady_heap`; ``--default-heap`` leaves glibc's defaults).

    .venv/bin/python benchmarks/blackbox_isolation.py --repeats 5
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from arena import isolation, testing
from arena.processes import steady_heap

CASES = {
    "hopskipjump": ("hopskipjump", {"max_iterations": 10, "init_evals": 100}, None),
    "substitute": ("substitute", {"rounds": 3, "epochs": 5, "seed_size": 50,
                                  "inner": {"id": "pgd", "params": {"steps": 10}}}, 0.3),
}


def timed(attack, model, x, y, eps, isolated: bool):
    os.environ[isolation.SWITCH] = "1" if isolated else "0"
    start = time.perf_counter()
    result = attack(model, x, y, eps, seed=0)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--default-heap", action="store_true", help="glibc's malloc defaults in the harness (the attacker process keeps its steady heap)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heap = "glibc's default heap" if args.default_heap or not steady_heap() else "steady heap"
    model, (x, y) = testing.trained_model(), testing.attack_batch(args.samples)
    registry = testing.registry()
    start = time.perf_counter()
    isolation.host()
    print(f"attacker process start-up: {time.perf_counter() - start:.2f} s (once per worker)")
    for name, (attack_id, params, eps) in CASES.items():
        attack = registry.make_attack(attack_id, **params)
        timed(attack, model, x, y, eps, True)  # the attack's module imported in the attacker process
        times: dict[bool, list[float]] = {False: [], True: []}
        results = {}
        for _ in range(args.repeats):
            for isolated in (False, True):
                seconds, results[isolated] = timed(attack, model, x, y, eps, isolated)
                times[isolated].append(seconds)
        inproc, remote = statistics.median(times[False]), statistics.median(times[True])
        same = torch.equal(results[False].x_adv, results[True].x_adv) and \
            torch.equal(results[False].queries, results[True].queries)
        success = [float(results[k].success.float().mean()) for k in (False, True)]
        print(f"{name} ({args.samples} samples, {args.threads} threads, {args.repeats} repeats, {heap}, "
              f"mean queries {float(results[True].queries.float().mean()):.0f})")
        print("  in process       " + "  ".join(f"{t:6.2f}" for t in times[False]) + f"   median {inproc:6.2f} s")
        print("  attacker process " + "  ".join(f"{t:6.2f}" for t in times[True]) + f"   median {remote:6.2f} s")
        print(f"  ratio {remote / inproc:.3f}; success {success[0]:.3f} / {success[1]:.3f}; identical examples "
              f"and queries: {same}")


if __name__ == "__main__":
    main()
