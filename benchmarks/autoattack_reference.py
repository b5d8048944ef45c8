"""The arena's ``autoattack`` against the reference AutoAttack (``pyautoattack``, Croce & Hein)
and torchattacks' AutoAttack, side by side on the same models and samples.

The models are those of ``tournaments/defenses.toml`` (built or taken from the tournament's model
cache, ``.arena/cache/models``, exactly as ``arena run`` builds them): an undefended one and
defended ones. Every tool gets the same test samples (the first ``--samples`` of the file's
evaluation split, clean errors included: they count as not robust for everyone), the same ε, and
the version the reference prescribes (``standard`` for deterministic models; ``rand`` for a
model that declares itself randomised). Every output is judged by the same code: an example
counts as adversarial when it is within ε and fools the model — on the majority of 20 passes for
a randomised model, as the tournament judges. Reported per model: robust accuracy per tool, the
samples only one side breaks, wall time and the ratio to the reference.

Targets (issue 17): the arena's robust accuracy never above the reference's (at most one sample
worse on 500), at ≤ 0.5× the reference's wall time.

    pip install --no-deps pyautoattack torchattacks   # the bench peers; torch already installed
    python benchmarks/autoattack_reference.py [--samples 500] [--eps 0.1] [--threads 2]
                                              [--defenses standard,label-smoothing,...] [--no-torchattacks]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average  # noqa: E402

import arena  # noqa: E402
from arena.tournament.entrants import EntrantSpec, prepare, providers  # noqa: E402
from arena.tournament.plan import load_tournament  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFENSES = "standard,label-smoothing,jacobian-reg,feature-squeezing,nac"
PASSES = 20


def entrants(labels: list[str], registry) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The entrants named (and those they wrap), built as ``arena run`` builds them."""
    plan = load_tournament(ROOT / "tournaments" / "defenses.toml", registry)
    data = plan.dataset.build().load(plan.seed)
    evaluation = data.test.take(len(data.test), plan.seed)  # the file's seeded order, every test sample
    wanted, stack = set(), list(labels)
    while stack:
        label = stack.pop()
        if label not in wanted:
            wanted.add(label)
            stack += list(plan.defense(label).parents)
    built: dict[str, object] = {}
    for d in plan.defenses:  # in dependency order
        if d.label not in wanted:
            continue
        code = providers(registry, defenses=d.id, architectures=d.architecture.id, datasets=plan.dataset.id)
        spec = EntrantSpec(d, plan.dataset, plan.seed, plan.config.batch_size,
                           str(ROOT / ".arena" / "cache" / "models"), code)
        built[d.label] = prepare(spec, data, evaluation, *(built[p] for p in d.parents)).entrant
    return built, evaluation.x, evaluation.y


def adversarial(model, x, y, x_adv, eps: float) -> torch.Tensor:
    """Within ε (L∞) and fooling the model: the majority of passes for a randomised model."""
    x_adv = x_adv.detach().clamp(0, 1)
    inside = (x_adv - x).flatten(1).abs().amax(1) <= eps * (1 + 1e-5) + 1e-6
    passes = PASSES if getattr(model, "randomized", False) else 1
    wrong = torch.zeros(len(x), dtype=torch.long)
    with torch.no_grad():
        for _ in range(passes):
            wrong += (model(x_adv).argmax(1) != y).long()
    return inside & (wrong * 2 > passes)


def clean_correct(model, x, y) -> torch.Tensor:
    return ~adversarial(model, x, y, x, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--defenses", default=DEFENSES)
    parser.add_argument("--no-torchattacks", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import pyautoattack

    registry = arena.load_plugins()
    labels = args.defenses.split(",")
    built, x_all, y_all = entrants(labels, registry)
    x, y = x_all[:args.samples].contiguous(), y_all[:args.samples].contiguous()
    print(f"{len(x)} samples, L∞ ε={args.eps}, {args.threads} threads, load {load_average()}")
    table = []
    for label in labels:
        model = built[label].model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        version = "rand" if getattr(model, "randomized", False) else "standard"
        correct = clean_correct(model, x, y)
        tools = {}

        def ours(x, y, model=model, version=version):
            attack = registry.make_attack("autoattack", version=version)
            keep = clean_correct(model, x, y)  # as the reference: clean errors are not attacked
            out = x.clone()
            rows = keep.nonzero().squeeze(1)
            for start in range(0, len(rows), args.batch_size):
                sel = rows[start:start + args.batch_size]
                out[sel] = attack(model, x[sel], y[sel], args.eps, seed=start).x_adv
            return out

        def reference(x, y, model=model, version=version):
            aa = pyautoattack.AutoAttack(model, norm="Linf", eps=args.eps, version=version, device="cpu", seed=0)
            return aa.run_standard_evaluation(x, y, batch_size=args.batch_size)[0]  # (x_adv, y_adv)

        tools["arena"] = ours
        tools["pyautoattack"] = reference
        if not args.no_torchattacks:
            import torchattacks

            def ta(x, y, model=model, version=version):
                return torchattacks.AutoAttack(model, norm="Linf", eps=args.eps, version=version,
                                               n_classes=10, seed=0)(x, y)
            tools["torchattacks"] = ta
        results = {}
        for name, tool in tools.items():
            torch.manual_seed(0)
            start = time.perf_counter()
            x_adv = tool(x, y)
            seconds = time.perf_counter() - start
            broken = adversarial(model, x, y, x_adv, args.eps) | ~correct
            results[name] = (broken, seconds)
        ref_broken, ref_seconds = results["pyautoattack"]
        for name, (broken, seconds) in results.items():
            only_us = int((broken & ~ref_broken).sum())
            only_ref = int((ref_broken & ~broken).sum())
            table.append([label, version, name, f"{100 * float((~broken).float().mean()):.1f}",
                          f"{only_us}/{only_ref}", f"{seconds:.1f}", f"{len(x) / seconds:.1f}",
                          f"{seconds / ref_seconds:.2f}"])
    print(tabulate(table, headers=["defense", "version", "tool", "robust %", "only this / only ref",
                                   "seconds", "samples/s", "time / ref"]))


if __name__ == "__main__":
    main()
