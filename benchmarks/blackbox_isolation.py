"""What running a black-box attack where the model does not exist costs: HopSkipJump and the
substitute attack through the harness, in process (``ARENA_ISOLATE_ATTACKS=0``, the path every
black-box attack took before) against the attacker process (the default), on the same model,
samples, settings and seed, cases interleaved, median of the repeats. The attacker process is
timed twice: as it runs (the harness polls for the next query for ``isolation.WAIT_SPIN``
seconds before it blocks) and with a plain blocking wait (``WAIT_SPIN = 0``), the harness's CPU
time beside each wall time. The attacker process is started once, before the timed runs; its
start-up (with the first, untimed attack) is reported apart. Strength is reported next to
speed: both paths must give the same adversarial examples and query counts. This process is the
harness, as a tournament's worker process is, and sets up its heap as a worker does
(:func:`arena.processes.steady_heap`; ``--default-heap`` leaves glibc's defaults).

    .venv/bin/python benchmarks/blackbox_isolation.py --repeats 7
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
    # the plugin's own schedule (6 rounds of 10 epochs): a few seconds, where the small case
    # above (a quarter of a second) mostly measures what each attack costs to send and answer
    "substitute-defaults": ("substitute", {"inner": {"id": "pgd", "params": {"steps": 10}}}, 0.3),
}
MODES = {"in process": (False, 0.0), "attacker process": (True, isolation.WAIT_SPIN),
         "blocking wait": (True, 0.0)}


def timed(attack, model, x, y, eps, mode: str):
    isolated, isolation.WAIT_SPIN = MODES[mode]
    os.environ[isolation.SWITCH] = "1" if isolated else "0"
    start, cpu = time.perf_counter(), time.process_time()
    result = attack(model, x, y, eps, seed=0)
    return time.perf_counter() - start, time.process_time() - cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--default-heap", action="store_true", help="glibc's malloc defaults in the harness (the attacker process keeps its steady heap)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heap = "glibc's default heap" if args.default_heap or not steady_heap() else "steady heap"
    model, (x, y) = testing.trained_model(), testing.attack_batch(args.samples)
    registry = testing.registry()
    start = time.perf_counter()
    isolation.host()  # starts the process; its interpreter imports torch while this one goes on
    for name in args.cases:
        attack_id, params, eps = CASES[name]
        attack = registry.make_attack(attack_id, **params)
        timed(attack, model, x, y, eps, "attacker process")  # its module imported over there
        if name == args.cases[0]:
            print(f"attacker process start-up and first, untimed {name}: {time.perf_counter() - start:.2f} s "
                  "(once per worker)")
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
        results = {}
        for _ in range(args.repeats):
            for mode in MODES:
                seconds, cpu, results[mode] = timed(attack, model, x, y, eps, mode)
                times[mode].append(seconds)
                cpus[mode].append(cpu)
        isolation.WAIT_SPIN = MODES["attacker process"][1]
        first = results["in process"]
        same = all(torch.equal(first.x_adv, r.x_adv) and torch.equal(first.queries, r.queries)
                   for r in results.values())
        success = " / ".join(f"{float(r.success.float().mean()):.3f}" for r in results.values())
        print(f"{name} ({args.samples} samples, {args.threads} threads, {args.repeats} repeats, {heap}, "
              f"mean queries {float(first.queries.float().mean()):.0f})")
        base = statistics.median(times["in process"])
        for mode in MODES:
            wall = statistics.median(times[mode])
            print(f"  {mode:<17}" + "  ".join(f"{t:6.2f}" for t in times[mode]) + f"   median {wall:6.2f} s, "
                  f"ratio {wall / base:.3f}; harness CPU {statistics.median(cpus[mode]):6.2f} s")
        print(f"  success {success}; identical examples and queries: {same}")


if __name__ == "__main__":
    main()
