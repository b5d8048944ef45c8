"""The schema of the results database and its migrations (:mod:`arena.tournament.store`).

The version is ``PRAGMA user_version``; :data:`MIGRATIONS` ``[i]`` takes a database from version
``i`` to ``i + 1`` (the store runs the steps in one transaction); a new file is created from
:data:`SCHEMA` at :data:`SCHEMA_VERSION`.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

from arena.tournament.leases import LEASES
from arena.tournament.records import threat_model_of

METRICS = """
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    metric TEXT NOT NULL,
    metric_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    defense TEXT NOT NULL,
    attack TEXT NOT NULL DEFAULT '',
    budget REAL NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    value REAL,
    error TEXT,
    config_json TEXT NOT NULL DEFAULT '{}',
    provenance_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, metric, defense, attack, budget)
)"""

# A sharded match's finished shards (arena.tournament.shards), kept until the match's rows are
# stored so that --resume runs only the missing ones: ``call`` is the attack call ('min' or the
# budget's repr), ``start``/``stop`` the range of its batches, ``key`` what the shard stands on
# (shards.piece_key), ``result`` its tensors (shards.encode).
SHARDS = """
CREATE TABLE IF NOT EXISTS shards (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    defense TEXT NOT NULL,
    attack TEXT NOT NULL,
    call TEXT NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    key TEXT NOT NULL,
    result BLOB NOT NULL,
    seconds REAL,
    stored REAL,
    PRIMARY KEY (run_id, defense, attack, call, start, stop, key)
)"""

# Reuse looks results up by key (:mod:`arena.tournament.identity`).
KEY_INDEXES = """
CREATE INDEX IF NOT EXISTS models_by_key ON models (key);
CREATE INDEX IF NOT EXISTS matches_by_key ON matches (key);
"""

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
    key TEXT,
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
    key TEXT,
    PRIMARY KEY (run_id, defense, attack, budget)
);
""" + LEASES + METRICS + ";\n" + KEY_INDEXES + SHARDS + ";\n"

# Columns that unversioned (user_version 0) databases may lack: they were added on open, before
# the schema had a version.
LEGACY_COLUMNS = (
    ("models", "checks_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("matches", "provenance_json", "TEXT NOT NULL DEFAULT '{}'"),
    ("models", "provenance_json", "TEXT NOT NULL DEFAULT '{}'"),
)


def columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _to_v1(conn: sqlite3.Connection) -> None:
    """Version 0 -> 1: the columns added before versioning, and ``matches.threat_model`` filled
    from each row's knowledge and provenance."""
    for table, column, decl in (*LEGACY_COLUMNS, ("matches", "threat_model", "TEXT NOT NULL DEFAULT ''")):
        if column not in columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    rows = conn.execute("SELECT rowid, knowledge, provenance_json FROM matches").fetchall()
    conn.executemany("UPDATE matches SET threat_model = ? WHERE rowid = ?",
                     [(threat_model_of(k, json.loads(p or "{}")), rowid) for rowid, k, p in rows])


def _to_v2(conn: sqlite3.Connection) -> None:
    """Version 1 -> 2: the ``leases`` table (which process is running which run)."""
    conn.execute(LEASES)


def _to_v3(conn: sqlite3.Connection) -> None:
    """Version 2 -> 3: the ``metrics`` table (metric plugins' values, per model or per match;
    a model metric's row has attack '' and budget 0)."""
    conn.execute(METRICS)


def _to_v4(conn: sqlite3.Connection) -> None:
    """Version 3 -> 4: ``models.key`` and ``matches.key``, what identifies a result
    (:mod:`arena.tournament.identity`), indexed; older rows have none and are never reused."""
    for table in ("models", "matches"):
        if "key" not in columns(conn, table):
            conn.execute(f"ALTER TABLE {table} ADD COLUMN key TEXT")
    for statement in KEY_INDEXES.split(";"):
        if statement.strip():
            conn.execute(statement)


def _to_v5(conn: sqlite3.Connection) -> None:
    """Version 4 -> 5: the ``shards`` table (finished shards of sharded matches not yet stored
    as rows, for ``--resume``)."""
    conn.execute(SHARDS)


# MIGRATIONS[i] takes a database from version i to version i + 1.
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_to_v1, _to_v2, _to_v3, _to_v4, _to_v5)
SCHEMA_VERSION = len(MIGRATIONS)
