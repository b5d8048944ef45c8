"""How close the arena's model-bound attacks come to a bare torch loop, and what ``[speed]`` buys.

**Harness against a bare loop.** FGSM, PGD (early stop off, so every sample runs every step) and
C&W-L2 (fixed steps and binary-search steps, no early abort) are called as a tournament calls
them, ``attack(model, x, y, eps, seed=..., context=defense)``: the whole harness (validation,
copies, the exact model check, projection, judging). Each is timed against the same attack
written as a bare torch loop on the same model, batch, device and thread count: the same forward
and backward passes (counted with a forward hook on the model in a separate calibration run and
printed; the harness adds one forward pass of a single row, which tells the class count), the
same update arithmetic, and one judging forward pass at the end, as the harness has. Both run
``--repeats`` times after a warm-up, interleaved (the order alternates every round), at one and
at two torch threads; the ratio is arena ÷ bare in samples/s (median times), target ≥ 0.95. The
model is an untrained network of ``plugins/architectures/papers.py`` (speed does not depend on
its weights) on Fashion-MNIST test images.

**Speed settings** (``--speed``): the tournament's ``[speed]`` (``arena.model.SpeedSettings``),
each on its own and combined, on a Fashion-MNIST CNN trained for the purpose (cached under
``.arena/bench/``): PGD's throughput through the harness at each batch size and thread count
against the plain model, the time ``torch.compile`` takes to compile (its first calls), and
what each setting does to the results on ``--speed-samples`` correctly classified test images:
clean accuracy, robust accuracy under FGSM and PGD at ε = 0.1, C&W's median L2, and how many
samples' verdicts differ from the plain model's.

    .venv/bin/python benchmarks/bare_loop.py [--arch tf-tutorial-cnn,seed001-cnn] [--batches 100,500]
        [--threads 1,2] [--repeats 5] [--only fgsm,pgd,cw-l2] [--speed] [--speed-only] [--quick]

Run it on an otherwise idle machine (see docs/benchmarks.md): the ratios are of two timings
taken side by side, but a second busy process makes both noisy.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ModelSpec, benchmark_model, correct_samples, load_average  # noqa: E402

import arena  # noqa: E402
from arena.model import SpeedSettings, speed_record, warm_up, with_speed  # noqa: E402

PGD_STEPS = 10  # few steps make the harness's fixed cost per call weigh more: a conservative test
CW_STEPS, CW_SEARCH = 10, 2
EPS = 0.1
TARGET = 0.95


# ----------------------------------------------------------------------------- the bare loops
def bare_fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    xg = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
    x_adv = (x + eps * grad.sign()).clamp(0, 1)
    with torch.no_grad():
        return x_adv, model(x_adv).argmax(1) != y


def bare_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
             steps: int = PGD_STEPS) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = 2.5 / 40 * eps  # the arena's default rel_step_size
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        xg = x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y, reduction="sum"), xg)
        x_adv = torch.minimum(torch.maximum(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    with torch.no_grad():
        return x_adv, model(x_adv).argmax(1) != y


def bare_cw(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: None = None, steps: int = CW_STEPS,
            search: int = CW_SEARCH, lr: float = 0.01, c: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """C&W-L2 (κ = 0) by hand: tanh-space Adam on ``||x'-x||² + c·max(Z_y - max_{i≠y} Z_i, 0)``,
    the smallest successful x' kept, ``c`` bisected (×10 until bounded) after each search step."""
    n = x.shape[0]
    w0 = torch.atanh((2 * x - 1) * 0.999999)
    lo, hi, const = torch.zeros(n), torch.full((n,), 1e10), torch.full((n,), c)
    best_d, best_x = torch.full((n,), float("inf")), x.clone()
    onehot = F.one_hot(y, 10).bool()
    for _ in range(search):
        w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
        found = torch.zeros(n, dtype=torch.bool)
        for t in range(1, steps + 1):
            wg = w.requires_grad_(True)
            x_new = (torch.tanh(wg) + 1) / 2
            z = model(x_new)
            dist = (x_new - x).flatten(1).pow(2).sum(1)
            own = z.gather(1, y[:, None]).squeeze(1)
            other = z.masked_fill(onehot, float("-inf")).amax(1)
            loss = dist + const * torch.clamp(own - other, min=0)
            (grad,) = torch.autograd.grad(loss.sum(), wg)
            with torch.no_grad():
                success = z.argmax(1) != y
                better = success & (dist < best_d)
                best_d = torch.where(better, dist, best_d)
                best_x = torch.where(better.view(-1, 1, 1, 1), x_new, best_x)
                found |= success
                m.mul_(0.9).add_(grad, alpha=0.1)
                v.mul_(0.999).addcmul_(grad, grad, value=0.001)
                w = w.detach().addcdiv(m, (v / (1 - 0.999 ** t)).sqrt_().add_(1e-8), value=-lr / (1 - 0.9 ** t))
        hi = torch.where(found, torch.minimum(hi, const), hi)
        lo = torch.where(found, lo, torch.maximum(lo, const))
        const = torch.where(hi < 1e9, (lo + hi) / 2, const * 10)
    with torch.no_grad():
        return best_x, model(best_x).argmax(1) != y


@dataclass(frozen=True)
class Case:
    name: str
    arena_id: str
    params: dict
    eps: float | None
    bare: Callable


CASES = [
    Case("fgsm", "fgsm", {"norm": "linf"}, EPS, bare_fgsm),
    Case("pgd", "pgd", {"norm": "linf", "steps": PGD_STEPS, "early_stop": False, "restarts": 1}, EPS, bare_pgd),
    Case("cw-l2", "cw-l2", {"steps": CW_STEPS, "binary_search_steps": CW_SEARCH, "abort_early": False,
                            "lr": 0.01, "initial_const": 1.0, "confidence": 0.0}, None, bare_cw),
]


# ----------------------------------------------------------------------------- counting passes
@dataclass
class Passes:
    """Rows through the model's forward pass, with and without a backward pass after it."""

    forward_grad: int = 0
    forward_nograd: int = 0
    backward: int = 0
    calls: list[int] = field(default_factory=list)

    def per_sample(self, n: int) -> str:
        return (f"{self.forward_grad / n:g} fwd+bwd, {self.forward_nograd / n:.3g} fwd "
                f"({len(self.calls)} calls)")


def count_passes(model: nn.Module, fn: Callable[[], object]) -> Passes:
    """The passes ``fn()`` runs through ``model`` (a forward hook; a tensor hook on each output
    that needs a gradient counts the backward pass through it)."""
    passes = Passes()

    def hook(module, inputs, output):
        rows = inputs[0].shape[0]
        passes.calls.append(rows)
        if torch.is_grad_enabled() and output.requires_grad:
            passes.forward_grad += rows

            def backward(grad):
                passes.backward += rows
            output.register_hook(backward)
        else:
            passes.forward_nograd += rows

    handle = model.register_forward_hook(hook)
    try:
        fn()
    finally:
        handle.remove()
    return passes


# ----------------------------------------------------------------------------- timing
def interleaved(tools: dict[str, Callable[[], object]], repeats: int,
                warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and process CPU seconds of every tool, ``warmup + repeats`` rounds, the order
    alternating each round (the warm-up rounds are dropped). CPU seconds count only this
    process's work, so they hold up better than wall time when other processes share the cores."""
    wall: dict[str, list[float]] = {name: [] for name in tools}
    cpu: dict[str, list[float]] = {name: [] for name in tools}
    names = list(tools)
    for r in range(warmup + repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start, start_cpu = time.perf_counter(), time.process_time()
            tools[name]()
            if r >= warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def ratio(times: dict[str, list[float]], fast: str, slow: str) -> tuple[float, float]:
    """``slow``'s throughput over ``fast``'s: from the median times, and the median of each
    round's own ratio (paired, robust to drifting load)."""
    medians = statistics.median(times[slow]) / statistics.median(times[fast])
    paired = statistics.median(s / f for f, s in zip(times[fast], times[slow]))
    return 1 / medians, 1 / paired


# ----------------------------------------------------------------------------- harness vs bare
def untrained(registry, arch: str) -> nn.Module:
    torch.manual_seed(0)
    return registry.make_architecture(arch).build((1, 28, 28), 10).eval()


def harness_rows(registry, test, args) -> list[list[str]]:
    defense = registry.make_defense("standard")  # the context a tournament passes
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for arch in args.arch:
            model = untrained(registry, arch)
            for n in args.batches:
                x, y = test.x[:n].contiguous(), test.y[:n].contiguous()
                for case in CASES:
                    if args.only and case.name not in args.only:
                        continue
                    attack = registry.make_attack(case.arena_id, **case.params)
                    arena_fn = lambda: attack(model, x, y, case.eps, seed=0, context=defense)  # noqa: E731

                    def bare_fn():
                        with torch.random.fork_rng(devices=[]):  # as the harness's seeded call
                            torch.manual_seed(0)
                            model.requires_grad_(False)
                            try:
                                return case.bare(model, x, y, case.eps)
                            finally:
                                model.requires_grad_(True)
                    a, b = count_passes(model, arena_fn), count_passes(model, bare_fn)
                    same = (a.forward_grad, a.backward, a.forward_nograd - 1) == (b.forward_grad, b.backward,
                                                                                   b.forward_nograd)
                    if not same:
                        raise SystemExit(f"{case.name}: unequal work: arena {a} vs bare {b}")
                    load = load_average()
                    times, cpu = interleaved({"arena": arena_fn, "bare": bare_fn}, args.repeats)
                    r, paired = ratio(times, "bare", "arena")
                    r_cpu, _ = ratio(cpu, "bare", "arena")
                    rows.append([case.name, arch, n, threads, a.per_sample(n), b.per_sample(n),
                                 f"{n / statistics.median(times['arena']):,.0f}",
                                 f"{n / statistics.median(times['bare']):,.0f}",
                                 f"{r:.3f}", f"{paired:.3f}", f"{r_cpu:.3f}",
                                 f"{1000 * (statistics.median(cpu['arena']) - statistics.median(cpu['bare'])):+.1f}",
                                 "PASS" if r >= TARGET else "MISS", load])
                    print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
    return rows


HARNESS_HEADERS = ["attack", "model", "batch", "threads", "arena passes/sample", "bare passes/sample",
                   "arena samples/s", "bare samples/s", "arena ÷ bare", "paired", "cpu-s", "ms/call (cpu)",
                   f"≥ {TARGET}", "load before"]


# ----------------------------------------------------------------------------- speed settings
SETTINGS = {
    "off": SpeedSettings(),
    "channels_last": SpeedSettings(channels_last=True),
    "bf16": SpeedSettings(autocast="bf16"),
    "channels_last+bf16": SpeedSettings(channels_last=True, autocast="bf16"),
    "compile": SpeedSettings(compile=True),
    "compile+channels_last+bf16": SpeedSettings(channels_last=True, compile=True, autocast="bf16"),
}


def speed_models(registry, arch: str, names: list[str]) -> tuple[dict[str, nn.Module], object, float]:
    """The trained benchmark model under each setting (each its own copy: channels_last converts
    weights in place), the test split and the plain model's accuracy."""
    import copy
    spec = ModelSpec(arch=arch, arch_config=(), epochs=2)
    model, test, acc = benchmark_model(spec, registry)
    model.requires_grad_(True)  # as a tournament's entrant: the harness freezes it per call
    return {name: with_speed(copy.deepcopy(model), SETTINGS[name]) for name in names}, test, acc


def speed_rows(registry, args) -> tuple[list[list[str]], list[list[str]], list[str]]:
    names = [n for n in SETTINGS if not (args.quick and n.startswith("compile+"))]
    arch = args.arch[0]
    models, test, acc = speed_models(registry, arch, names)
    notes = [f"model: {arch} trained 2 epochs on 20,000 Fashion-MNIST images, test accuracy {100 * acc:.1f}%"]
    pgd = registry.make_attack("pgd", **CASES[1].params)
    # compilation: its first calls, as a tournament makes them (warm-up at a batch, then the attack)
    for name, model in models.items():
        if not SETTINGS[name].compile:
            continue
        for n in args.batches:
            x, y = test.x[:n].contiguous(), test.y[:n].contiguous()
            start = time.perf_counter()
            warm_up(model, x)
            warm = time.perf_counter() - start
            start = time.perf_counter()
            pgd(model, x, y, EPS, seed=0)
            first = time.perf_counter() - start
            notes.append(f"{name}: compiling at batch {n}: warm-up {warm:.1f} s, then the first PGD call "
                         f"{first:.1f} s; record {speed_record(model)}")
            print(notes[-1], flush=True)
    timing = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for n in args.batches:
            x, y = test.x[:n].contiguous(), test.y[:n].contiguous()
            tools = {name: (lambda m=m: pgd(m, x, y, EPS, seed=0)) for name, m in models.items()}
            load = load_average()
            times, cpu = interleaved(tools, args.repeats)
            for name in names:
                r, paired = ratio(times, "off", name)
                timing.append([name, n, threads, f"{n / statistics.median(times[name]):,.0f}",
                               f"{r:.2f}", f"{paired:.2f}", f"{ratio(cpu, 'off', name)[0]:.2f}", load])
                print(tabulate([timing[-1]], tablefmt="plain"), flush=True)
    torch.set_num_threads(args.threads[-1])
    results = effects(registry, models, test, args.speed_samples)
    return timing, results, notes


def effects(registry, models: dict[str, nn.Module], test, samples: int) -> list[list[str]]:
    """What each setting does to the results, against the plain model on the same samples."""
    plain = models["off"]
    x, y = correct_samples(plain, test, samples)
    fgsm = registry.make_attack("fgsm")
    pgd = registry.make_attack("pgd", steps=20)
    cw = registry.make_attack("cw-l2", steps=50, binary_search_steps=3, initial_const=1.0, lr=0.05)
    seen = {}
    for name, model in models.items():
        with torch.no_grad():
            clean = torch.cat([model(test.x[i:i + 500]).argmax(1) for i in range(0, 2000, 500)]) == test.y[:2000]
        f = fgsm(model, x, y, EPS, seed=0)
        p = pgd(model, x, y, EPS, seed=0)
        c = cw(model, x[:64], y[:64], None, seed=0)
        seen[name] = (clean, ~f.success, ~p.success, c.distance)
    base = seen["off"]
    rows = []
    for name, (clean, f, p, d) in seen.items():
        finite = d[torch.isfinite(d)]
        rows.append([name, f"{100 * clean.float().mean():.2f}", int((clean != base[0]).sum()),
                     f"{100 * f.float().mean():.1f}", int((f != base[1]).sum()),
                     f"{100 * p.float().mean():.1f}", int((p != base[2]).sum()),
                     f"{finite.median():.4f}" if finite.numel() else "∞",
                     f"{(d - base[3]).abs()[torch.isfinite(d) & torch.isfinite(base[3])].max():.2g}"
                     if (torch.isfinite(d) & torch.isfinite(base[3])).any() else "-"])
    return rows


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="tf-tutorial-cnn,seed001-cnn", help="architectures, comma-separated")
    parser.add_argument("--batches", default="100,500")
    parser.add_argument("--threads", default="1,2", help="torch thread counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median), after one warm-up")
    parser.add_argument("--only", default="", help="attacks of the harness table: fgsm,pgd,cw-l2")
    parser.add_argument("--speed", action="store_true", help="also time the [speed] settings and their effects")
    parser.add_argument("--speed-only", action="store_true", help="only the [speed] settings")
    parser.add_argument("--speed-samples", type=int, default=500, help="test images the effects are measured on")
    parser.add_argument("--quick", action="store_true", help="one model, batch 100, 2 repeats")
    args = parser.parse_args(argv)
    args.arch = [a for a in args.arch.split(",") if a]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.only = [o for o in args.only.split(",") if o]
    if args.quick:
        args.arch, args.batches, args.repeats = args.arch[:1], args.batches[:1], min(args.repeats, 2)
        args.speed_samples = min(args.speed_samples, 100)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    registry = arena.load_plugins()
    data = registry.make_dataset("fashion-mnist", train_size=1000, test_size=2000).load(seed=0)
    print(f"torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}; "
          f"repeats {args.repeats} (+1 warm-up); load average {load_average()}", flush=True)
    if not args.speed_only:
        rows = harness_rows(registry, data.test, args)
        print(f"\n== the harness against a bare torch loop (PGD {PGD_STEPS} steps, C&W {CW_SEARCH}×{CW_STEPS} "
              f"steps, ε = {EPS} L∞ for FGSM/PGD)")
        print(tabulate(rows, headers=HARNESS_HEADERS, tablefmt="github", disable_numparse=True))
    if args.speed or args.speed_only:
        timing, results, notes = speed_rows(registry, args)
        print("\n== [speed] settings: PGD through the harness, samples/s and speed-up over the plain model")
        print("\n".join(notes))
        print(tabulate(timing, headers=["setting", "batch", "threads", "samples/s", "× off", "paired",
                                        "cpu-s", "load before"], tablefmt="github", disable_numparse=True))
        print(f"\n== [speed] settings: effect on the results ({args.speed_samples} correctly classified "
              "test images; clean accuracy on 2,000; C&W on the first 64)")
        print(tabulate(results, headers=["setting", "clean %", "clean verdicts ≠ off", "FGSM robust %",
                                         "≠ off", "PGD-20 robust %", "≠ off", "C&W median L2",
                                         "C&W max |ΔL2|"], tablefmt="github", disable_numparse=True))
    print(f"\nload average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
