"""The arena's FAB and FAB-T against the reference implementation, AutoAttack's ``FABAttack_PT``.

One process, the benchmark model of ``benchmarks/attacks.py`` (a small CNN on Fashion-MNIST,
cached under ``.arena/bench/``), the same correctly classified test samples and the same
settings on both sides: norm, iterations, restarts, target classes, α_max, η, β, and the budget
ε as AutoAttack passes it (the random-restart radius; a sample already broken within ε is not
attacked by the later restarts and targets). Both sides are judged by the same code
(``common.judge``) at ε: robust accuracy (the share of samples not fooled within ε), the median
distance over all samples with a sample not fooled within ε counting as ∞ (the reference
returns the clean input for those), the paired median over the samples both sides broke, and
the samples only one side breaks. Each tool runs ``--warmup`` untimed and ``--repeats`` timed
times (after one untimed call on four samples), interleaved within each round; samples/s is
the sample count over the median wall-clock time, and every tool is timed to the same
deliverable (adversarial inputs and one prediction pass on them; the arena's harness makes its
own).

    python benchmarks/fab_reference.py [--samples 200] [--threads 1] [--steps 100]
                                       [--repeats 1] [--warmup 0] [--norms linf,l2,l1]
                                       [--only fab,fab-t]

Targets: robust accuracy at ε equal to or lower than the reference's, samples/s equal or
higher. The reference: ``pip install pyautoattack`` (imported as ``autoattack`` or
``pyautoattack``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import correct_samples, setup, judge, load_average, time_tools  # noqa: E402


EPS = {"linf": 0.1, "l2": 1.0, "l1": 5.0}
REF_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def reference_class():
    """AutoAttack's FABAttack_PT, from either distribution name of the package."""
    try:
        from autoattack.fab_pt import FABAttack_PT
    except ImportError:
        from pyautoattack.fab_pt import FABAttack_PT
    return FABAttack_PT


def reference_tool(model, variant: str, norm: str, args):
    attack = reference_class()(model, norm=REF_NORM[norm], n_restarts=args.restarts, n_iter=args.steps,
                               eps=EPS[norm], alpha_max=0.1, eta=1.05, beta=0.9, seed=0,
                               targeted=variant == "fab-t", n_target_classes=args.targets, device="cpu")

    def run(x, y):
        x_adv = attack.perturb(x, y)
        with torch.no_grad():
            model(x_adv).argmax(1)  # the judgement the arena's harness makes inside its call
        return x_adv
    return run


def arena_tool(registry, model, variant: str, norm: str, args):
    extra = {"n_target_classes": args.targets} if variant == "fab-t" else {}
    attack = registry.make_attack(variant, norm=norm, steps=args.steps, restarts=args.restarts,
                                  eps=EPS[norm], **extra)
    return lambda x, y: attack(model, x, y, seed=0).x_adv


def figures(model, x, y, x_adv, norm):
    """Success within ε and the distance (∞ where not fooled within ε), judged alike for both;
    ``common.judge`` measures L2 and L∞, L1 is measured here on the same clamped output."""
    if norm != "l1":
        ok, dist = judge(model, x, y, x_adv, norm, EPS[norm])
    else:
        x_adv = x_adv.detach().clamp(0, 1)
        with torch.no_grad():
            ok = model(x_adv).argmax(1) != y
        dist = (x_adv - x).flatten(1).abs().sum(1)
        ok &= dist <= EPS[norm] * (1 + 1e-5) + 1e-6
    return ok, torch.where(ok, dist, torch.full_like(dist, float("inf")))


def run_case(registry, model, x, y, variant: str, norm: str, args) -> tuple[list, list]:
    tools = {"arena": arena_tool(registry, model, variant, norm, args),
             "reference": reference_tool(model, variant, norm, args)}
    for tool in tools.values():  # one small untimed call each, whatever --warmup says
        tool(x[:4], y[:4])
    load = load_average()
    timings = time_tools(tools, x, y, args.repeats, warmup=args.warmup)
    judged = {name: figures(model, x, y, t.x_adv, norm) for name, t in timings.items()}
    a_ok, r_ok = judged["arena"][0], judged["reference"][0]
    both = a_ok & r_ok
    speed = {name: x.shape[0] / t.median() for name, t in timings.items()}
    rows = []
    for name, (ok, dist) in judged.items():
        other_ok = r_ok if name == "arena" else a_ok
        rows.append([f"{variant} {norm}", name, f"{100 * (1 - ok.float().mean()):.1f}",
                     f"{dist.median():.4g}", f"{dist[both].median():.4g}" if both.any() else "–",
                     int((ok & ~other_ok).sum()), f"{speed[name]:.2f}",
                     f"{speed['arena'] / speed['reference']:.2f}" if name == "arena" else "", load])
    verdicts = [[f"{variant} {norm}", "robust accuracy ≤ reference",
                 "PASS" if a_ok.sum() >= r_ok.sum() else "MISS",
                 f"{100 * (1 - a_ok.float().mean()):.1f}% vs {100 * (1 - r_ok.float().mean()):.1f}%"],
                [f"{variant} {norm}", "samples/s ≥ reference",
                 "PASS" if speed["arena"] >= speed["reference"] else "MISS",
                 f"{speed['arena'] / speed['reference']:.2f}×"]]
    return rows, verdicts


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="correctly classified test images")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--steps", type=int, default=100, help="iterations per run (AutoAttack: 100)")
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--targets", type=int, default=9, help="FAB-T target classes (AutoAttack: 9)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per tool (median)")
    parser.add_argument("--warmup", type=int, default=0, help="untimed runs per tool first")
    parser.add_argument("--norms", default="linf,l2", help="comma-separated: linf, l2, l1")
    parser.add_argument("--only", default="fab,fab-t", help="comma-separated: fab, fab-t")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    registry, model, test, acc, line = setup(args.threads)
    x, y = correct_samples(model, test, args.samples, seed=args.seed)
    print(f"{line}; {x.shape[0]} samples, {args.steps} steps, {args.restarts} restart(s), "
          f"{args.targets} target classes; repeats {args.repeats} (+{args.warmup} warm-up)")
    rows, verdicts = [], []
    for variant in [v for v in args.only.split(",") if v]:
        for norm in [n for n in args.norms.split(",") if n]:
            r, v = run_case(registry, model, x, y, variant, norm, args)
            rows += r
            verdicts += v
            print(tabulate(r, tablefmt="plain"), flush=True)
    heads = ["case (ε: linf 0.1, l2 1.0, l1 5.0)", "tool", "robust acc %", "median dist (>ε: ∞)",
             "paired median", "only this side breaks", "samples/s", "arena ÷ ref", "load before"]
    print()
    print(tabulate(rows, headers=heads, tablefmt="github", disable_numparse=True))
    print(f"\nload average after: {load_average()}\n")
    print(tabulate(verdicts, headers=["case", "target", "", "measured"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
