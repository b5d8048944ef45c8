"""``arena run --dry-run FILE``: what a run of the file would do, without doing any of it.

The plan is resolved exactly as a run resolves it and checked against the loaded data (sample
count, targets, architectures' shapes); the results database, if there is one, is opened
read-only and never written. :func:`preview` lists the entrants to build (trained, or loaded
from the model cache where an entry of that key exists) and those whose stored model row a
run takes; the matches to run and those stored by earlier runs (:func:`arena.tournament.identity.
stored`, the lookup a run makes); and an estimate of the work in the units the progress
display uses (attack iterations × samples, training epochs × training samples).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arena.labels import budget_label
from arena.tournament import identity
from arena.tournament.plan import Plan, check_architectures, check_samples
from arena.tournament.progress import match_units, training_units


@dataclass
class Preview:
    """What a run of ``plan`` into ``db`` would build and play."""

    source: str
    db: Path
    runs: int  # earlier runs in the database
    build: list[str] = field(default_factory=list)
    stored_models: list[tuple[str, int]] = field(default_factory=list)  # (label, run it comes from)
    to_run: list[tuple[str, str, tuple[float, ...]]] = field(default_factory=list)  # defense, attack, budgets
    stored_matches: list[tuple[str, str, float, int]] = field(default_factory=list)
    units: float = 0.0  # expected work of what is to run
    train_units: float = 0.0

    def render(self) -> str:
        lines = [f"{self.source} -> {self.db}" + (f" ({self.runs} earlier runs)" if self.runs else " (new database)")]
        lines.append(f"entrants: {len(self.build) + len(self.stored_models)}: {len(self.build)} to build, "
                     f"{len(self.stored_models)} stored")
        lines += [f"  build   {label}" for label in self.build]
        lines += [f"  stored  {label} (run {run})" for label, run in self.stored_models]
        matches = sum(len(b) for _, _, b in self.to_run)
        lines.append(f"matches: {matches + len(self.stored_matches)}: {matches} to run, "
                     f"{len(self.stored_matches)} stored")
        lines += [f"  run     {a} vs {d} at ε = {', '.join(budget_label(b) for b in budgets)}"
                  for d, a, budgets in self.to_run]
        by_pair: dict[tuple[str, str, int], list[float]] = {}
        for d, a, b, run in self.stored_matches:
            by_pair.setdefault((d, a, run), []).append(b)
        lines += [f"  stored  {a} vs {d} at ε = {', '.join(budget_label(b) for b in sorted(bs))} (run {run})"
                  for (d, a, run), bs in by_pair.items()]
        lines.append(f"estimated work: {_units(self.train_units)} units of training, "
                     f"{_units(self.units)} units of attacks (one unit: one forward and backward pass "
                     "of one sample)")
        return "\n".join(lines)


def _units(value: float) -> str:
    return f"{value:,.0f}"


def preview(plan: Plan, db: Path, store: Any | None) -> Preview:
    """What a run of ``plan`` into ``db`` (``store``: the database opened read-only, None where
    there is none yet) would do."""
    data = plan.dataset.build().load(plan.seed)
    check_samples(plan, data)
    check_architectures(plan, data)
    keys = identity.keys(plan)
    found = identity.stored(store, keys) if store is not None else identity.Stored({}, {})
    out = Preview(plan.source, db, len(store.run_ids()) if store is not None else 0)
    todo: dict[str, list[tuple[Any, tuple[float, ...]]]] = {}
    for a in plan.attacks:
        for d in plan.defenses:
            if not a.faces(d.label):
                continue
            missing = tuple(b for b in a.budgets if (d.label, a.label, b) not in found.matches)
            for b in a.budgets:
                if (d.label, a.label, b) in found.matches:
                    out.stored_matches.append((d.label, a.label, b, found.matches[(d.label, a.label, b)][1].run_id))
            if missing:
                todo.setdefault(d.label, []).append((a, missing))
                out.to_run.append((d.label, a.label, missing))
                out.units += match_units(a, missing, plan.config.samples, data.num_classes)
    needed = plan.needed(todo, [d.label for d in plan.defenses if d.label not in found.models])
    for d in plan.defenses:
        if d.label in needed:
            out.build.append(d.label)
            out.train_units += training_units(d, len(data.train), plan.config.samples)
        else:
            out.stored_models.append((d.label, found.models[d.label].run_id))
    return out
