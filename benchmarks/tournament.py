"""How much a tournament saves by sharing work, against the same matches run standalone.

A tournament trains each defended model once, computes clean predictions once per model and
runs a minimal-perturbation attack once for all its budgets. Standalone, every (defense,
attack, budget) match is its own one-match tournament with an empty model cache. The script
runs both in one process and prints the wall times and their ratio (target ≤ 0.8), and the
same for a tournament of one match, where nothing can be shared (target ≤ 1.05).

    .venv/bin/python benchmarks/tournament.py [--threads 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import arena
from arena.tournament.config import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

SHARED = {
    "name": "bench", "dataset": "digits", "architecture": "digits-cnn", "samples": 150,
    "training": {"epochs": 6},
    "defenses": [{"id": "standard"}, {"id": "gda", "params": {"copies": 4}}],
    "attacks": [
        {"id": "fgsm", "budgets": [0.1, 0.2]},
        {"id": "pgd", "params": {"steps": 20}, "budgets": [0.1, 0.2]},
    ],
}
MINIMAL = {"id": "deepfool", "budgets": [0.5, 1.0, 2.0]}


def timed_run(data: dict, registry: arena.Registry, workdir: Path) -> float:
    cfg = parse_tournament(data, registry)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        Runner(cfg, registry, Store(Path(tmp) / "r.db"), cache_dir=Path(tmp) / "cache", progress=False).run()
    return time.perf_counter() - start


def standalone(data: dict, registry: arena.Registry, workdir: Path) -> float:
    """Every (defense, attack, budget) as its own tournament, from an empty cache."""
    total = 0.0
    for defense in data["defenses"]:
        for attack in data["attacks"]:
            for budget in attack["budgets"]:
                one = {**data, "defenses": [defense], "attacks": [{**attack, "budgets": [budget]}]}
                total += timed_run(one, registry, workdir)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = arena.load_plugins()
    data = dict(SHARED)
    if "deepfool" in registry.attacks:
        data["attacks"] = [*SHARED["attacks"], MINIMAL]
    single = {**data, "defenses": data["defenses"][:1], "attacks": [{**data["attacks"][1], "budgets": [0.1]}]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = []
        for name, case in (("shared work", data), ("nothing to share", single)):
            t = timed_run(case, registry, work)
            s = standalone(case, registry, work)
            rows.append((name, t, s, t / s))
    print(f"{'case':<18}{'tournament s':>14}{'standalone s':>14}{'ratio':>8}")
    for name, t, s, r in rows:
        print(f"{name:<18}{t:>14.1f}{s:>14.1f}{r:>8.2f}")


if __name__ == "__main__":
    main()
