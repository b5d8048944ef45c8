"""A leaderboard that grows: the newest result of each (defense, attack, budget) over the runs of
one or more results databases, read as if it were one run.

:class:`Combined` reads like a :class:`~arena.tournament.store.Store` holding a single run (the
same ``run``, ``models``, ``matches``, ``metrics``, ``latest_run`` and ``run_ids``), so every
leaderboard format, the plots and the published site take it as they take a store.

What is combined. Results of different runs can stand in one table only when they were measured
on the same samples: the runs' dataset (id and params), seed and number of samples must agree.
The newest run of all (by start time) sets them; a run of a database that differs is left out
and named in a note, and a database none of whose runs fits is a one-line error. Then:

- each defense's **model row** is its newest one;
- each (defense, attack, budget) takes its **newest row** among those that stand on that model
  (same trained weights' cache key and clean predictions; rows measured on another model of the
  same name are left out and counted in a note);
- each attack is the **newest configuration** of its name: rows of an older configuration of an
  attack of the same name are left out, so one column never mixes two attacks;
- metric values go with the model and match rows they belong to.

The combined run's configuration is the newest run's, its defense and attack entries the union
of the runs' entries (newest first), so that coverage (which attacks a worst case must cover)
follows every attack shown. Each record keeps its own run id; the notes say which runs (of which
databases) the table is taken from.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from arena.errors import ConfigError
from arena.tournament.records import MatchRecord, MetricRecord, ModelRecord, RunRecord
from arena.tournament.store import Store, model_basis


def samples_of(run: RunRecord) -> tuple[str, Any, Any]:
    """What fixes a run's evaluated samples: dataset (id and params), seed, number of samples."""
    cfg = run.config
    dataset = cfg.get("dataset")
    if isinstance(dataset, str):
        dataset = {"id": dataset, "params": {}}
    return json.dumps(dataset, sort_keys=True), cfg.get("seed", run.seed), cfg.get("samples")


def describe_samples(run: RunRecord) -> str:
    dataset, seed, samples = samples_of(run)
    return f"dataset '{run.dataset}', seed {seed}, {samples} samples"


class Combined:
    """The newest result of each pair over the runs of ``stores`` (see the module docstring),
    as one read-only run. ``stores`` are open :class:`Store`\\ s, the first one naming the view
    in messages (``path``)."""

    def __init__(self, stores: list[Store]) -> None:
        if not stores:
            raise ValueError("no results database to combine")
        self.stores = stores
        self.path = stores[0].path
        runs = [(store, run) for store in stores for run in map(store.run, store.run_ids()) if run is not None]
        if not runs:
            raise ConfigError(f"{self.path}: no tournament run found; runs: none")
        order = {id(s): i for i, s in enumerate(stores)}
        runs.sort(key=lambda sr: (sr[1].started, order[id(sr[0])], sr[1].id))
        newest = runs[-1][1]
        target = samples_of(newest)
        self.runs = [(s, r) for s, r in runs if samples_of(r) == target]
        self.notes: list[str] = []
        for store in stores:
            theirs = [r for s, r in runs if s is store]
            if theirs and not any(s is store for s, _ in self.runs):
                raise ConfigError(f"{store.path}: its runs are on {describe_samples(theirs[-1])}, not "
                                  f"{describe_samples(newest)} as {runs[-1][0].path.name}'s run "
                                  f"{newest.id}: results on other samples cannot be combined")
        left_out = [f"{s.path.name} run {r.id} ({describe_samples(r)})" for s, r in runs
                    if samples_of(r) != target]
        if left_out:
            self.notes.append(f"left out, measured on other samples: {'; '.join(left_out)} "
                              "(see them with --run)")
        self._combine(newest)

    # ------------------------------------------------------------- the Store interface
    def run_ids(self) -> list[int]:
        return [self._run.id]

    def latest_run(self) -> int:
        return self._run.id

    def run(self, run_id: int) -> RunRecord | None:
        return self._run if run_id == self._run.id else None

    def models(self, run_id: int) -> list[ModelRecord]:
        return list(self._models) if run_id == self._run.id else []

    def matches(self, run_id: int) -> list[MatchRecord]:
        return list(self._matches) if run_id == self._run.id else []

    def metrics(self, run_id: int) -> list[MetricRecord]:
        return list(self._metrics) if run_id == self._run.id else []

    # ------------------------------------------------------------- combining
    def _combine(self, newest: RunRecord) -> None:
        models: dict[str, tuple[Store, ModelRecord]] = {}  # by defense: the newest
        per_run: list[tuple[Store, RunRecord, dict[str, ModelRecord], list[MatchRecord]]] = []
        for store, run in self.runs:
            mine = {m.defense: m for m in store.models(run.id)}
            models.update({d: (store, m) for d, m in mine.items()})
            per_run.append((store, run, mine, store.matches(run.id)))
        basis = {d: model_basis(m.cache_key, m.clean_mask) for d, (_, m) in models.items()}
        attack_config: dict[str, tuple[str, str]] = {}  # by attack label: its newest configuration
        for _, _, _, matches in per_run:
            for m in matches:
                attack_config[m.attack] = (m.attack_id, json.dumps(m.attack_config, sort_keys=True))
        chosen: dict[tuple[str, str, float], tuple[Store, MatchRecord]] = {}
        other_model: set[tuple[str, int]] = set()
        for store, run, mine, matches in per_run:
            for m in matches:
                own = mine.get(m.defense)
                if m.defense not in basis or own is None or model_basis(own.cache_key, own.clean_mask) != basis[m.defense]:
                    other_model.add((f"{store.path.name} run {run.id}", m.defense))
                    continue
                if attack_config[m.attack] != (m.attack_id, json.dumps(m.attack_config, sort_keys=True)):
                    continue
                chosen[(m.defense, m.attack, m.budget)] = (store, m)
        for where, defense in sorted(other_model):
            self.notes.append(f"{defense}: the results of {where} stand on another model of that name "
                              "and are not shown")
        self._models = [m for _, m in models.values()]
        self._matches = [m for _, m in chosen.values()]
        wanted_models = {(id(s), m.run_id, m.defense) for s, m in models.values()}
        wanted_matches = {(id(s), m.run_id, m.defense, m.attack, m.budget) for s, m in chosen.values()}
        metrics: list[MetricRecord] = []
        for store, run in self.runs:
            for v in store.metrics(run.id):
                if v.scope == "model" and (id(store), run.id, v.defense) in wanted_models:
                    metrics.append(v)
                elif v.scope != "model" and (id(store), run.id, v.defense, v.attack, v.budget) in wanted_matches:
                    metrics.append(v)
        self._metrics = sorted(metrics, key=lambda v: v.scope != "model")
        self._run = self._merged_run(newest)
        used = {(id(s), m.run_id) for s, m in [*models.values(), *chosen.values()]}
        sources = [(s.path.name, r.id) for s, r in self.runs if (id(s), r.id) in used]
        if len(sources) > 1 or len(self.stores) > 1:
            listed = ", ".join(f"{name} run {run_id}" for name, run_id in sources)
            self.notes.insert(0, f"combined: the newest result of each defense × attack × budget, from {listed}")

    def _merged_run(self, newest: RunRecord) -> RunRecord:
        """The newest run's record with the union of every combined run's entries."""
        config = dict(newest.config)
        for key in ("defenses", "attacks"):
            entries: dict[str, Any] = {}
            for _, run in self.runs:
                for e in run.config.get(key) or []:
                    if isinstance(e, dict):
                        entries[str(e.get("name") or e.get("id"))] = e
            config[key] = list(entries.values())
        statuses = {r.status for _, r in self.runs}
        status = "finished" if statuses == {"finished"} else newest.status
        names = list(dict.fromkeys(r.name for _, r in self.runs))
        return replace(newest, name=" + ".join(names), config=config, status=status)


def open_view(paths: list[Path], run_id: int | None) -> Store | Combined:
    """What ``arena leaderboard`` and ``arena publish`` read: one run of one database with
    ``--run``, else the combination of every database's runs (:class:`Combined`)."""
    if run_id is not None and len(paths) > 1:
        raise ConfigError("--run names a run of one database; give one database with it")
    stores = [Store(p, readonly=True) for p in paths]
    if run_id is not None:
        return stores[0]
    return Combined(stores)
