"""The arena's APGD and APGD-T against the authors' reference (autoattack's ``APGDAttack`` and
``APGDAttack_targeted``) and torchattacks' ``APGD`` / ``APGDT``, side by side.

One process, the cached Fashion-MNIST CNN of ``common.ModelSpec`` and the same correctly
classified test samples for every tool, the same steps, restarts and target count, the same
torch thread count. Each tool runs once to warm up, then ``--repeats`` times, interleaved with
the other tools within each round; samples/s is the sample count over the median wall-clock
time. Every output is judged by the same code: clamped to [0, 1], a success is a
misclassification within ε (L∞, L2 and L1 measured here). The table gives the robust accuracy,
the samples only the arena breaks and only the tool breaks (random starts differ between
tools, so a few such samples either way are noise), and the speed ratio. With
``--strength-seeds K`` the arena and the reference also run untimed with seeds 1 … K−1, and the
robust accuracy is averaged over the K seeds.

Peers and the arena are timed to the same deliverable: adversarial inputs and whether they fool
the model (the arena's harness judges its output itself; the peers get one prediction pass on
their output inside the timed call, as in ``benchmarks/attacks.py``).

    python benchmarks/apgd_reference.py [--samples 200] [--threads 1] [--repeats 3] [--steps 100]
                                        [--targets 9] [--strength-seeds 1] [--only linf,apgd-t]

Targets: robust accuracy equal to or below the reference's; samples/s equal to or above it.
Peers: ``pip install pyautoattack torchattacks`` (autoattack imports as ``autoattack`` or, from
the pyautoattack wheel, ``pyautoattack``; torchattacks with ``--no-deps`` where torch is
installed already). torchattacks has no L1 version.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import correct_samples, setup, load_average, time_tools  # noqa: E402


REF_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def autopgd():
    """The reference module, under either of its import names."""
    try:
        from autoattack import autopgd_base
    except ImportError:
        from pyautoattack import autopgd_base
    return autopgd_base


@dataclass
class Case:
    name: str
    arena_id: str
    norm: str
    eps: float
    loss: str  # ce or dlr; the targeted cases always run the targeted DLR loss

    @property
    def targeted(self) -> bool:
        return self.arena_id == "apgd-t"


CASES = [
    Case("apgd-ce linf", "apgd", "linf", 0.1, "ce"),
    Case("apgd-dlr linf", "apgd", "linf", 0.1, "dlr"),
    Case("apgd-t linf", "apgd-t", "linf", 0.1, "dlr"),
    Case("apgd-ce l2", "apgd", "l2", 1.0, "ce"),
    Case("apgd-dlr l2", "apgd", "l2", 1.0, "dlr"),
    Case("apgd-t l2", "apgd-t", "l2", 1.0, "dlr"),
    Case("apgd-ce l1", "apgd", "l1", 5.0, "ce"),
    Case("apgd-t l1", "apgd-t", "l1", 5.0, "dlr"),
]


def distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l1":
        return flat.abs().sum(1)
    return flat.norm(dim=1)


def broken(model, x, y, x_adv, norm: str, eps: float) -> torch.Tensor:
    """Which samples ``x_adv`` breaks: misclassified, within ε (float32 rounding allowed)."""
    x_adv = x_adv.detach().float().clamp(0, 1)
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    return wrong & (distance(x_adv - x, norm) <= eps * (1 + 1e-5) + 1e-6)


def judged(model, tool: Callable) -> Callable:
    def run(x, y):
        x_adv = tool(x, y)
        with torch.no_grad():
            model(x_adv).argmax(1)
        return x_adv
    return run


def arena_tool(registry, model, case: Case, args, seed: int = 0) -> Callable:
    params = {"norm": case.norm, "steps": args.steps, "restarts": args.restarts}
    if case.targeted:
        params["n_target_classes"] = args.targets
    else:
        params["loss"] = case.loss
    attack = registry.make_attack(case.arena_id, **params)
    return lambda x, y: attack(model, x, y, case.eps, seed=seed).x_adv


def reference_tool(model, case: Case, args, seed: int = 0) -> Callable:
    base = autopgd()
    common = {"n_iter": args.steps, "norm": REF_NORM[case.norm], "n_restarts": args.restarts,
              "eps": case.eps, "seed": seed, "device": "cpu"}
    if case.targeted:
        attack = base.APGDAttack_targeted(model, n_target_classes=args.targets, **common)
    else:
        attack = base.APGDAttack(model, loss=case.loss, **common)
    return judged(model, lambda x, y: attack.perturb(x, y))


def torchattacks_tool(model, case: Case, args) -> Callable | None:
    if case.norm == "l1":
        return None
    import torchattacks
    common = {"norm": REF_NORM[case.norm], "eps": case.eps, "steps": args.steps,
              "n_restarts": args.restarts, "seed": 0}
    if case.targeted:
        attack = torchattacks.APGDT(model, n_classes=args.targets + 1, **common)
    else:
        attack = torchattacks.APGD(model, loss=case.loss, **common)
    return judged(model, lambda x, y: attack(x, y))


def run_case(case: Case, registry, model, x, y, args) -> tuple[list[list[str]], list[list[str]]]:
    tools = {"arena": arena_tool(registry, model, case, args)}
    try:
        tools["autoattack"] = reference_tool(model, case, args)
    except ImportError as exc:
        print(f"  autoattack left out: {exc}")
    try:
        ta = torchattacks_tool(model, case, args)
        if ta is not None:
            tools["torchattacks"] = ta
    except ImportError as exc:
        print(f"  torchattacks left out: {exc}")
    load = load_average()
    timings = time_tools(tools, x, y, args.repeats)
    hits = {name: broken(model, x, y, t.x_adv, case.norm, case.eps) for name, t in timings.items()}
    robust = {name: [1 - float(h.float().mean())] for name, h in hits.items()}
    for seed in range(1, args.strength_seeds):  # untimed: the arena and the reference only
        robust["arena"].append(1 - float(broken(model, x, y, arena_tool(registry, model, case, args, seed)(x, y),
                                                case.norm, case.eps).float().mean()))
        if "autoattack" in tools:
            robust["autoattack"].append(1 - float(broken(
                model, x, y, reference_tool(model, case, args, seed)(x, y), case.norm, case.eps).float().mean()))
    arena_s = timings["arena"].median()
    rows = []
    for name, t in timings.items():
        only_arena = int((hits["arena"] & ~hits[name]).sum())
        only_tool = int((hits[name] & ~hits["arena"]).sum())
        rows.append([name, f"{100 * statistics.mean(robust[name]):.1f}",
                     "" if name == "arena" else str(only_arena), "" if name == "arena" else str(only_tool),
                     f"{x.shape[0] / t.median():,.1f}", "" if name == "arena" else f"{t.median() / arena_s:.2f}"])
    print(f"\n== {case.name}  (ε {case.eps:g}, {x.shape[0]} samples, {args.steps} steps, "
          f"{args.restarts} restart(s){f', {args.targets} targets' if case.targeted else ''}; "
          f"load before: {load})")
    if args.strength_seeds > 1:
        print(f"   robust acc: arena and autoattack the mean of {args.strength_seeds} seeds, "
              "torchattacks seed 0; 'only … breaks': seed 0")
    print(tabulate(rows, headers=["tool", "robust acc %",
                                  "only arena breaks", "only tool breaks", "samples/s", "arena ÷ tool"],
                   tablefmt="github", disable_numparse=True))
    verdicts = []
    if "autoattack" in timings:
        ra, rr = statistics.mean(robust["arena"]), statistics.mean(robust["autoattack"])
        speed = timings["autoattack"].median() / arena_s
        verdicts.append([case.name, "robust acc ≤ autoattack", "PASS" if ra <= rr + 1e-9 else "MISS",
                         f"{100 * ra:.1f}% vs {100 * rr:.1f}%"])
        verdicts.append([case.name, "speed ≥ 1× autoattack", "PASS" if speed >= 1.0 else "MISS", f"{speed:.2f}×"])
    return rows, verdicts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="correctly classified test images")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool (median)")
    parser.add_argument("--steps", type=int, default=100, help="iterations per run (AutoAttack: 100)")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--targets", type=int, default=9, help="APGD-T's target classes (AutoAttack: 9)")
    parser.add_argument("--strength-seeds", type=int, default=1,
                        help="average the arena's and the reference's robust accuracy over this many seeds")
    parser.add_argument("--seed", type=int, default=0, help="which samples")
    parser.add_argument("--only", default="", help="comma-separated words a case name must contain")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    registry, model, test, acc, line = setup(args.threads)
    x, y = correct_samples(model, test, args.samples, seed=args.seed)
    print(f"{line}; repeats {args.repeats} (+1 warm-up)")
    wanted = [w for w in args.only.split(",") if w]
    verdicts = []
    for case in CASES:
        if wanted and not all(w in case.name for w in wanted):
            continue
        verdicts += run_case(case, registry, model, x, y, args)[1]
    print(f"\nload average after: {load_average()}\n")
    print(tabulate(verdicts, headers=["case", "target", "", "measured"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
