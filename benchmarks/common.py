"""Shared plumbing of the side-by-side benchmarks: a cached model, the samples, judging, timing.

Every tool is judged by the same code on the same model: an output is clamped to [0, 1], the
model's prediction on it decides success (anything but ``y``, or the target when one is given),
and the distance is measured here in the attack's norm (L0: the number of changed input
features), so that no tool's own bookkeeping enters the comparison.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import arena
from arena.training import accuracy, fit

CACHE = Path(".arena/bench")
Tool = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, y) -> x_adv


@dataclass(frozen=True)
class ModelSpec:
    """What the benchmark model is: architecture, its config, and how it is trained."""

    dataset: str = "fashion-mnist"
    arch: str = "digits-cnn"
    arch_config: tuple[tuple[str, float], ...] = (("width", 0.5),)
    train_size: int = 20_000
    test_size: int = 2_000
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True, default=list)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def benchmark_model(spec: ModelSpec, registry=None) -> tuple[nn.Module, arena.data.Split, float]:
    """The trained model (from ``.arena/bench/`` when cached), the test split and its accuracy.

    The model's parameters are frozen (``requires_grad=False``) for every tool alike, so no
    tool builds gradients for the weights (torchattacks' C&W would, through ``cost.backward()``).
    """
    registry = registry or arena.load_plugins()
    data = registry.make_dataset(spec.dataset, train_size=spec.train_size,
                                 test_size=spec.test_size).load(seed=spec.seed)
    torch.manual_seed(spec.seed)
    model = registry.make_architecture(spec.arch, **dict(spec.arch_config)).build(
        data.input_shape, data.num_classes)
    path = CACHE / f"{spec.dataset}-{spec.arch}-{spec.key()}.pt"
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        loss = lambda m, xb, yb: nn.functional.cross_entropy(m(xb), yb)  # noqa: E731
        fit(model, data.train, loss, epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr,
            seed=spec.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval().requires_grad_(False)
    return model, data.test, accuracy(model, data.test)


def setup(threads: int) -> tuple[object, nn.Module, arena.data.Split, float, str]:
    """What every side-by-side benchmark starts from: ``threads`` torch threads, the installed
    plugins, the benchmark model with its test split and accuracy, and the line that describes
    them (model, accuracy, torch version, threads, load)."""
    torch.set_num_threads(threads)
    registry = arena.load_plugins()
    spec = ModelSpec()
    model, test, acc = benchmark_model(spec, registry)
    line = (f"model: {spec.arch} {dict(spec.arch_config)} on {spec.dataset}, test accuracy {100 * acc:.1f}%; "
            f"torch {torch.__version__}, {threads} thread(s); load average {load_average()}")
    return registry, model, test, acc, line


def correct_samples(model: nn.Module, split, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test samples (in a seeded order) that ``model`` classifies correctly."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pred = model(split.x[order]).argmax(1)
    keep = order[pred == split.y[order]][:n]
    return split.x[keep].contiguous(), split.y[keep].contiguous()


def measure(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample norm of ``delta``: ``l2``, ``linf`` or ``l0`` (changed features)."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    if norm == "l0":
        return (flat != 0).sum(1).to(delta.dtype)
    return flat.norm(dim=1)


def judge(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, norm: str,
          eps: float | None = None, targets: torch.Tensor | None = None):
    """Success (bool) and distance per sample, judged the same way for every tool.

    At a fixed ``eps`` a sample only counts if its perturbation is within the budget.
    """
    x_adv = x_adv.detach().to(torch.float32).clamp(0, 1)
    with torch.no_grad():
        pred = model(x_adv).argmax(1)
    success = pred == targets if targets is not None else pred != y
    distance = measure(x_adv - x, norm)
    if eps is not None:
        success &= distance <= eps * (1 + 1e-5) + 1e-6
    return success, distance


@dataclass
class Timing:
    """Wall-clock and process CPU seconds of every timed run of one tool, and its last output."""

    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    x_adv: torch.Tensor | None = None

    def median(self) -> float:
        return statistics.median(self.seconds)

    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)


def time_tools(tools: dict[str, Tool], x: torch.Tensor, y: torch.Tensor, repeats: int,
               warmup: int = 1) -> dict[str, Timing]:
    """Run every tool ``warmup + repeats`` times, interleaved within each round (so background
    load hits all tools alike); the warm-up rounds are not timed."""
    timings = {name: Timing() for name in tools}
    for round_ in range(warmup + repeats):
        for name, tool in tools.items():
            start, cpu = time.perf_counter(), time.process_time()
            x_adv = tool(x, y)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            if round_ >= warmup:
                timings[name].seconds.append(elapsed)
                timings[name].cpu_seconds.append(cpu)
            timings[name].x_adv = x_adv
    return timings


def load_average() -> str:
    """The 1/5/15-minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())
