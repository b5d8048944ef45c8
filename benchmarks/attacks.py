"""The arena's white-box attacks against torchattacks, foolbox 3 and ART, side by side.

One process, one trained model (a small CNN on Fashion-MNIST, cached under ``.arena/bench/``),
the same correctly classified test samples, the same settings and the same torch thread count
for every tool. Each tool runs once to warm up, then ``--repeats`` times, interleaved with the
other tools within each round; samples/s is the sample count over the median wall-clock time.
Every output is judged by the same code (``common.judge``): success on the same model, and the
distance in the attack's norm. Fixed-budget attacks compare success at the fixed ε; minimal
attacks compare the median distance over all samples (a failure counts as ∞, so the success
rate enters too) and the paired median over the samples both tools fooled.

Every tool is timed to the same deliverable, adversarial inputs and whether they fool the
model: the arena's harness and foolbox judge their outputs themselves, torchattacks and ART get
one prediction pass on their output inside the timed call.

    python benchmarks/attacks.py [--repeats 5] [--threads 2] [--samples 256] [--quick]
                                 [--only pgd-linf,deepfool]

Targets (issue 3), speed against the FASTER peer named for each attack, strength against the
STRONGER of all peers: FGSM and PGD (L∞, L2) ≥ 1.2×; C&W-L2 without binary search ≥ 1.3×
torchattacks, with binary search ≥ 10× ART's CarliniL2Method; DeepFool ≥ 3×; JSMA ≥ 5×
torchattacks; success at the same ε never more than 1 point below, median minimal distance
never more than 5% above. Peers: ``pip install -e '.[bench]'`` (torchattacks and foolbox with ``--no-deps``
where torch is installed already; neither imports torchvision).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import correct_samples, setup, judge, load_average, time_tools  # noqa: E402


PeerBuilder = Callable[[torch.nn.Module, dict], Callable]


# ----------------------------------------------------------------------------- the peers
class S(str):
    """A setting's name: the peer builders look it up in the case's settings."""


def _resolve(kwargs: dict, settings: dict) -> dict:
    return {k: settings[v] if isinstance(v, S) else v for k, v in kwargs.items()}


def judged(model, tool):
    """``tool`` followed by the model's prediction on its output, so that every tool is timed to
    the same deliverable: adversarial inputs and whether they fool the model. The arena's
    harness and foolbox's ``__call__`` judge their output themselves; torchattacks and ART
    return images only, and a user needs this forward pass to learn anything from them."""
    def run(x, y):
        x_adv = tool(x, y)
        with torch.no_grad():
            model(x_adv).argmax(1)
        return x_adv
    return run


def torchattacks_tool(cls_name: str, targeted: bool = False, **kwargs) -> PeerBuilder:
    """A torchattacks attack; ``targeted`` steers to ``(y + 1) mod K`` like the arena run."""
    def build(model, s):
        import torchattacks
        attack = getattr(torchattacks, cls_name)(model, **_resolve(kwargs, s))
        if targeted:
            attack.set_mode_targeted_by_function(lambda x, y: (y + 1) % 10, quiet=True)
        return judged(model, lambda x, y: attack(x, y))
    return build


def foolbox_tool(cls_name: str, minimal: bool = False, **kwargs) -> PeerBuilder:
    """A foolbox 3 attack on a ``PyTorchModel``; fixed-ε attacks return the clipped output."""
    def build(model, s):
        import foolbox as fb
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
        attack = getattr(fb.attacks, cls_name)(**_resolve(kwargs, s))
        if minimal:
            return lambda x, y: _unmark_failures(attack(fmodel, x, y, epsilons=None)[0], x)
        return lambda x, y: attack(fmodel, x, y, epsilons=s["eps"])[1]
    return build


def _unmark_failures(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """foolbox's C&W marks a sample it never made adversarial with an all-zero image
    (``best_advs = zeros_like(x)``); a blank image is usually misclassified, which the judge
    would count as a success at distance ‖x‖. Such rows are put back to ``x`` (a failure)."""
    blank = (x_adv.flatten(1) == 0).all(1) & (x.flatten(1) != 0).any(1)
    return torch.where(blank.view(-1, *([1] * (x.dim() - 1))), x, x_adv)


def art_cw_tool(model, s):
    """ART's CarliniL2Method (line-searched gradient descent, binary search over c), whole batch,
    with the same iterations per binary-search step as the others (each of ART's iterations is a
    gradient step plus a line search of up to ``max_halving + max_doubling`` forward passes)."""
    from art.attacks.evasion import CarliniL2Method
    from art.estimators.classification import PyTorchClassifier
    clf = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 28, 28),
                            nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    attack = CarliniL2Method(clf, confidence=0.0, learning_rate=s["lr"],
                             binary_search_steps=s["binary_search_steps"], max_iter=s["steps"],
                             initial_const=s["c"], batch_size=s["n"], verbose=False)
    return judged(model, lambda x, y: torch.from_numpy(attack.generate(x.numpy(), y=y.numpy())))


# ----------------------------------------------------------------------------- the cases
@dataclass
class Case:
    """One table: the arena attack, its peers, the shared settings and the targets."""

    name: str
    arena_id: str
    arena_config: Callable[[dict], dict]
    norm: str
    settings: dict
    peers: dict[str, PeerBuilder]
    speed_peers: tuple[str, ...]
    speed_target: float
    minimal: bool = False
    targeted: bool = False
    samples: int | None = None
    quick: dict = field(default_factory=dict)


PGD_STEPS = 40
CASES = [
    Case("fgsm", "fgsm", lambda s: {"norm": "linf"}, "linf", {"eps": 0.05},
         {"torchattacks": torchattacks_tool("FGSM", eps=S("eps")),
          "foolbox": foolbox_tool("LinfFastGradientAttack", random_start=False)},
         ("torchattacks", "foolbox"), 1.2),
    Case("pgd-linf", "pgd",
         lambda s: {"norm": "linf", "steps": s["steps"], "step_size": s["alpha"], "random_start": False},
         "linf", {"eps": 0.05, "alpha": 0.05 * 2.5 / PGD_STEPS, "steps": PGD_STEPS},
         {"torchattacks": torchattacks_tool("PGD", eps=S("eps"), alpha=S("alpha"), steps=S("steps"), random_start=False),
          "foolbox": foolbox_tool("LinfPGD", abs_stepsize=S("alpha"), steps=S("steps"), random_start=False)},
         ("torchattacks", "foolbox"), 1.2, quick={"steps": 10, "alpha": 0.05 * 2.5 / 10}),
    Case("pgd-l2", "pgd",
         lambda s: {"norm": "l2", "steps": s["steps"], "step_size": s["alpha"], "random_start": False},
         "l2", {"eps": 1.0, "alpha": 1.0 * 2.5 / PGD_STEPS, "steps": PGD_STEPS},
         {"torchattacks": torchattacks_tool("PGDL2", eps=S("eps"), alpha=S("alpha"), steps=S("steps"), random_start=False),
          "foolbox": foolbox_tool("L2PGD", abs_stepsize=S("alpha"), steps=S("steps"), random_start=False)},
         ("torchattacks", "foolbox"), 1.2, quick={"steps": 10, "alpha": 1.0 * 2.5 / 10}),
    Case("cw-l2 (no binary search)", "cw-l2",
         lambda s: {"steps": s["steps"], "lr": s["lr"], "initial_const": s["c"],
                    "binary_search_steps": 1, "confidence": 0.0},
         "l2", {"steps": 100, "lr": 0.01, "c": 10.0, "kappa": 0.0, "binary_search_steps": 1},
         {"torchattacks": torchattacks_tool("CW", c=S("c"), kappa=S("kappa"), steps=S("steps"), lr=S("lr")),
          "foolbox": foolbox_tool("L2CarliniWagnerAttack", minimal=True, binary_search_steps=S("binary_search_steps"),
                                  steps=S("steps"), stepsize=S("lr"), initial_const=S("c"), confidence=0.0)},
         ("torchattacks",), 1.3, minimal=True, quick={"steps": 30}),
    Case("cw-l2 (binary search)", "cw-l2",
         lambda s: {"steps": s["steps"], "lr": s["lr"], "initial_const": s["c"],
                    "binary_search_steps": s["binary_search_steps"], "confidence": 0.0},
         "l2", {"steps": 100, "lr": 0.01, "c": 1.0, "binary_search_steps": 5},
         {"ART": art_cw_tool,
          "foolbox": foolbox_tool("L2CarliniWagnerAttack", minimal=True, binary_search_steps=S("binary_search_steps"),
                                  steps=S("steps"), stepsize=S("lr"), initial_const=S("c"), confidence=0.0)},
         ("ART",), 10.0, minimal=True, samples=32,
         quick={"binary_search_steps": 3, "samples": 16, "steps": 30}),
    Case("deepfool", "deepfool",
         lambda s: {"norm": "l2", "steps": s["steps"], "overshoot": s["overshoot"]},
         "l2", {"steps": 50, "overshoot": 0.02},
         {"torchattacks": torchattacks_tool("DeepFool", steps=S("steps"), overshoot=S("overshoot")),
          "foolbox": foolbox_tool("L2DeepFoolAttack", minimal=True, steps=S("steps"), candidates=10,
                                  overshoot=S("overshoot"), loss="logits")},
         ("torchattacks", "foolbox"), 3.0, minimal=True, samples=64, quick={"samples": 32}),
    Case("jsma (targeted, y+1)", "jsma",
         lambda s: {"theta": s["theta"], "max_distortion": s["gamma"]},
         "l0", {"theta": 1.0, "gamma": 80 / 784},
         {"torchattacks": torchattacks_tool("JSMA", targeted=True, theta=S("theta"), gamma=S("gamma"))},
         ("torchattacks",), 5.0, minimal=True, targeted=True, samples=64, quick={"samples": 8}),
]


# ----------------------------------------------------------------------------- running
@dataclass
class Outcome:
    """One tool's figures in one table."""

    tool: str
    per_s: float
    cpu_per_s: float
    success: float
    median: float  # minimal attacks: median distance over all samples, a failure counting as ∞
    paired: tuple[float, float] | None = None  # (arena, this tool) over samples both fooled


@dataclass
class Verdict:
    case: str
    what: str
    passed: bool
    detail: str


def arena_tool(case: Case, registry, model, s: dict) -> Callable | None:
    if case.arena_id not in registry.attacks:
        return None
    attack = registry.make_attack(case.arena_id, **case.arena_config(s))
    eps = None if case.minimal else s["eps"]
    if case.targeted:
        return lambda x, y: attack(model, x, y, eps, targets=(y + 1) % 10).x_adv
    return lambda x, y: attack(model, x, y, eps).x_adv


def build_tools(case: Case, registry, model, s: dict) -> dict[str, Callable]:
    """The arena attack first, then every peer that imports; the missing ones are reported."""
    tools = {}
    arena_fn = arena_tool(case, registry, model, s)
    if arena_fn is None:
        print(f"  skipped: arena attack '{case.arena_id}' is not registered")
        return {}
    tools["arena"] = arena_fn
    for name, build in case.peers.items():
        try:
            tools[name] = build(model, s)
        except ImportError as exc:
            print(f"  {name} left out: {exc} (pip install -e '.[bench]')")
    return tools


def outcomes(case: Case, model, x, y, timings, s: dict) -> list[Outcome]:
    """Figures per tool; for minimal attacks also the paired medians (arena's and the peer's over
    the samples both made adversarial), the like-for-like distance comparison."""
    targets = (y + 1) % 10 if case.targeted else None
    eps = None if case.minimal else s["eps"]
    judged = {name: judge(model, x, y, t.x_adv, case.norm, eps, targets) for name, t in timings.items()}
    arena_ok, arena_dist = judged["arena"]
    rows = []
    for name, t in timings.items():
        ok, dist = judged[name]
        both = ok & arena_ok
        paired = (float(arena_dist[both].median()), float(dist[both].median())) if both.any() else None
        failed_inf = torch.where(ok, dist, torch.full_like(dist, float("inf")))
        rows.append(Outcome(name, x.shape[0] / t.median(), x.shape[0] / t.cpu_median(),
                            float(ok.float().mean()), _median(failed_inf), paired))
    return rows


def _median(values: torch.Tensor) -> float:
    return float(values.median()) if values.numel() else float("inf")


def print_table(case: Case, rows: list[Outcome], s: dict, load: str) -> None:
    arena_row = rows[0]
    dist_head = f"median {case.norm.upper()} (failure = ∞)"
    table = [[r.tool, f"{r.per_s:,.1f}", f"{arena_row.per_s / r.per_s:.2f}" if r.tool != "arena" else "",
              f"{r.cpu_per_s:,.1f}", f"{arena_row.cpu_per_s / r.cpu_per_s:.2f}" if r.tool != "arena" else "",
              f"{100 * r.success:.1f}", f"{r.median:.4g}" if case.minimal else "",
              f"{r.paired[0]:.4g} vs {r.paired[1]:.4g}" if case.minimal and r.paired and r.tool != "arena" else ""]
             for r in rows]
    shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in s.items() if k != "n"}
    print(f"\n== {case.name}  ({case.norm}, {s['n']} samples, {shown}; load before: {load})")
    heads = ["tool", "samples/s", "arena ÷ tool", "samples/cpu-s", "arena ÷ tool (cpu)", "success %",
             dist_head if case.minimal else "", "arena vs tool, both fooled" if case.minimal else ""]
    print(tabulate(table, headers=heads, tablefmt="github", disable_numparse=True))


def verdicts(case: Case, rows: list[Outcome]) -> list[Verdict]:
    arena_row, peers = rows[0], {r.tool: r for r in rows[1:]}
    out = []
    speed_peers = [peers[p] for p in case.speed_peers if p in peers]
    if speed_peers:
        fastest = max(speed_peers, key=lambda r: r.per_s)
        ratio = arena_row.per_s / fastest.per_s
        out.append(Verdict(case.name, f"speed ≥ {case.speed_target:g}× {fastest.tool}",
                           ratio >= case.speed_target, f"{ratio:.3f}×"))
    if peers and not case.minimal:  # success at the same ε; minimal attacks: the medians below
        best = max(peers.values(), key=lambda r: r.success)
        gap = 100 * (arena_row.success - best.success)
        out.append(Verdict(case.name, f"success ≥ {best.tool} − 1 pt", gap >= -1.0,
                           f"{100 * arena_row.success:.1f}% vs {100 * best.success:.1f}% ({gap:+.1f} pt)"))
    if case.minimal and peers:
        best = min(peers.values(), key=lambda r: r.median)
        ratio = arena_row.median / best.median
        out.append(Verdict(case.name, f"median {case.norm} ≤ 1.05 × {best.tool}", ratio <= 1.05,
                           f"{arena_row.median:.4g} vs {best.median:.4g} ({100 * (ratio - 1):+.1f}%)"))
        paired = [r for r in peers.values() if r.paired]
        if paired:
            worst = max(paired, key=lambda r: r.paired[0] / r.paired[1])
            ratio = worst.paired[0] / worst.paired[1]
            out.append(Verdict(case.name, f"paired median {case.norm} ≤ 1.05 × {worst.tool}", ratio <= 1.05,
                               f"{worst.paired[0]:.4g} vs {worst.paired[1]:.4g} ({100 * (ratio - 1):+.1f}%)"))
    return out


def run_case(case: Case, registry, model, test, args) -> list[Verdict]:
    s = dict(case.settings)
    n = case.samples or args.samples
    if args.quick:
        s.update({k: v for k, v in case.quick.items() if k != "samples"})
        n = min(n, case.quick.get("samples", args.samples))
    x, y = correct_samples(model, test, n, seed=args.seed)
    s["n"] = x.shape[0]
    print(f"\n-- {case.name}: building tools")
    tools = build_tools(case, registry, model, s)
    if not tools:
        return [Verdict(case.name, "run", False, f"arena attack '{case.arena_id}' not registered")]
    load = load_average()
    timings = time_tools(tools, x, y, args.repeats)
    rows = outcomes(case, model, x, y, timings, s)
    print_table(case, rows, s, load)
    return verdicts(case, rows)


def hopskipjump_case(args) -> list[Verdict]:
    """Issue 4's HopSkipJump target, from ``benchmarks/hopskipjump.py``: ART's HopSkipJump and
    the arena's on the digits test model, the arena given the smallest per-sample query count
    ART spent as its budget (and, for reference, 60% of it), with the benchmark's thread count
    like every other case; the same budget is also run with one thread for reference.

    With one thread the ratio sits near the target whatever the attack's own cost: the model's
    forward passes, on the same rows ART queries, are ~85% of the arena's time (2.4–3.0× over
    runs on this machine). How much a second thread adds to either tool varied between runs
    here (ART −9% to +11%, the arena +9% to +48%)."""
    try:
        import art  # noqa: F401
    except ImportError as exc:
        print(f"\n-- hopskipjump: ART left out: {exc} (pip install -e '.[bench]')")
        return []
    from hopskipjump import compare_with_art
    threads = torch.get_num_threads()
    runs = [(threads, 1.0)] if args.quick else [(threads, 1.0), (threads, 0.6), (1, 1.0)]
    reports = [compare_with_art(samples=16 if args.quick else 64, max_iter=3 if args.quick else 10,
                                threads=n, repeats=1 if args.quick else 3, budget_share=share)
               for n, share in runs]
    torch.set_num_threads(threads)
    rows = []
    for rep in reports:
        label = f"budget × {rep['setup']['budget_share']:g}, {rep['setup']['threads']} thread(s)"
        for tool in ("arena", "art"):
            r = rep[tool]
            rows.append([f"arena ({label})" if tool == "arena" else f"ART ({rep['setup']['threads']} thread(s))",
                         f"{r['samples_per_s_wall']:.2f}",
                         f"{rep['speedup_wall']:.2f}" if tool == "arena" else "", f"{100 * r['success']:.1f}",
                         f"{r['median_distance']:.4g}", f"{r['mean_queries']:.0f}"])
    setup = reports[0]["setup"]
    print(f"\n== hopskipjump  (l2, {setup['samples']} digits samples, ART max_iter {setup['art_max_iter']}, "
          f"{setup['repeats']} repeats; ART runs first in each repeat)")
    print(tabulate(rows, headers=["tool", "samples/s", "arena ÷ ART", "success %", "median L2",
                                  "mean queries"], tablefmt="github", disable_numparse=True))
    same = reports[0]
    return [Verdict("hopskipjump", f"speed ≥ 3× ART (same budget, {threads} threads)", same["speedup_wall"] >= 3.0,
                    f"{same['speedup_wall']:.3f}×"),
            Verdict("hopskipjump", "median l2 ≤ 1.05 × ART (same budget)", same["distance_ratio"] <= 1.05,
                    f"{same['arena']['median_distance']:.4g} vs {same['art']['median_distance']:.4g} "
                    f"({100 * (same['distance_ratio'] - 1):+.1f}%)")]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per tool (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--samples", type=int, default=256, help="correctly classified test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps, 2 repeats")
    parser.add_argument("--only", default="", help="comma-separated table names or prefixes")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.repeats, args.samples = min(args.repeats, 2), min(args.samples, 64)
    registry, model, test, acc, line = setup(args.threads)
    print(f"{line}; repeats {args.repeats} (+1 warm-up)")
    wanted = [w for w in args.only.split(",") if w]
    results = []
    for case in CASES:
        if wanted and not any(case.name.startswith(w) for w in wanted):
            continue
        results += run_case(case, registry, model, test, args)
    if not wanted or any("hopskipjump".startswith(w) for w in wanted):
        results += hopskipjump_case(args)
    print(f"\nload average after: {load_average()}\n")
    print(tabulate([[v.case, v.what, "PASS" if v.passed else "MISS", v.detail] for v in results],
                   headers=["attack", "target", "", "measured"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
