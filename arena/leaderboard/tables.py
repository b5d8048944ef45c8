"""Leaderboard tables: per defense, clean accuracy, adversarial accuracy per attack and budget,
and the per-example worst case over all attacks at each (norm, budget), the ranking key.

A sample counts as robust in the worst case at (norm, ε) only if it survived every attack of
that norm evaluated at ε (one run of a minimal attack is evaluated at every budget it lists).
Budgets of different norms are not comparable, so each norm gets its own table.

Defenses are ranked, per norm, as the run's ``rank_by`` says (the tournament file's key): by the
mean worst case over the norm's budgets (``"mean"``, the default) or by the worst case at one
primary budget per norm (``{ linf = 0.1 }``, RobustBench style; ties broken by the mean); the title,
``Section.ranking`` and the JSON's ``ranking`` say which, and a note says where a primary budget
has no result (that norm is then ranked by the mean). Every accuracy of a defenses' table carries
its sample count and 95 % Wilson interval (``Section.intervals``; see
:mod:`arena.leaderboard.stats`), as do the JSON and CSV rows (``samples``, ``ci_low``, ``ci_high``).

A worst case that lacks an attack it should cover (one that failed, timed out, crashed or never
ran; see :mod:`arena.leaderboard.coverage`) is *incomplete*: its cell is marked
(``Section.marks``), explained in a footnote, and its row is listed after the complete rows,
unranked (``Section.ranked`` counts the ranked rows): an incomplete worst case is an upper bound,
and ranking it would reward a defense for an attack failing against it (with a primary budget,
only a gap at that budget unranks a row: no other enters its rank). The attacks' table keeps
a failed attack's row, with the status in its cells and a score over the defenses it finished
against (none, rather than 0 %, where it finished against none).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from arena.errors import ConfigError
from arena.leaderboard import formats, stats
from arena.leaderboard.coverage import Coverage, Gap, Mark
from arena.leaderboard.flags import Flag, flags
from arena.leaderboard.labels import budget_label
from arena.leaderboard.stats import Interval
from arena.tournament.store import MatchRecord, MetricRecord, ModelRecord, Store

TEXT_FORMATS = formats.TEXT_FORMATS
FORMATS = (*TEXT_FORMATS, "csv", "json")
NOT_BUILT = "failed"  # the clean cell of a defense whose model could not be built


@dataclass
class Section:
    """One norm's table: a row per defense, ranked as ``ranking`` says (the mean worst case over
    the norm's budgets, or the worst case at one primary budget); ``marks`` are the incomplete
    cells by (row, column) index; the first ``ranked`` rows are ranked (all if None);
    ``intervals`` the 95 % Wilson interval of each accuracy cell by (row, column) index."""

    norm: str
    headers: list[str]
    rows: list[list[object]]
    marks: dict[tuple[int, int], Mark] = field(default_factory=dict)
    ranked: int | None = None
    intervals: dict[tuple[int, int], Interval] = field(default_factory=dict)
    ranking: str = ""

    @property
    def samples(self) -> int | None:
        """The sample count of every interval of the table, where they all have the same one."""
        counts = {iv.samples for iv in self.intervals.values()}
        return counts.pop() if len(counts) == 1 else None

    def row_samples(self, i: int) -> int | None:
        """The sample count of every interval of row ``i``, where they all have the same one."""
        counts = {iv.samples for (r, _), iv in self.intervals.items() if r == i}
        return counts.pop() if len(counts) == 1 else None

    def as_dict(self) -> dict[str, object]:
        key = "attack" if self.headers[:1] == ["defense"] else "defense"
        data: dict[str, object] = {
            "norm": self.norm, "headers": self.headers, "rows": self.rows,
            "ranked": len(self.rows) if self.ranked is None else self.ranked,
            "incomplete": [{"row": i, "name": self.rows[i][0], "column": self.headers[j],
                            "missing": [_gap_dict(g, key) for g in self.marks[(i, j)].gaps]}
                           for i, j in sorted(self.marks)]}
        if self.ranking:
            data["ranking"] = self.ranking
        if self.intervals:
            data["samples"] = self.samples
            data["intervals"] = [[self.intervals[(i, j)].as_dict() if (i, j) in self.intervals else None
                                  for j in range(len(row))] for i, row in enumerate(self.rows)]
        return data


@dataclass
class Leaderboard:
    title: str
    sections: list[Section]
    notes: list[str] = field(default_factory=list)
    long_rows: list[dict[str, object]] = field(default_factory=list)
    worst_cases: list[dict[str, object]] = field(default_factory=list)
    metric_sections: list[Section] = field(default_factory=list)
    metric_rows: list[dict[str, object]] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)  # the sanity flags (also in ``notes``, as text)
    ranking: dict[str, object] = field(default_factory=lambda: {"by": "mean"})  # how the defenses were ranked

    def render(self, fmt: str = "table") -> str:
        if fmt == "json":
            data = {"title": self.title, "notes": self.notes, "ranking": self.ranking,
                    "confidence": {"level": stats.CONFIDENCE, "method": stats.METHOD},
                    "results": self.long_rows,
                    "worst_cases": self.worst_cases, "tables": [s.as_dict() for s in self.sections],
                    "metrics": self.metric_rows, "metric_tables": [s.as_dict() for s in self.metric_sections],
                    "flags": [{"defense": f.defense, "check": f.check, "message": f.message,
                               "suggestion": f.suggestion} for f in self.flags]}
            return json.dumps(_finite(data), indent=2)
        if fmt == "csv":
            return formats.render_csv(self.csv_rows())
        if fmt not in TEXT_FORMATS:
            raise ConfigError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
        return formats.render_text(self, fmt)

    def csv_rows(self) -> list[dict[str, object]]:
        """The match rows, then one row per worst case, then one per metric value (``kind``:
        match, worst-case or metric), with ``complete`` and the ``missing`` attacks ("pgd:
        timed-out; cw: failed"); a metric row has its ``metric`` and ``value`` (empty for the
        other kinds). ``samples``, ``ci_low`` and ``ci_high`` are the sample count and 95 % Wilson
        interval of ``robust_accuracy`` (``clean_samples``, ``clean_ci_low``, ``clean_ci_high``
        those of ``clean_accuracy``)."""
        rows = [{**r, "kind": "match", "complete": _bool(r["status"] == "ok"), "missing": "", "metric": "",
                 "value": None} for r in self.long_rows]
        keys = list(rows[0]) if rows else [*_MATCH_KEYS, "kind", "complete", "missing", "metric", "value"]
        for w in self.worst_cases:
            row = dict.fromkeys(keys)
            row.update({k: v for k, v in w.items() if k in row})
            row.update(attack="worst case", attack_id="", kind="worst-case", complete=_bool(w["complete"]),
                       status="complete" if w["complete"] else "incomplete",
                       missing="; ".join(f"{g['attack']}: {g['status']}" for g in w["missing"]), metric="")
            rows.append(row)
        for v in self.metric_rows:
            row = dict.fromkeys(keys)
            row.update(defense=v["defense"], attack=v["attack"] or "", budget=v["budget"], status=v["status"],
                       kind="metric", complete=_bool(v["status"] == "ok"), missing=v["error"] or "",
                       metric=v["metric"], value=v["value"])
            rows.append(row)
        return rows


_MATCH_KEYS = ("defense", "attack", "attack_id", "norm", "knowledge", "threat_model", "budget", "status",
               "clean_accuracy", "robust_accuracy", "success_rate", "mean_distance", "mean_queries",
               "wall_seconds", "backend", "samples", "ci_low", "ci_high", "clean_samples", "clean_ci_low",
               "clean_ci_high")


def _bool(flag: bool) -> str:
    return "true" if flag else "false"


def _gap_dict(gap: Gap, key: str) -> dict[str, str]:
    name = gap.name[3:] if key == "defense" and gap.name.startswith("vs ") else gap.name
    return {key: name, "status": gap.status}


def _finite(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


CONDITIONAL = " (conditional)"  # the suffix of a cascade's per-attack column after the first


def build(store: Store, run_id: int | None = None, *, dataset: str | None = None,
          budget: float | None = None, knowledge: str | None = None) -> Leaderboard:
    """The leaderboard of ``run_id`` (the newest run by default), optionally filtered to one
    dataset (the run's), one budget and one threat model (``knowledge``: a match's stored
    ``threat_model``, so ``transfer`` and ``black-box`` are told apart)."""
    run_id = run_id if run_id is not None else store.latest_run()
    run = store.run(run_id) if run_id is not None else None
    if run is None:
        runs = ", ".join(map(str, store.run_ids())) or "none"
        missing = "no tournament run found" if run_id is None else f"no run {run_id} in {store.path.name}"
        raise ConfigError(f"{store.path}: {missing}; runs: {runs}")
    run_dataset = run.dataset
    if dataset is not None and dataset != run_dataset:
        raise ConfigError(f"{store.path}: run {run_id} is on dataset '{run_dataset}', not '{dataset}'")
    models, matches = store.models(run_id), store.matches(run_id)
    coverage = Coverage(run, models, matches)  # from every match: a filter must not hide a gap
    if budget is not None:
        present = sorted({m.budget for m in matches})
        matches = [m for m in matches if math.isclose(m.budget, budget, rel_tol=1e-9)]
        if not matches:
            listed = ", ".join(budget_label(b) for b in present) or "none"
            raise ConfigError(f"{store.path}: run {run_id} has no match at budget {budget:g}; budgets: {listed}")
    if knowledge is not None:
        matches = [m for m in matches if m.threat_model == knowledge]
    if (budget is not None or knowledge is not None) and not matches:
        raise ConfigError(f"{store.path}: no match of run {run_id} fits the filters")
    table = _Table(models, coverage, knowledge, cascade=bool(run.config.get("cascade")),
                   rank_by=run.config.get("rank_by"))
    sections = [table.section(norm, [m for m in matches if m.norm == norm])
                for norm in sorted({m.norm for m in matches if m.norm})]
    sections.append(table.attack_section(matches))
    notes = [f"run {run_id} is not finished (status {run.status}): results may be missing"] \
        if run.status != "finished" else []
    notes = list(getattr(store, "notes", [])) + notes  # a combined view says what it combines
    found = flags(models, matches, cascade=bool(run.config.get("cascade")))
    notes += [f"sanity: {flag}" for flag in found]
    if any(backend(m) != "torch" for m in models):  # say which backend ran each entrant
        notes += [f"{m.defense}: backend {backend(m)}{_model_file(m)}" for m in models]
    notes += [f"{m.defense}: detector flags {100 * m.false_positive_rate:.1f}% of clean inputs"
              for m in models if m.false_positive_rate is not None]
    notes += [f"{m.attack} vs {m.defense} (ε={budget_label(m.budget)}): {m.status}: {m.error}"
              for m in matches if not m.ok]
    notes += _judging_notes(matches)
    notes += table.notes()
    if run.config.get("cascade"):
        notes.append("cascade: each attack attacked only the samples that every earlier attack of its norm left "
                     "robust (at that ε or a smaller one); a '(conditional)' column is the robust accuracy after "
                     "that attack and all earlier ones, and the worst case is exact")
    title = (f"{run.name} on {run_dataset} (run {run_id}, seed {run.seed}): accuracy in %, "
             f"defenses ranked by {table.ranking_text()}")
    shown = {(m.defense, m.attack, m.budget) for m in matches}
    values = [v for v in store.metrics(run_id) if v.scope == "model" or (v.defense, v.attack, v.budget) in shown]
    notes += [f"metric {v.metric} on {_where(v)}: {v.status}: {v.error}" for v in values if v.status == "failed"]
    return Leaderboard(title, sections, notes, _long_rows(models, matches), table.worst_cases,
                       metric_sections(values, [m.defense for m in models]), [_metric_dict(v) for v in values],
                       flags=found, ranking=table.ranking())


def _where(v: MetricRecord) -> str:
    return v.defense if v.scope == "model" else f"{v.attack} vs {v.defense} (ε={budget_label(v.budget)})"


def _metric_dict(v: MetricRecord) -> dict[str, object]:
    return {"metric": v.metric, "metric_id": v.metric_id, "scope": v.scope, "defense": v.defense,
            "attack": v.attack or None, "budget": v.budget if v.scope == "match" else None,
            "status": v.status, "value": v.value, "error": v.error, "config": v.config}


DIRECTION = {"higher": " (↑)", "lower": " (↓)"}


def metric_value(v: MetricRecord | None) -> str | None:
    """A metric's cell: its value to four significant digits, else its status (``n/a``,
    ``failed``); None where it was not measured."""
    if v is None:
        return None
    return f"{v.value:.4g}" if v.ok and v.value is not None else v.status


def metric_sections(values: list[MetricRecord], defenses: list[str]) -> list[Section]:
    """The metrics as tables: one of every model metric (a row per defense, a column per metric),
    then one per match metric (a row per defense, a column per attack and budget). Headers carry
    the metric's direction where it has one (↑ higher is better, ↓ lower)."""
    better = {v.metric: v.provenance.get("better") for v in values}

    def arrow(name: str) -> str:
        return DIRECTION.get(better.get(name) or "", "")

    out = []
    per_model = [v for v in values if v.scope == "model"]
    if per_model:
        labels = list(dict.fromkeys((v.metric, v.metric_id) for v in per_model))
        cell = {(v.defense, v.metric): v for v in per_model}
        rows = [[d, *(metric_value(cell.get((d, name))) for name, _ in labels)]
                for d in defenses if any((d, name) in cell for name, _ in labels)]
        out.append(Section("metrics per model", ["defense", *(name + arrow(name) for name, _ in labels)], rows))
    for name in dict.fromkeys(v.metric for v in values if v.scope == "match"):
        mine = [v for v in values if v.scope == "match" and v.metric == name]
        columns = list(dict.fromkeys((v.attack, v.budget) for v in mine))
        cell = {(v.defense, v.attack, v.budget): v for v in mine}
        rows = [[d, *(metric_value(cell.get((d, a, b))) for a, b in columns)]
                for d in defenses if any((d, a, b) in cell for a, b in columns)]
        out.append(Section(f"{name}{arrow(name)} per match",
                           ["defense", *(f"{a} ε={budget_label(b)}" for a, b in columns)], rows))
    return out


MEAN = "mean"  # rank_by's default: the mean worst case over a norm's budgets


def rank_by_budgets(value: object) -> tuple[dict[str, float], list[str]]:
    """A stored ``rank_by`` (the tournament file's key) as {norm: primary budget}, empty for the
    mean worst case, and a note for anything a crafted or older configuration holds that is not
    one (which then counts as the mean)."""
    if value is None or value == MEAN:
        return {}, []
    fallback = "; defenses ranked by mean worst case there"
    if not isinstance(value, dict):
        return {}, [f"rank_by: unreadable value {formats.plain(repr(value))[:80]} in the run's configuration"
                    + fallback]
    budgets, notes = {}, []
    for norm, budget in value.items():
        if (isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget)
                and budget > 0):
            budgets[str(norm)] = float(budget)
        else:
            notes.append(f"rank_by: {formats.plain(str(norm))[:40]}: unreadable budget "
                         f"{formats.plain(repr(budget))[:40]}" + fallback)
    return budgets, notes


class _Table:
    """Builds the sections of one leaderboard, collecting every worst case on the way. ``rank_by``
    is the run's stored ``rank_by``: ``"mean"`` (or None) ranks each norm's defenses by their mean
    worst case over its budgets, ``{norm: budget}`` by the worst case at that primary budget
    (RobustBench style; ties broken by the mean), the mean again for a norm it does not name."""

    def __init__(self, models: list[ModelRecord], coverage: Coverage, knowledge: str | None,
                 cascade: bool = False, rank_by: object = None) -> None:
        self.cascade = cascade
        self.models = {m.defense: m for m in models}
        self.defenses = coverage.defenses  # the built ones, then any that could not be built
        self.coverage, self.knowledge = coverage, knowledge
        self.worst_cases: list[dict[str, object]] = []
        self.rank_by, self._notes = rank_by_budgets(rank_by)
        self.chosen: dict[str, float | None] = {}  # norm -> the budget it was ranked at (None: the mean)

    def section(self, norm: str, matches: list[MatchRecord]) -> Section:
        attacks = list(dict.fromkeys(m.attack for m in matches))
        columns = [(a, b) for a in attacks for b in sorted({m.budget for m in matches if m.attack == a})]
        budgets = sorted({m.budget for m in matches})
        by_key = {(m.defense, m.attack, m.budget): m for m in matches}
        # in a cascade, every direct attack after the first saw only the survivors: conditional
        direct = [a for a in attacks if any(m.attack == a and m.threat_model != "transfer" for m in matches)]
        conditional = set(direct[1:]) if self.cascade else set()
        headers = ["defense", "clean"] + [f"{a} ε={budget_label(b)}" + (CONDITIONAL if a in conditional else "")
                                          for a, b in columns]
        headers += [f"worst ε={budget_label(b)}" for b in budgets]
        primary = self._primary(norm, budgets)
        first_worst = len(headers) - len(budgets)
        keyed = [first_worst + budgets.index(primary)] if primary is not None else \
            list(range(first_worst, len(headers)))
        rows = []
        for d in self.defenses:
            model = self.models.get(d)
            samples = len(model.clean_mask) if model else 0
            cells: list[object] = [d, model.clean_accuracy if model else NOT_BUILT]
            intervals = {1: stats.of_mask(model.clean_mask)} if model else {}
            for a, b in columns:
                m = by_key.get((d, a, b))
                cells.append(None if m is None else m.robust_accuracy if m.ok else m.status)
                if m is not None and m.ok:
                    intervals[len(cells) - 1] = _match_interval(m, samples)
            marks = {}
            for b in budgets:
                counts = worst_counts(model, [m for m in matches if m.defense == d and m.budget == b]) \
                    if model else None
                value = counts[0] / max(counts[1], 1) if counts else None
                gaps = self.coverage.worst_gaps(d, norm, b, self.knowledge)
                if gaps:
                    marks[len(cells)] = Mark(f"{d}, worst ε={budget_label(b)}", gaps)
                interval = stats.wilson(*counts) if counts else None
                intervals[len(cells)] = interval
                self._note_worst(d, norm, b, value, gaps, interval)
                cells.append(value)
            values = [v for v in cells[first_worst:] if isinstance(v, float)]
            key = cells[keyed[0]] if primary is not None else _mean(values)
            unranked = any(j in marks for j in keyed)
            order = (unranked, not isinstance(key, float), -(key if isinstance(key, float) else 0.0), -_mean(values))
            rows.append((cells, marks, {j: iv for j, iv in intervals.items() if iv is not None}, unranked, order))
        rows.sort(key=lambda r: r[4])
        section = _ranked(norm, headers, [(c, m, iv, u) for c, m, iv, u, _ in rows])
        section.ranking = (f"worst case at ε={budget_label(primary)}" if primary is not None else
                           "mean worst case" + (f" over ε = {', '.join(budget_label(b) for b in budgets)}"
                                                if len(budgets) > 1 else ""))
        return section

    def _primary(self, norm: str, budgets: list[float]) -> float | None:
        """The budget ``norm`` is ranked at (None: the mean), noting a primary budget with no result."""
        wanted = self.rank_by.get(norm)
        chosen = None if wanted is None else next(
            (b for b in budgets if math.isclose(b, wanted, rel_tol=1e-9)), None)
        if wanted is not None and chosen is None:
            listed = ", ".join(budget_label(b) for b in budgets) or "none"
            self._notes.append(f"rank_by: no {norm} attack has a result at its primary budget "
                               f"ε={budget_label(wanted)} (budgets: {listed}); {norm} is ranked by mean worst case")
        self.chosen[norm] = chosen
        return chosen

    def ranking_text(self) -> str:
        """How the defenses were ranked, for the title: ``mean worst case``, or per norm."""
        if not self.rank_by:
            return "mean worst case"
        if not self.chosen:
            return "worst case at " + ", ".join(f"{n} ε={budget_label(b)}" for n, b in self.rank_by.items())
        parts = [f"worst case at {n} ε={budget_label(b)}" for n, b in self.chosen.items() if b is not None]
        parts += [f"mean worst case in {n}" for n, b in self.chosen.items() if b is None]
        return ", ".join(parts)

    def ranking(self) -> dict[str, object]:
        """How the defenses were ranked, for machines: ``{"by": "mean"}``, or ``{"by": "budget",
        "budgets": {norm: primary budget}, "norms": {norm: the budget it was ranked at, or None
        for the mean}}``."""
        if not self.rank_by:
            return {"by": MEAN}
        return {"by": "budget", "budgets": dict(self.rank_by), "norms": dict(self.chosen)}

    def notes(self) -> list[str]:
        """What the leaderboard says of its ranking: a ``rank_by`` it could not read or apply."""
        out = list(self._notes)
        out += [f"rank_by: {n} = {budget_label(b)} names a norm with no result in this leaderboard"
                for n, b in self.rank_by.items() if n not in self.chosen]
        if self.rank_by and any(b is None and n not in self.rank_by for n, b in self.chosen.items()):
            out.append("rank_by names no primary budget for "
                       + ", ".join(n for n, b in self.chosen.items() if b is None and n not in self.rank_by)
                       + ": ranked by mean worst case there")
        return out

    def _note_worst(self, d: str, norm: str, b: float, value: float | None, gaps: tuple[Gap, ...],
                    interval: Interval | None = None) -> None:
        model = self.models.get(d)
        self.worst_cases.append({
            "defense": d, "norm": norm, "budget": b, "threat_model": self.knowledge or "",
            "clean_accuracy": model.clean_accuracy if model else None, "robust_accuracy": value,
            "backend": backend(model) if model else None, "complete": not gaps,
            "missing": [g.as_dict() for g in gaps], **stats.fields(interval),
            **stats.fields(stats.of_mask(model.clean_mask) if model else None, "clean_")})

    def attack_section(self, matches: list[MatchRecord]) -> Section:
        """Attacks ranked by mean success against every defense (NIPS 2017 competition style: an
        attack scores the share of defended, correctly classified samples it breaks; a targeted
        run, the share of (sample, target) pairs whose target it reaches). Its scores are means of
        rates over defenses, so they carry no binomial interval."""
        keys = list(dict.fromkeys((m.attack, m.budget) for m in matches))
        by_key = {(m.defense, m.attack, m.budget): m for m in matches}
        headers = ["attack", "threat model", "ε", "score"] + [f"vs {d}" for d in self.defenses]
        headers += ["queries", "seconds"]
        rows = []
        for attack, budget in keys:
            found = [by_key.get((d, attack, budget)) for d in self.defenses]
            first = next(m for m in matches if (m.attack, m.budget) == (attack, budget))
            ok = [c for c in found if c is not None and c.ok]
            rates = [None if c is None else c.success_rate if c.ok else c.status for c in found]
            score = _mean([c.success_rate for c in ok if c.success_rate is not None]) if ok else None
            queries = f"{_mean([c.mean_queries or 0.0 for c in ok]):.0f}" if ok else None
            seconds = f"{sum(c.wall_seconds or 0.0 for c in ok):.1f}" if ok else None
            gaps = self.coverage.attack_gaps(attack, budget)
            marks = {3: Mark(f"{attack} ε={budget_label(budget)}, score", gaps)} if gaps else {}
            targeted = first.provenance.get("targets")
            threat = f"{first.threat_model} {first.norm}" + (f", targeted ({targeted})" if targeted else "")
            rows.append(([attack, threat, budget_label(budget), score, *rates,
                          queries, seconds], marks))
        rows.sort(key=lambda r: (bool(r[1]), r[0][3] is None, -(r[0][3] or 0.0)))
        section = _ranked("attacks (success rate in %)", headers, [(c, m, {}, bool(m)) for c, m in rows])
        section.ranking = "mean success rate against every defense"
        return section


def _match_interval(m: MatchRecord, samples: int) -> Interval | None:
    """A finished match's interval: from its robust mask, else (no mask stored) from its robust
    accuracy over the model's evaluated samples, where that is a whole count of them."""
    return stats.of_mask(m.robust_mask) if m.robust_mask else stats.of_share(m.robust_accuracy, samples)


def _ranked(norm: str, headers: list[str],
            rows: list[tuple[list[object], dict[int, Mark], dict[int, Interval], bool]]) -> Section:
    """A section from sorted (cells, marks by column, intervals by column, unranked) rows, the
    ranked rows first."""
    marks = {(i, j): mark for i, (_, row_marks, _, _) in enumerate(rows) for j, mark in row_marks.items()}
    intervals = {(i, j): iv for i, (_, _, row_ivs, _) in enumerate(rows) for j, iv in row_ivs.items()}
    return Section(norm, headers, [cells for cells, *_ in rows], marks, sum(not u for *_, u in rows), intervals)


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
    counts = worst_counts(model, matches)
    return None if counts is None else counts[0] / max(counts[1], 1)


def worst_counts(model: ModelRecord, matches: list[MatchRecord]) -> tuple[int, int] | None:
    """The per-example worst case as (robust samples, evaluated samples): a sample is robust when
    it is correct clean and survived every ok match given; None where no match has a mask."""
    ok = [m for m in matches if m.ok and m.robust_mask]
    if not ok:
        return None
    robust = list(model.clean_mask)
    for m in ok:
        robust = [r and s for r, s in zip(robust, m.robust_mask)]
    return sum(robust), len(robust)


def _judging_notes(matches: list[MatchRecord]) -> list[str]:
    """How the examples were judged, where that is not one plain pass: randomised defenses (the
    majority of N passes), minimal attacks at a budget (their example clipped to it), targeted
    runs (what counts as the attack's success)."""
    notes = []
    judged: dict[str, dict[str, Any]] = {}
    for m in matches:
        if m.ok and isinstance(m.provenance.get("judged"), dict):
            judged.setdefault(m.defense, m.provenance["judged"])
    notes += [f"{d}: randomised; each example is judged on {j.get('passes')} passes and breaks the model "
              "when it fools the majority of them, clean accuracy likewise (the mean accuracy over passes is in "
              "the JSON results); its intervals count each sample once, by its majority verdict, and cover the "
              "sampling of test examples with the passes' randomness inside each verdict, not the pass-mean "
              "accuracy (a mean of per-sample shares of passes, whose interval would be at most as wide)"
              for d, j in judged.items()]
    if any(math.isinf(m.budget) for m in matches):
        notes.append("minimal-perturbation attacks are scored at each ε on their example clipped to ε "
                     "(projected onto the ε-ball), so a column is never weaker than the clipped example")
    if any(m.provenance.get("targets") for m in matches):
        notes.append("targeted runs: robust accuracy counts a sample broken when any of its examples is "
                     "misclassified; the attack's score is the share of (sample, target) pairs reached")
    return notes


def _long_rows(models: list[ModelRecord], matches: list[MatchRecord]) -> list[dict[str, object]]:
    """One dict per match (JSON ``results``, the CSV's match rows), each accuracy with its sample
    count and 95 % Wilson interval (``samples``, ``ci_low``, ``ci_high``; ``clean_`` ones)."""
    clean = {m.defense: m.clean_accuracy for m in models}
    backends = {m.defense: backend(m) for m in models}
    clean_iv = {m.defense: stats.of_mask(m.clean_mask) for m in models}
    samples = {m.defense: len(m.clean_mask) for m in models}
    return [{"defense": m.defense, "attack": m.attack, "attack_id": m.attack_id, "norm": m.norm,
             "knowledge": m.knowledge, "threat_model": m.threat_model, "budget": m.budget, "status": m.status,
             "clean_accuracy": clean.get(m.defense), "robust_accuracy": m.robust_accuracy,
             "success_rate": m.success_rate, "mean_distance": m.mean_distance,
             "mean_queries": m.mean_queries, "wall_seconds": m.wall_seconds,
             "backend": backends.get(m.defense), "targets": m.provenance.get("targets"),
             "judged_passes": (m.provenance.get("judged") or {}).get("passes"),
             "pass_accuracy": (m.provenance.get("judged") or {}).get("mean_accuracy"),
             **stats.fields(_match_interval(m, samples.get(m.defense, 0)) if m.ok else None),
             **stats.fields(clean_iv.get(m.defense), "clean_")} for m in matches]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
