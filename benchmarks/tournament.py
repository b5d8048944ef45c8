"""How much a tournament saves by sharing work, against the same matches run standalone.

A tournament trains each defended model once, computes clean predictions once per model and
runs a minimal-perturbation attack once for all its budgets. Standalone, every (defense,
attack, budget) match is its own one-match tournament with an empty model cache. The script
runs both in one process and prints the wall times and their ratio (target ≤ 0.8). Where
nothing can be shared, a tournament of one match is timed against the same match written by
hand (data, training, the attack through its harness): the tournament's own overhead (store,
provenance, clean predictions, model checks) must stay within 5% (target ≤ 1.05).

    .venv/bin/python benchmarks/tournament.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import arena
from arena.tournament.plan import parse_tournament
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
        Runner(cfg, Store(Path(tmp) / "r.db"), cache_dir=Path(tmp) / "cache", progress=False).run()
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


def by_hand(data: dict, registry: arena.Registry) -> float:
    """The one match of ``data`` without the tournament: load the data, train the defense, run
    the attack through its harness on the same samples (what a user would write by hand). The
    tournament's extra work is the store, provenance, clean predictions and the model checks."""
    from arena.training import accuracy

    start = time.perf_counter()
    plan = parse_tournament(data, registry)
    splits = plan.dataset.build().load(plan.seed)
    evaluation = splits.test.take(plan.config.samples, plan.seed)
    (entry,), (attack_plan,) = plan.defenses, plan.attacks
    defense = entry.defense
    torch.manual_seed(plan.seed)
    model = defense.build(entry.architecture.build(), splits.input_shape, splits.num_classes)
    defense.train(model, splits, seed=plan.seed, finetune=False, progress=False)
    model.eval()
    accuracy(model, evaluation)
    for budget in attack_plan.budgets:
        attack_plan.attack(model, evaluation.x, evaluation.y, budget, seed=plan.seed)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = arena.load_plugins()
    data = dict(SHARED)
    if "deepfool" in registry.attacks:
        data["attacks"] = [*SHARED["attacks"], MINIMAL]
    single = {**data, "samples": 300, "batch_size": 300, "defenses": data["defenses"][:1],
              "attacks": [{"id": "pgd", "params": {"steps": 40, "early_stop": False}, "budgets": [0.1]}]}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = []
        t = statistics.median(timed_run(data, registry, work) for _ in range(args.repeats))
        s = statistics.median(standalone(data, registry, work) for _ in range(args.repeats))
        rows.append(("shared work", "each match its own tournament", t, s))
        times = {"tournament": [], "by hand": []}
        for _ in range(args.repeats):  # interleaved, so that background load hits both alike
            times["tournament"].append(timed_run(single, registry, work))
            times["by hand"].append(by_hand(single, registry))
        rows.append(("nothing to share", "the match written by hand", statistics.median(times["tournament"]),
                     statistics.median(times["by hand"])))
    print(f"median of {args.repeats} runs each, {args.threads} threads")
    print(f"{'case':<18}{'tournament s':>14}  {'against':<31}{'s':>7}{'ratio':>8}")
    for name, what, t, s in rows:
        print(f"{name:<18}{t:>14.2f}  {what:<31}{s:>7.2f}{t / s:>8.2f}")


if __name__ == "__main__":
    main()
