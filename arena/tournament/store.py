"""The results database: one SQLite file, one row per match, committed as each match ends.

Only the driver process writes. A run is identified by its id; ``--resume`` continues the
newest unfinished run with the same configuration hash and skips every match already stored.

What comes out is typed: :class:`RunRecord`, :class:`ModelRecord` and :class:`MatchRecord`,
with the JSON columns decoded to dicts and the masks (stored as compact ``'0101'`` text) decoded
to tuples of bools, once, here. Readers use their attributes.

The schema is versioned with ``PRAGMA user_version``: a new file is created at
:data:`SCHEMA_VERSION`; an older one is migrated on open, one step of :data:`MIGRATIONS` at a
time, inside one transaction; a newer one is refused with a :class:`~arena.errors.ConfigError`.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from arena.errors import ConfigError

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
    threat_model TEXT NOT NULL DEFAULT '',
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

# Columns that unversioned (user_version 0) databases may lack: they were added on open, before
# the schema had a version.
LEGACY_COLUMNS = (
    ("models", "checks_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("matches", "provenance_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("models", "provenance_json", "TEXT NOT NULL DEFAULT '{}'"),
)


def threat_model_of(knowledge: str, provenance: dict[str, Any]) -> str:
    """The threat model a match is filed and shown under: its attack's knowledge, except that a
    transfer attack (examples crafted on a surrogate entry; stored as black-box, since the target
    is never queried) is ``transfer``."""
    return "transfer" if provenance.get("surrogate") else knowledge


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _to_v1(conn: sqlite3.Connection) -> None:
    """Version 0 -> 1: the columns added before versioning, and ``matches.threat_model`` filled
    from each row's knowledge and provenance."""
    for table, column, decl in (*LEGACY_COLUMNS, ("matches", "threat_model", "TEXT NOT NULL DEFAULT ''")):
        if column not in _columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    rows = conn.execute("SELECT rowid, knowledge, provenance_json FROM matches").fetchall()
    conn.executemany("UPDATE matches SET threat_model = ? WHERE rowid = ?",
                     [(threat_model_of(k, json.loads(p or "{}")), rowid) for rowid, k, p in rows])


# MIGRATIONS[i] takes a database from version i to version i + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_to_v1,)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class MatchRow:
    """One (defense, attack, budget) result to store. ``robust_mask`` has one 0/1 per evaluated
    sample ('0101' text or a sequence of bools); ``threat_model`` is derived when left empty."""

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
    robust_mask: Any = None
    error: str | None = None
    wall_seconds: float | None = None
    started: float | None = None
    finished: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    threat_model: str = ""


@dataclass(frozen=True)
class RunRecord:
    """One tournament run."""

    id: int
    name: str
    config_hash: str
    config: dict[str, Any]
    source: str | None
    source_text: str | None
    seed: int
    status: str
    started: float
    finished: float | None
    provenance: dict[str, Any]

    @property
    def dataset(self) -> str | None:
        """The id of the run's dataset, as configured."""
        ds = self.config.get("dataset")
        return ds.get("id") if isinstance(ds, dict) else ds


@dataclass(frozen=True)
class ModelRecord:
    """One defense's built model in a run: clean accuracy, the clean mask, its probes."""

    run_id: int
    defense: str
    defense_id: str
    defense_kind: str
    config: dict[str, Any]
    clean_accuracy: float
    clean_mask: tuple[bool, ...]
    false_positive_rate: float | None
    cache_key: str | None
    train_seconds: float | None
    checks: dict[str, Any]
    provenance: dict[str, Any]


@dataclass(frozen=True)
class MatchRecord:
    """One (defense, attack, budget) result; ``robust_mask`` is None where none was stored."""

    run_id: int
    defense: str
    attack: str
    budget: float
    attack_id: str
    attack_config: dict[str, Any]
    norm: str
    knowledge: str
    threat_model: str
    status: str
    robust_accuracy: float | None
    success_rate: float | None
    mean_distance: float | None
    mean_queries: float | None
    robust_mask: tuple[bool, ...] | None
    error: str | None
    wall_seconds: float | None
    started: float | None
    finished: float | None
    provenance: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _loads(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def _run_record(r: sqlite3.Row) -> RunRecord:
    return RunRecord(id=r["id"], name=r["name"], config_hash=r["config_hash"], config=_loads(r["config_json"]),
                     source=r["source"], source_text=r["source_text"], seed=r["seed"], status=r["status"],
                     started=r["started"], finished=r["finished"], provenance=_loads(r["provenance_json"]))


def _model_record(r: sqlite3.Row) -> ModelRecord:
    return ModelRecord(run_id=r["run_id"], defense=r["defense"], defense_id=r["defense_id"],
                       defense_kind=r["defense_kind"], config=_loads(r["config_json"]),
                       clean_accuracy=r["clean_accuracy"], clean_mask=tuple(decode_mask(r["clean_mask"])),
                       false_positive_rate=r["false_positive_rate"], cache_key=r["cache_key"],
                       train_seconds=r["train_seconds"], checks=_loads(r["checks_json"]),
                       provenance=_loads(r["provenance_json"]))


def _match_record(r: sqlite3.Row) -> MatchRecord:
    provenance = _loads(r["provenance_json"])
    mask = r["robust_mask"]
    return MatchRecord(
        run_id=r["run_id"], defense=r["defense"], attack=r["attack"], budget=r["budget"], attack_id=r["attack_id"],
        attack_config=_loads(r["attack_config_json"]), norm=r["norm"], knowledge=r["knowledge"],
        threat_model=r["threat_model"] or threat_model_of(r["knowledge"], provenance), status=r["status"],
        robust_accuracy=r["robust_accuracy"], success_rate=r["success_rate"], mean_distance=r["mean_distance"],
        mean_queries=r["mean_queries"], robust_mask=None if mask is None else tuple(decode_mask(mask)),
        error=r["error"], wall_seconds=r["wall_seconds"], started=r["started"], finished=r["finished"],
        provenance=provenance)


class Store:
    """A results database in SQLite."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path))
        self.conn.row_factory = sqlite3.Row
        try:
            self._open()
        except sqlite3.DatabaseError as exc:  # not a database at all, or locked by another process
            self.conn.close()
            what = "cannot open" if isinstance(exc, sqlite3.OperationalError) else "not an arena results database"
            raise ConfigError(f"{self.path}: {what} ({exc})") from None
        except BaseException:
            self.conn.close()
            raise

    def _version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _open(self) -> None:
        """Create the schema in a new file, or migrate an older one, in one transaction."""
        if self._version() == SCHEMA_VERSION:
            return
        self._refuse_newer()
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")  # another process may be opening the same file
            version = self._version()
            self._refuse_newer()
            if not _columns(self.conn, "runs"):
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                version = SCHEMA_VERSION
            for step in MIGRATIONS[version:]:
                step(self.conn)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _refuse_newer(self) -> None:
        if self._version() > SCHEMA_VERSION:
            raise ConfigError(f"{self.path}: results database schema version {self._version()} was written by a "
                              f"newer arena (this one reads up to {SCHEMA_VERSION}); upgrade")

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
        """Store a defense's model row: the columns of ``models`` by name, with ``config``,
        ``checks`` and ``provenance`` as dicts and ``clean_mask`` as text or booleans."""
        fields["config_json"] = json.dumps(fields.pop("config"))
        fields["checks_json"] = json.dumps(fields.pop("checks", {}))
        fields["provenance_json"] = json.dumps(fields.pop("provenance", {}))
        fields["clean_mask"] = _mask_text(fields["clean_mask"])
        cols = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        self.conn.execute(f"INSERT OR REPLACE INTO models (run_id, {cols}) VALUES (?, {marks})",
                          (run_id, *fields.values()))
        self.conn.commit()

    def save_match(self, run_id: int, row: MatchRow) -> None:
        data = asdict(row)
        data["threat_model"] = row.threat_model or threat_model_of(row.knowledge, row.provenance)
        data["provenance_json"] = json.dumps(data.pop("provenance"))
        data["attack_config_json"] = json.dumps(data.pop("attack_config"))
        data["robust_mask"] = None if row.robust_mask is None else _mask_text(row.robust_mask)
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

    def run(self, run_id: int) -> RunRecord | None:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else _run_record(row)

    def models(self, run_id: int) -> list[ModelRecord]:
        rows = self.conn.execute("SELECT * FROM models WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [_model_record(r) for r in rows]

    def matches(self, run_id: int) -> list[MatchRecord]:
        rows = self.conn.execute("SELECT * FROM matches WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [_match_record(r) for r in rows]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def encode_mask(mask: Any) -> str:
    """A boolean tensor or sequence as the compact '0101...' text stored on disk."""
    values = mask.tolist() if hasattr(mask, "tolist") else mask
    return "".join("1" if bool(b) else "0" for b in values)


def decode_mask(text: str) -> list[bool]:
    """The stored '0101...' text as booleans (records hold their masks decoded already)."""
    if not isinstance(text, str):
        raise TypeError(f"decode_mask reads the stored '0101' text, not {type(text).__name__}; "
                        "records from Store hold their masks as booleans")
    return [c == "1" for c in text]


def _mask_text(mask: Any) -> str:
    """A mask to store: '0101' text as given (checked), anything else through :func:`encode_mask`."""
    if isinstance(mask, str):
        if set(mask) - {"0", "1"}:
            raise ValueError(f"a mask is '0'/'1' text, got {mask[:20]!r}")
        return mask
    return encode_mask(mask)
