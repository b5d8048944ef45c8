"""The results database: one SQLite file, one row per match, committed as each match ends.

Only the driver process writes. A run is identified by its id; ``--resume`` continues the
newest unfinished run with the same configuration hash and skips every match already stored.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    config_json TEXT NOT NULL,
    source TEXT,
    source_text TEXT,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'running',
    started REAL NOT NULL,
    finished REAL,
    provenance_json TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS models (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    defense TEXT NOT NULL,
    defense_id TEXT NOT NULL,
    defense_kind TEXT NOT NULL,
    config_json TEXT NOT NULL,
    clean_accuracy REAL NOT NULL,
    clean_mask TEXT NOT NULL,
    false_positive_rate REAL,
    cache_key TEXT,
    train_seconds REAL,
    checks_json TEXT NOT NULL DEFAULT '{}',
    provenance_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, defense)
);
CREATE TABLE IF NOT EXISTS matches (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    defense TEXT NOT NULL,
    attack TEXT NOT NULL,
    budget REAL NOT NULL,
    attack_id TEXT NOT NULL,
    attack_config_json TEXT NOT NULL,
    norm TEXT NOT NULL,
    knowledge TEXT NOT NULL,
    status TEXT NOT NULL,
    robust_accuracy REAL,
    success_rate REAL,
    mean_distance REAL,
    mean_queries REAL,
    robust_mask TEXT,
    error TEXT,
    wall_seconds REAL,
    started REAL,
    finished REAL,
    provenance_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, defense, attack, budget)
);
"""

# Columns added after the first release: older databases get them on open.
MIGRATIONS = (
    ("models", "checks_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("matches", "provenance_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("models", "provenance_json", "TEXT NOT NULL DEFAULT '{}'"),
)


@dataclass
class MatchRow:
    """One (defense, attack, budget) result. ``robust_mask`` has one 0/1 per evaluated sample."""

    defense: str
    attack: str
    budget: float
    attack_id: str
    attack_config: dict[str, Any]
    norm: str
    knowledge: str
    status: str
    robust_accuracy: float | None = None
    success_rate: float | None = None
    mean_distance: float | None = None
    mean_queries: float | None = None
    robust_mask: str | None = None
    error: str | None = None
    wall_seconds: float | None = None
    started: float | None = None
    finished: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


class Store:
    """A results database in SQLite."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path))
        self.conn.row_factory = sqlite3.Row
        self.conn.executescript(SCHEMA)
        for table, column, decl in MIGRATIONS:
            present = {r["name"] for r in self.conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def start_run(self, name: str, config_hash: str, config: dict, source: str | None,
                  source_text: str | None, seed: int, started: float, provenance: dict) -> int:
        cur = self.conn.execute(
            "INSERT INTO runs (name, config_hash, config_json, source, source_text, seed, started, provenance_json)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, config_hash, json.dumps(config), source, source_text, seed, started, json.dumps(provenance)),
        )
        self.conn.commit()
        return int(cur.lastrowid)

    def resumable_run(self, config_hash: str) -> int | None:
        row = self.conn.execute(
            "SELECT id FROM runs WHERE config_hash = ? AND status != 'finished' ORDER BY id DESC LIMIT 1",
            (config_hash,),
        ).fetchone()
        return None if row is None else int(row["id"])

    def finish_run(self, run_id: int, finished: float, status: str = "finished") -> None:
        self.conn.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, finished, run_id))
        self.conn.commit()

    def save_model(self, run_id: int, **fields: Any) -> None:
        fields["config_json"] = json.dumps(fields.pop("config"))
        fields["checks_json"] = json.dumps(fields.pop("checks", {}))
        fields["provenance_json"] = json.dumps(fields.pop("provenance", {}))
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self.conn.execute(f"INSERT OR REPLACE INTO models (run_id, {cols}) VALUES (?, {marks})",
                          (run_id, *fields.values()))
        self.conn.commit()

    def save_match(self, run_id: int, row: MatchRow) -> None:
        data = asdict(row)
        data["provenance_json"] = json.dumps(data.pop("provenance"))
        data["attack_config_json"] = json.dumps(data.pop("attack_config"))
        cols = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        self.conn.execute(f"INSERT OR REPLACE INTO matches (run_id, {cols}) VALUES (?, {marks})",
                          (run_id, *data.values()))
        self.conn.commit()

    def examples_dir(self, run_id: int) -> Path:
        return self.path.with_suffix(".examples") / f"run{run_id}"

    def save_examples(self, run_id: int, defense: str, attack: str, tensors: dict[str, Any]) -> Path:
        """Adversarial examples of one match, as a weights-only loadable ``.pt`` file."""
        import torch

        folder = self.examples_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_slug(defense)}__{_slug(attack)}.pt"
        torch.save(tensors, path)
        return path

    def done_matches(self, run_id: int) -> set[tuple[str, str, float]]:
        rows = self.conn.execute("SELECT defense, attack, budget FROM matches WHERE run_id = ?", (run_id,))
        return {(r["defense"], r["attack"], r["budget"]) for r in rows}

    def latest_run(self) -> int | None:
        row = self.conn.execute("SELECT id FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else int(row["id"])

    def run(self, run_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()

    def models(self, run_id: int) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM models WHERE run_id = ? ORDER BY rowid", (run_id,)))

    def matches(self, run_id: int) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM matches WHERE run_id = ? ORDER BY rowid", (run_id,)))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def encode_mask(mask) -> str:
    """A boolean tensor or list as a compact '0101...' string."""
    return "".join("1" if bool(b) else "0" for b in mask.tolist())


def decode_mask(text: str) -> list[bool]:
    return [c == "1" for c in text]
