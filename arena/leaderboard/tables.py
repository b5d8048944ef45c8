"""Leaderboard tables: per defense, clean accuracy, adversarial accuracy per attack and budget,
and the per-example worst case over all attacks at each (norm, budget), the ranking key.

A sample counts as robust in the worst case at (norm, ε) only if it survived every attack of
that norm evaluated at ε (one run of a minimal attack is evaluated at every budget it lists).
Budgets of different norms are not comparable, so each norm gets its own table.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

from tabulate import tabulate

from arena.errors import ConfigError
from arena.leaderboard.flags import flags
from arena.leaderboard.labels import budget_label
from arena.tournament.store import MatchRecord, ModelRecord, Store

TEXT_FORMATS = {"table": "simple", "markdown": "github", "latex": "latex_booktabs", "html": "html"}
FORMATS = (*TEXT_FORMATS, "csv", "json")


@dataclass
class Section:
    """One norm's table: a row per defense, ranked by mean worst-case accuracy."""

    norm: str
    headers: list[str]
    rows: list[list[object]]


@dataclass
class Leaderboard:
    title: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    long_rows: list[dict[str, object]] = field(default_factory=list)

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            data = {"title": self.title, "notes": self.notes, "results": self.long_rows,
                    "tables": [{"norm": s.norm, "headers": s.headers, "rows": s.rows} for s in self.sections]}
            return json.dumps(_finite(data), indent=2)
        if fmt == "csv":
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(self.long_rows[0]) if self.long_rows else ["defense"],
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.long_rows)
            return buf.getvalue()
        if fmt not in TEXT_FORMATS:
            raise ConfigError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
        parts = [self.title]
        for s in self.sections:
            shown = [[_pct(v) for v in row] for row in s.rows]
            parts.append(f"{s.norm}:\n" + tabulate(shown, headers=s.headers, tablefmt=TEXT_FORMATS[fmt],
                                                   disable_numparse=True))
        if self.notes:
            parts.append("notes:\n" + "\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts)


def _pct(v: object) -> object:
    if isinstance(v, float):
        return f"{100 * v:.1f}"
    return "–" if v is None else v


def _finite(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def build(store: Store, run_id: int | None = None, *, dataset: str | None = None,
          budget: float | None = None, knowledge: str | None = None) -> Leaderboard:
    """The leaderboard of ``run_id`` (the newest run by default), optionally filtered to one
    dataset (the run's), one budget and one threat model (``knowledge``: a match's stored
    ``threat_model``, so ``transfer`` and ``black-box`` are told apart)."""
    run_id = run_id if run_id is not None else store.latest_run()
    run = store.run(run_id) if run_id is not None else None
    if run is None:
        raise ConfigError(f"{store.path}: no tournament run found")
    run_dataset = run.dataset
    if dataset is not None and dataset != run_dataset:
        raise ConfigError(f"{store.path}: run {run_id} is on dataset '{run_dataset}', not '{dataset}'")
    models, matches = store.models(run_id), store.matches(run_id)
    if budget is not None:
        matches = [m for m in matches if math.isclose(m.budget, budget, rel_tol=1e-9)]
    if knowledge is not None:
        matches = [m for m in matches if m.threat_model == knowledge]
    if (budget is not None or knowledge is not None) and not matches:
        raise ConfigError(f"{store.path}: no match of run {run_id} fits the filters")
    sections = [_section(norm, models, [m for m in matches if m.norm == norm])
                for norm in sorted({m.norm for m in matches if m.norm})]
    sections.append(_attack_section(models, matches))
    notes = [f"sanity: {flag}" for flag in flags(models, matches)]
    if any(backend(m) != "torch" for m in models):  # say which backend ran each entrant
        notes += [f"{m.defense}: backend {backend(m)}{_model_file(m)}" for m in models]
    notes += [f"{m.defense}: detector flags {100 * m.false_positive_rate:.1f}% of clean inputs"
              for m in models if m.false_positive_rate is not None]
    notes += [f"{m.attack} vs {m.defense} (ε={budget_label(m.budget)}): {m.status}: {m.error}"
              for m in matches if not m.ok]
    title = (f"{run.name} on {run_dataset} (run {run_id}, seed {run.seed}): accuracy in %, "
             "defenses ranked by mean worst case")
    return Leaderboard(title, sections, notes, _long_rows(models, matches))


def _section(norm: str, models: list[ModelRecord], matches: list[MatchRecord]) -> Section:
    attacks = list(dict.fromkeys(m.attack for m in matches))
    columns = [(a, b) for a in attacks for b in sorted({m.budget for m in matches if m.attack == a})]
    budgets = sorted({m.budget for m in matches})
    by_key = {(m.defense, m.attack, m.budget): m for m in matches}
    headers = ["defense", "clean"] + [f"{a} ε={budget_label(b)}" for a, b in columns]
    headers += [f"worst ε={budget_label(b)}" for b in budgets]
    rows = []
    for model in models:
        d = model.defense
        cells: list[object] = [d, model.clean_accuracy]
        for a, b in columns:
            m = by_key.get((d, a, b))
            cells.append(None if m is None else m.robust_accuracy if m.ok else m.status)
        cells += [worst_case(model, [m for m in matches if m.defense == d and m.budget == b]) for b in budgets]
        rows.append(cells)
    k = len(budgets)
    rows.sort(key=lambda r: -_mean([v for v in r[len(r) - k:] if isinstance(v, float)]))
    return Section(norm, headers, rows)


def _attack_section(models: list[ModelRecord], matches: list[MatchRecord]) -> Section:
    """Attacks ranked by mean success against every defense (NIPS 2017 competition style: an
    attack scores the share of defended, correctly classified samples it breaks)."""
    defenses = [m.defense for m in models]
    keys = list(dict.fromkeys((m.attack, m.budget) for m in matches if m.ok))
    by_key = {(m.defense, m.attack, m.budget): m for m in matches}
    headers = ["attack", "threat model", "ε", "score"] + [f"vs {d}" for d in defenses] + ["queries", "seconds"]
    rows = []
    for attack, budget in keys:
        cells = [by_key.get((d, attack, budget)) for d in defenses]
        ok = [c for c in cells if c is not None and c.ok]
        first = ok[0]
        rates = [c.success_rate if c is not None and c.ok else None for c in cells]
        queries = _mean([c.mean_queries or 0.0 for c in ok])
        seconds = sum(c.wall_seconds or 0.0 for c in ok)
        rows.append([attack, f"{first.threat_model} {first.norm}", budget_label(budget),
                     _mean([r for r in rates if r is not None]), *rates, f"{queries:.0f}", f"{seconds:.1f}"])
    rows.sort(key=lambda r: -r[3])
    return Section("attacks (success rate in %)", headers, rows)


def backend(model: ModelRecord) -> str:
    """The backend that ran a defense's model ("torch", "keras (tensorflow)"); a wrapper or
    detector reports the backend of the model it wraps."""
    prov = model.provenance
    name = str(prov.get("backend", "torch"))
    return f"{name} ({prov['keras_backend']})" if prov.get("keras_backend") else name


def _model_file(model: ModelRecord) -> str:
    prov = model.provenance
    if not (prov.get("path") or prov.get("sha256")):
        return ""
    return (", model file" + (f" {prov['path']}" if prov.get("path") else "")
            + (f" (sha256 {prov['sha256'][:12]}…)" if prov.get("sha256") else ""))


def worst_case(model: ModelRecord, matches: list[MatchRecord]) -> float | None:
    """Per-example worst case over the ok matches given (one defense, one norm and budget)."""
    ok = [m for m in matches if m.ok and m.robust_mask]
    if not ok:
        return None
    robust = list(model.clean_mask)
    for m in ok:
        robust = [r and s for r, s in zip(robust, m.robust_mask)]
    return sum(robust) / max(len(robust), 1)


def _long_rows(models: list[ModelRecord], matches: list[MatchRecord]) -> list[dict[str, object]]:
    clean = {m.defense: m.clean_accuracy for m in models}
    backends = {m.defense: backend(m) for m in models}
    return [{"defense": m.defense, "attack": m.attack, "attack_id": m.attack_id, "norm": m.norm,
             "knowledge": m.knowledge, "threat_model": m.threat_model, "budget": m.budget, "status": m.status,
             "clean_accuracy": clean.get(m.defense), "robust_accuracy": m.robust_accuracy,
             "success_rate": m.success_rate, "mean_distance": m.mean_distance,
             "mean_queries": m.mean_queries, "wall_seconds": m.wall_seconds,
             "backend": backends.get(m.defense)} for m in matches]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
