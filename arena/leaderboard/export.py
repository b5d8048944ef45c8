"""One JSON file per defense with what a public leaderboard keeps of it (``arena export``).

Each file holds the entrant (label, plugin id, kind, config, architecture, backend, paper link
if the entry gives one), the data it was trained and evaluated on, its clean accuracy, and per
norm and budget its worst-case robust accuracy with the 95 % interval, whether that worst case
is complete (and which attacks it lacks), each attack's robust accuracy, and ``broken_by``: per
evaluated sample, the attack that broke it (the first in the file's order, among the attacks of
that norm that finished), ``"clean"`` where the clean input is already misclassified, or
``null`` where the sample is robust. Provenance names the runs (and databases) the numbers come
from, the arena's version and each plugin's distribution and version.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from arena.leaderboard import plots, tables
from arena.tournament.records import MatchRecord, ModelRecord, RunRecord

FORMAT = "arena-defense-export/1"


def export_defenses(store: Any, run_id: int | None, out_dir: str | Path) -> list[Path]:
    """Write ``<defense>.json`` for every defense of the leaderboard of ``store`` (a Store or a
    :class:`~arena.leaderboard.combine.Combined` view) into ``out_dir``; return the paths."""
    board = tables.build(store, run_id)
    run_id = run_id if run_id is not None else store.latest_run()
    run = store.run(run_id)
    models, matches = store.models(run_id), store.matches(run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slugs = plots.unique_slugs([m.defense for m in models])
    paths = []
    for model in models:
        data = defense_record(run, model, [m for m in matches if m.defense == model.defense],
                              [w for w in board.worst_cases if w["defense"] == model.defense],
                              getattr(store, "stores", None) or [store])
        path = out / f"{slugs[model.defense]}.json"
        path.write_text(json.dumps(tables._finite(data), indent=2) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def defense_record(run: RunRecord, model: ModelRecord, matches: list[MatchRecord],
                   worst_cases: list[dict[str, Any]], stores: list[Any]) -> dict[str, Any]:
    """The export of one defense (see the module docstring)."""
    cfg = run.config
    entry = next((e for e in cfg.get("defenses") or [] if isinstance(e, dict)
                  and (e.get("name") or e.get("id")) == model.defense), {})
    clean = list(model.clean_mask)
    order = [str(e.get("name") or e.get("id")) for e in cfg.get("attacks") or [] if isinstance(e, dict)]
    robust = []
    for w in worst_cases:
        if w.get("threat_model"):
            continue
        mine = sorted((m for m in matches if m.norm == w["norm"] and m.budget == w["budget"]),
                      key=lambda m: order.index(m.attack) if m.attack in order else len(order))
        robust.append({**{k: v for k, v in w.items() if k not in ("defense", "threat_model", "backend")},
                       "attacks": {m.attack: (m.robust_accuracy if m.ok else m.status) for m in mine},
                       "broken_by": broken_by(clean, mine)})
    runs = sorted({m.run_id for m in matches} | {model.run_id})
    return {
        "format": FORMAT,
        "defense": model.defense, "defense_id": model.defense_id, "kind": model.defense_kind,
        "config": model.config, "architecture": entry.get("architecture") or cfg.get("architecture"),
        "paper": entry.get("paper"),
        "backend": tables.backend(model), "model": {"cache_key": model.cache_key, **model.provenance},
        "training_data": {"dataset": cfg.get("dataset"), "seed": cfg.get("seed", run.seed),
                          "training": cfg.get("training") or {}},
        "samples": len(clean), "clean_accuracy": model.clean_accuracy,
        "robust": robust,
        "provenance": {"databases": [str(s.path) for s in stores], "runs": runs,
                       "packages": run.provenance.get("packages"),
                       "defense_plugin": next((m.provenance.get("defense_plugin") for m in matches), None),
                       "attack_plugins": {m.attack: m.provenance.get("attack_plugin") for m in matches},
                       "config_hash": run.config_hash},
    }


def broken_by(clean: list[bool], matches: list[MatchRecord]) -> list[str | None]:
    """Per sample: ``"clean"`` if misclassified without attack, else the first of ``matches``
    (ok, with a mask) that broke it, else None (robust against all of them)."""
    out: list[str | None] = []
    usable = [m for m in matches if m.ok and m.robust_mask]
    for i, correct in enumerate(clean):
        if not correct:
            out.append("clean")
            continue
        out.append(next((m.attack for m in usable if not m.robust_mask[i]), None))
    return out
