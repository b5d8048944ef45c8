"""Square Attack: the arena's plugin against AutoAttack's ``SquareAttack`` (pyautoattack), side by side.

One process, the benchmark model of ``common.py`` (a small CNN on Fashion-MNIST, cached under
``.arena/bench/``), the same correctly classified test samples, the same torch thread count,
L∞ at ε = 0.1 and L2 at ε = 1.0, the same ``p_init`` and the same number of search iterations:
the reference runs ``n_queries`` = ``--queries`` iterations after its initial point (its model
calls per sample: one clean prediction, the start, the iterations and one final check); the arena
gets ``max_queries = --queries + 2`` (its clean check, the start and the same number of
iterations, hence the same p schedule). Every output is judged by ``common.judge`` on the same
model: robust accuracy on each side, the samples only one side breaks, mean queries per sample
(the arena: its harness's ledger; the reference: the rows a counting wrapper saw, over the
samples), samples/s (median wall clock over ``--repeats``, tools interleaved in each round) and
the ratio arena ÷ reference, and samples per CPU second (this process's, plus the attacker
process's for the isolated arena: on a shared machine the steadier figure, since waiting for a
core is not counted).

The arena runs a black-box attack in a separate attacker process by default (every oracle call
crosses a pipe): that is the product as users run it, and the target is set on it. The same
attack in process (``ARENA_ISOLATE_ATTACKS=0``) is timed too, for information.

    python benchmarks/square_reference.py [--samples 100] [--queries 1000] [--threads 1]
                                          [--repeats 3] [--norms linf,l2] [--seeds 1]

Targets: robust accuracy no higher than the reference's, samples/s no lower. Needs pyautoattack
(``import autoattack``, or ``pyautoattack`` as some wheels name it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import correct_samples, setup, judge, load_average, time_tools  # noqa: E402

from arena import isolation  # noqa: E402

EPS = {"linf": 0.1, "l2": 1.0}


def reference_class():
    try:
        from autoattack.square import SquareAttack
    except ImportError:
        from pyautoattack.square import SquareAttack
    return SquareAttack


class Counting(torch.nn.Module):
    """The model, counting every row the reference evaluates."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.model(x)


def reference_tool(model, norm: str, eps: float, queries: int, p_init: float, seed: int, record: dict):
    counting = Counting(model).eval()
    attack = reference_class()(counting, norm={"linf": "Linf", "l2": "L2"}[norm], n_queries=queries,
                               eps=eps, p_init=p_init, n_restarts=1, seed=seed, loss="margin",
                               device=torch.device("cpu"))

    def run(x, y):
        counting.rows = 0
        with torch.no_grad():
            x_adv = attack.perturb(x, y)
        record["queries"] = counting.rows / x.shape[0]
        return x_adv
    return run


def attacker_cpu_seconds() -> float:
    """CPU seconds the attacker process has used so far (0 where it or /proc is not there)."""
    host = isolation._host
    if host is None or not host.alive():
        return 0.0
    try:
        with open(f"/proc/{host.worker.process.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def arena_tool(model, registry, norm: str, eps: float, queries: int, p_init: float, seed: int,
               isolate: bool, record: dict):
    attack = registry.make_attack("square", norm=norm, max_queries=queries + 2, p_init=p_init)

    def run(x, y):
        before = attacker_cpu_seconds() if isolate else 0.0
        with isolation.setting(isolate):
            result = attack(model, x, y, eps, seed=seed)
        record.setdefault("attacker_cpu", []).append(attacker_cpu_seconds() - before if isolate else 0.0)
        record["queries"] = float(result.queries.float().mean())
        record["max_queries"] = int(result.queries.max())
        return result.x_adv
    return run


def strength(model, x, y, norm, eps, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: judge(model, x, y, x_adv, norm, eps)[0] for name, x_adv in outputs.items()}


def run_norm(norm: str, model, registry, x, y, args) -> tuple[list[list[str]], list[list[str]]]:
    """The table rows of one norm and its verdicts (robust accuracy and isolated samples/s)."""
    eps, q, p0 = EPS[norm], args.queries, args.p_init
    records: dict[str, dict] = {"arena": {}, "arena (in process)": {}, "reference": {}}
    tools = {
        "arena": arena_tool(model, registry, norm, eps, q, p0, args.seed, True, records["arena"]),
        "arena (in process)": arena_tool(model, registry, norm, eps, q, p0, args.seed, False,
                                         records["arena (in process)"]),
        "reference": reference_tool(model, norm, eps, q, p0, args.seed, records["reference"]),
    }
    # the attacker process started and the plugin imported there before anything is timed
    tools["arena"](x[:2], y[:2])
    records["arena"].pop("attacker_cpu")
    load = load_average()
    timings = time_tools(tools, x, y, args.repeats, warmup=0)
    broke = strength(model, x, y, norm, eps, {k: t.x_adv for k, t in timings.items()})
    robust = {k: [1 - float(v.float().mean())] for k, v in broke.items()}
    for seed in range(args.seed + 1, args.seed + args.seeds):  # strength only, untimed
        outs = {"arena": arena_tool(model, registry, norm, eps, q, p0, seed, False, {})(x, y),
                "reference": reference_tool(model, norm, eps, q, p0, seed, {})(x, y)}
        for k, ok in strength(model, x, y, norm, eps, outs).items():
            robust[k].append(1 - float(ok.float().mean()))
    robust["arena (in process)"] = robust["arena"]  # the same examples: isolation changes nothing
    n = x.shape[0]
    rate = {k: n / t.median() for k, t in timings.items()}
    cpu_rate = {}
    for name, t in timings.items():
        spent = records[name].get("attacker_cpu", [0.0] * len(t.cpu_seconds))
        cpu_rate[name] = n / statistics.median(a + b for a, b in zip(t.cpu_seconds, spent))
    rows = []
    for name in timings:
        other = broke["reference"] if name != "reference" else broke["arena"]
        ratio = name != "reference"
        rows.append([norm, name, f"{100 * statistics.mean(robust[name]):.1f}",
                     str(int((broke[name] & ~other).sum())), f"{records[name]['queries']:.1f}",
                     f"{rate[name]:.2f}", f"{rate[name] / rate['reference']:.2f}" if ratio else "",
                     f"{cpu_rate[name]:.2f}",
                     f"{cpu_rate[name] / cpu_rate['reference']:.2f}" if ratio else ""])
    print(f"  {norm}: eps {eps}, {n} samples, {q} iterations, p_init {p0}, arena max queries/sample "
          f"{records['arena'].get('max_queries')}; load before {load}")
    ra, rr = statistics.mean(robust["arena"]), statistics.mean(robust["reference"])
    fast = rate["arena"] / rate["reference"]
    local = rate["arena (in process)"] / rate["reference"]
    verdicts = [[norm, "robust accuracy ≤ reference", "PASS" if ra <= rr else "MISS",
                 f"{100 * ra:.1f}% vs {100 * rr:.1f}%"],
                [norm, "samples/s ≥ reference (isolated)", "PASS" if fast >= 1 else "MISS",
                 f"{fast:.2f}× (in process {local:.2f}×)"]]
    return rows, verdicts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--queries", type=int, default=1000, help="the reference's n_queries")
    parser.add_argument("--p-init", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1, help="robust accuracy averaged over this many seeds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--norms", default="linf,l2")
    args = parser.parse_args(argv)
    registry, model, test, acc, line = setup(args.threads)
    x, y = correct_samples(model, test, args.samples, seed=args.seed)
    print(f"{line}; {args.repeats} repeat(s)")
    rows, verdicts = [], []
    for norm in [n for n in args.norms.split(",") if n]:
        more_rows, more_verdicts = run_norm(norm, model, registry, x, y, args)
        rows, verdicts = rows + more_rows, verdicts + more_verdicts
    print(f"load average after: {load_average()}\n")
    heads = ["norm", "tool", "robust acc %", "only this side breaks", "mean queries", "samples/s",
             "÷ reference", "samples/cpu-s", "÷ reference (cpu)"]
    print(tabulate(rows, headers=heads, tablefmt="github", disable_numparse=True))
    print()
    print(tabulate(verdicts, headers=["norm", "target", "", "measured"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
