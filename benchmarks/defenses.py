"""Training-step cost of the training-time defenses, side by side in one process.

Every case is one full optimiser step (zero_grad, the defense's loss, backward, Adam step) on
the same architecture and the same batch, with a fixed thread count. Cases are interleaved
within each repeat (so background load hits them alike) and the median over repeats is
reported, after warm-up steps. Ratios are against a plain cross-entropy step.

Targets (issue 5): jacobian-reg with one projection ≤ 2.5× plain; ns-loss's N copies in one
batched forward ≥ 1.2× faster than N sequential passes; gda ≤ 1.1× a plain step on a batch of
the same size (its N + 1 copies), i.e. drawing the noise on the device costs ≤ 10%.

    python benchmarks/defenses.py [--threads 1] [--batch 64] [--repeats 15] [--arch digits-cnn]

On a CPU the batched ns-loss pass does the same arithmetic on the same rows as the sequential
one; what it saves is per-call overhead and small-kernel inefficiency, which a second thread
exposes more. Its tensors are N + 1 times larger, and glibc's malloc hands such blocks out with
mmap and returns them after every step, so the batched step pays page faults the sequential one
does not: ``MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000`` (or jemalloc /
tcmalloc, as PyTorch's CPU tuning guide advises) shows how much.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import arena
from arena.training import make_optimizer

CASES: list[tuple[str, str, dict]] = [
    ("jacobian-reg, 1 projection", "jacobian-reg", {"projections": 1}),
    ("jacobian-reg, exact (K vjps)", "jacobian-reg", {}),
    ("input-gradient-reg", "input-gradient-reg", {}),
    ("cross-lipschitz-reg", "cross-lipschitz-reg", {}),
    ("ns-loss N=5, batched", "ns-loss", {"copies": 5}),
    ("ns-loss N=5, sequential", "ns-loss", {"copies": 5, "batched": False}),
    ("combined, exact Jacobian", "combined", {}),
    ("combined, 1 projection", "combined", {"projections": 1}),
    ("fgsm-at (ratio 0.5)", "fgsm-at", {}),
    ("adversarial-training pgd-10", "adversarial-training", {"attack": {"id": "pgd", "params": {"steps": 10}}}),
    ("vat", "vat", {}),
    ("gda N=10", "gda", {"copies": 10}),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: torch.nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One optimiser step of ``loss_fn`` on a private copy of ``model``."""
    model = copy.deepcopy(model).train()
    opt = make_optimizer("adam", model.parameters(), 1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()
        opt.step()

    return step


def plain_loss(model, x, y):
    return F.cross_entropy(model(x), y)


def build_steps(args, registry) -> tuple[dict[str, Callable[[], None]], dict[str, str]]:
    device = torch.device(args.device)
    data = registry.make_dataset("digits").load(seed=42)
    torch.manual_seed(0)
    model = registry.make_architecture(args.arch).build(data.input_shape, data.num_classes).to(device)
    idx = torch.randperm(len(data.train))[:args.batch]
    x, y = data.train.x[idx].to(device), data.train.y[idx].to(device)
    steps = {"plain": make_step(model, plain_loss, x, y)}
    baseline = {}
    for label, defense_id, params in CASES:
        if defense_id in registry.defenses:
            steps[label] = make_step(model, registry.make_defense(defense_id, **params).loss, x, y)
            baseline[label] = "plain"
    if "gda N=10" in steps:       # a plain step on a batch as large as GDA's (N + 1 copies)
        big_x = torch.cat([x] + [(x + 0.3 * torch.randn_like(x)).clamp(0, 1) for _ in range(10)])
        steps["plain, 11x batch"] = make_step(model, plain_loss, big_x, y.repeat(11))
        baseline["gda N=10"] = "plain, 11x batch"
    return steps, baseline


def measure(steps: dict[str, Callable[[], None]], repeats: int, warmup: int,
            device: torch.device) -> dict[str, float]:
    """Median seconds per step of each case; cases interleaved within every repeat."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + repeats):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(med: dict[str, float], baseline: dict[str, str]) -> None:
    rows = [("plain", med["plain"], 1.0, "")]
    for name, base in baseline.items():
        rows.append((name, med[name], med[name] / med[base], "" if base == "plain" else f"vs {base}"))
    if "plain, 11x batch" in med:
        rows.append(("plain, 11x batch", med["plain, 11x batch"], med["plain, 11x batch"] / med["plain"], ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'case':<{width}}  {'ms/step':>9}  {'ratio':>7}")
    for name, sec, ratio, note in rows:
        print(f"{name:<{width}}  {sec * 1e3:9.2f}  {ratio:6.2f}x  {note}")
    checks = [
        ("jacobian-reg 1 projection / plain", med.get("jacobian-reg, 1 projection"), med["plain"], "<=", 2.5),
        ("ns-loss sequential / batched", med.get("ns-loss N=5, sequential"), med.get("ns-loss N=5, batched"),
         ">=", 1.2),
        ("gda / plain on the same 11x batch", med.get("gda N=10"), med.get("plain, 11x batch"), "<=", 1.1),
    ]
    print()
    for what, num, den, op, target in checks:
        if num is None or den is None:
            print(f"{what}: not measured")
            continue
        ratio = num / den
        ok = ratio <= target if op == "<=" else ratio >= target
        print(f"{what}: {ratio:.2f}x (target {op} {target}x) {'OK' if ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--arch", default="digits-cnn")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps, baseline = build_steps(args, arena.load_plugins())
    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
          f"arch {args.arch}, batch {args.batch}, median of {args.repeats} after {args.warmup} warm-up\n")
    report(measure(steps, args.repeats, args.warmup, torch.device(args.device)), baseline)


if __name__ == "__main__":
    main()
