"""The results database: one SQLite file, one row per match, committed as each match ends.

Only the driver process writes. A run is identified by its id; ``--resume`` continues the
newest unfinished run with the same configuration hash and skips every match already stored.

What comes out is typed (:mod:`arena.tournament.records`): :class:`RunRecord`,
:class:`ModelRecord` and :class:`MatchRecord`, JSON decoded and masks as tuples of bools.

Concurrency. The file is in WAL mode: readers (``arena leaderboard``, ``arena publish``, any
``sqlite3`` shell in a transaction) never block the run's writes, nor the writes them. A write
waits :data:`BUSY_TIMEOUT_S` for another writer's lock and is then retried
:data:`WRITE_ATTEMPTS` times with doubling pauses; only a lock held past all of that is an error
(a one-line :class:`~arena.errors.ConfigError`; the matches committed before it are kept).

One process per run. A run is leased to the process that runs it (a ``leases`` row: pid, host,
the process's start time, a heartbeat refreshed by every save): :meth:`Store.start_run` and
:meth:`Store.resumable_run` claim it atomically, :meth:`Store.claim_run` claims a given run,
:meth:`Store.finish_run`, :meth:`Store.release_run` and :meth:`Store.close` release it. A run
leased to a live process is refused with a ConfigError; a lease whose process is gone is taken
over (:mod:`arena.tournament.leases`). Every lease check is inside a ``BEGIN IMMEDIATE``
transaction, so two processes cannot both take a run.

Opening. ``Store(path)`` opens or creates a database to write (``arena run``);
:meth:`Store.open_existing` (``arena run --resume``) refuses a missing or empty file instead of
starting afresh; ``Store(path, readonly=True)`` (``arena leaderboard``, ``arena publish``) never
creates, migrates or writes the file (SQLite may create its ``-wal``/``-shm`` index files beside
it while it is open). Every open runs ``PRAGMA quick_check``: a damaged file, a file that is no
database, a database of another program or an unopenable path is a one-line ConfigError naming
the file, as is any later SQLite failure; nothing is ever written into such a file.

Shards. A sharded match (:mod:`arena.tournament.shards`) stores each finished shard's tensors in
the ``shards`` table (:meth:`Store.save_shard`) until its rows are stored
(:meth:`Store.forget_shards`), so that ``--resume`` runs only the missing shards; a finished
run keeps none.

The schema (:mod:`arena.tournament.schema`) is versioned with ``PRAGMA user_version``: a new
file is created at :data:`SCHEMA_VERSION`; an older one is migrated on a writable open, one step of
:data:`MIGRATIONS` at a time, inside one transaction; a read-only open migrates an in-memory
copy instead (migrating requires writing); a newer one is refused with a ConfigError.
"""
from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from arena.errors import ConfigError
from arena.tournament import leases
from arena.tournament.records import (Lease, MatchRecord, MatchRow, MetricRecord, ModelRecord, RunRecord,
                                      ShardRecord, decode_mask, encode_mask, mask_text, match_record, metric_record,
                                      model_record, run_record, shard_record, threat_model_of)
from arena.tournament.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION, columns

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Lease", "MatchRecord", "MatchRow", "MetricRecord", "ModelRecord",
           "RunRecord", "ShardRecord", "Store",
           "decode_mask", "encode_mask", "threat_model_of"]

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0  # how long one statement waits for another connection's write lock
WRITE_ATTEMPTS = 6  # a write still locked out after that is tried again, this many times in all,
RETRY_DELAY_S = 0.5  # after pauses of 0.5, 1, 2, 4, 8 s


def _busy(exc: sqlite3.OperationalError) -> bool:
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc) or "busy" in str(exc)


def _explain(exc: sqlite3.DatabaseError) -> str:
    """One line on what an SQLite failure means for a results file."""
    if isinstance(exc, sqlite3.OperationalError):
        if _busy(exc):
            return (f"database is locked by another process ({exc}); what it holds is kept: try again later, "
                    "and finish an interrupted run with --resume")
        return f"cannot {'open' if 'unable to open' in str(exc) else 'read or write'} it ({exc})"
    if "not a database" in str(exc):
        return f"not an arena results database ({exc})"
    return f"damaged results database ({exc}); restore it from a copy or start a new one"


class Store:
    """A results database in SQLite (see the module docstring for the rules of opening,
    concurrency and leases)."""

    def __init__(self, path: str | Path, *, readonly: bool = False, must_exist: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._claimed: set[int] = set()
        if (readonly or must_exist) and not self.path.exists():
            raise ConfigError(f"{self.path}: " + ("no results database to resume" if must_exist
                                                   else "no such results database"))
        if must_exist and self.path.is_file() and self.path.stat().st_size == 0:
            raise ConfigError(f"{self.path}: no results database to resume")
        self.conn = self._connect()
        try:
            with self._guard():
                self._open(must_exist)
        except BaseException:
            self.conn.close()
            raise

    @classmethod
    def open_existing(cls, path: str | Path) -> Store:
        """The database at ``path`` to resume a run in: a missing or empty file (or one with no
        run in it) is a ConfigError "PATH: no results database to resume", never a fresh start."""
        return cls(path, must_exist=True)

    # ------------------------------------------------------------- opening
    def _connect(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                conn = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{self.path}: cannot open ({exc})") from None
        conn.row_factory = sqlite3.Row
        return conn

    def _open(self, must_exist: bool) -> None:
        """Check the file, then create the schema in a new one or migrate an older one."""
        problems = [r[0] for r in self.conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise ConfigError(f"{self.path}: damaged results database ({problems[0]}); restore it from a copy "
                              "or start a new one")
        version = self._version()
        self._refuse_newer(version)
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "runs" not in tables:
            if tables or version:
                raise ConfigError(f"{self.path}: not an arena results database (it has no runs table)")
            if self.readonly or must_exist:
                raise ConfigError(f"{self.path}: " + ("no results database to resume" if must_exist
                                                       else "an empty database, no tournament results in it"))
        elif must_exist and self.conn.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is None:
            raise ConfigError(f"{self.path}: no results database to resume")
        if self.readonly:
            if version < SCHEMA_VERSION:
                self._migrate_in_memory(version)
            return
        self._write(lambda conn: conn.execute("PRAGMA journal_mode = WAL"))
        if version != SCHEMA_VERSION or "runs" not in tables:
            self._write(self._migrate)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")  # another process may be opening the same file
        version = self._version()
        self._refuse_newer(version)
        if not columns(conn, "runs"):
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            version = SCHEMA_VERSION
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate_in_memory(self, version: int) -> None:
        """Read an older file through a migrated copy in memory: the file itself is not touched."""
        memory = sqlite3.connect(":memory:")
        self.conn.backup(memory)
        self.conn.close()
        self.conn = memory
        memory.row_factory = sqlite3.Row
        with memory:
            for step in MIGRATIONS[version:]:
                step(memory)

    def _version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def _refuse_newer(self, version: int | None = None) -> None:
        version = self._version() if version is None else version
        if version > SCHEMA_VERSION:
            raise ConfigError(f"{self.path}: results database schema version {version} was written by a "
                              f"newer arena (this one reads up to {SCHEMA_VERSION}); upgrade")

    # ------------------------------------------------------------- reading and writing
    @contextmanager
    def _guard(self) -> Iterator[None]:
        """SQLite failures as one-line ConfigErrors naming the file (programming errors, such as
        an integrity violation, stay exceptions)."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if type(exc) not in (sqlite3.DatabaseError, sqlite3.OperationalError):
                raise
            raise ConfigError(f"{self.path}: {_explain(exc)}") from None

    def _rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._guard():
            return self.conn.execute(sql, params).fetchall()

    def _write(self, step: Callable[[sqlite3.Connection], T]) -> T:
        """``step(conn)`` in one transaction, committed; retried while another connection holds
        the write lock, with doubling pauses, :data:`WRITE_ATTEMPTS` times in all."""
        if self.readonly:
            raise ConfigError(f"{self.path}: opened read-only; it cannot be written")
        delay = RETRY_DELAY_S
        with self._guard():
            for attempt in range(1, WRITE_ATTEMPTS + 1):
                try:
                    with self.conn:
                        return step(self.conn)
                except sqlite3.OperationalError as exc:
                    if self.conn.in_transaction:
                        self.conn.rollback()
                    if not _busy(exc) or attempt == WRITE_ATTEMPTS:
                        raise
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release the runs this store claimed and not finished, then close the file."""
        if self._claimed and not self.readonly:
            try:
                with self.conn:
                    for run_id in sorted(self._claimed):
                        self._release(self.conn, run_id)
            except sqlite3.Error:  # a lease left behind is taken over once this process is gone
                pass
        self._claimed.clear()
        self.conn.close()

    # ------------------------------------------------------------- runs and their leases
    def start_run(self, name: str, config_hash: str, config: dict, source: str | None,
                  source_text: str | None, seed: int, started: float, provenance: dict) -> int:
        """A new run, claimed by this process."""
        def step(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO runs (name, config_hash, config_json, source, source_text, seed, started,"
                " provenance_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, config_hash, json.dumps(config), source, source_text, seed, started, json.dumps(provenance)))
            run_id = int(cur.lastrowid)
            self._claim(conn, run_id)
            return run_id

        return self._write(step)

    def resumable_run(self, config_hash: str) -> int | None:
        """The newest unfinished run of ``config_hash``, claimed by this process (None: there is
        none). A ConfigError if a live process is running it."""
        def step(conn: sqlite3.Connection) -> int | None:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT id FROM runs WHERE config_hash = ? AND status != 'finished' "
                               "ORDER BY id DESC LIMIT 1", (config_hash,)).fetchone()
            if row is None:
                return None
            self._claim(conn, int(row["id"]))
            return int(row["id"])

        return self._write(step)

    def claim_run(self, run_id: int) -> None:
        """Lease ``run_id`` to this process, atomically: a ConfigError "run N of FILE is being run
        by process PID ..." if a live process holds it; a lease whose process is gone is taken
        over; claiming a run this process holds already refreshes it."""
        def step(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            self._claim(conn, run_id)

        self._write(step)

    def release_run(self, run_id: int) -> None:
        """Give up this process's lease of ``run_id`` (a lease held by another is left alone)."""
        self._write(lambda conn: self._release(conn, run_id))

    def heartbeat(self, run_id: int) -> None:
        """Tell other processes this one is still running ``run_id`` (every save does as well)."""
        self._write(lambda conn: leases.beat(conn, run_id))

    def holder(self, run_id: int) -> Lease | None:
        """Who holds the lease of ``run_id``, if anyone."""
        with self._guard():
            return leases.held(self.conn, run_id)

    def finish_run(self, run_id: int, finished: float, status: str = "finished") -> None:
        """Mark the run finished (or ``status``) and release its lease; a finished run keeps no
        shards (an interrupted one keeps them for ``--resume``)."""
        def step(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE runs SET status = ?, finished = ? WHERE id = ?", (status, finished, run_id))
            if status == "finished":
                conn.execute("DELETE FROM shards WHERE run_id = ?", (run_id,))
            self._release(conn, run_id)

        self._write(step)

    def _claim(self, conn: sqlite3.Connection, run_id: int) -> None:
        leases.claim(conn, run_id, self.path)
        self._claimed.add(run_id)

    def _release(self, conn: sqlite3.Connection, run_id: int) -> None:
        leases.release(conn, run_id)
        self._claimed.discard(run_id)

    # ------------------------------------------------------------- results
    def save_model(self, run_id: int, **fields: Any) -> None:
        """Store a defense's model row: the columns of ``models`` by name, with ``config``,
        ``checks`` and ``provenance`` as dicts and ``clean_mask`` as text or booleans; its model
        metrics (``metrics``: rows of :func:`~arena.tournament.records.metric_row`) are written
        in the same transaction."""
        metrics = fields.pop("metrics", [])
        fields["config_json"] = json.dumps(fields.pop("config"))
        fields["checks_json"] = json.dumps(fields.pop("checks", {}))
        fields["provenance_json"] = json.dumps(fields.pop("provenance", {}))
        fields["clean_mask"] = mask_text(fields["clean_mask"])
        self._insert("models", run_id, fields, metrics)

    def save_match(self, run_id: int, row: MatchRow, key: str | None = None) -> None:
        """Store a match row (``key``: what identifies it, :mod:`arena.tournament.identity`)
        with its match metrics, in one transaction."""
        data = asdict(row)
        data["key"] = key
        data["threat_model"] = row.threat_model or threat_model_of(row.knowledge, row.provenance)
        data["provenance_json"] = json.dumps(data.pop("provenance"))
        data["attack_config_json"] = json.dumps(data.pop("attack_config"))
        data["robust_mask"] = None if row.robust_mask is None else mask_text(row.robust_mask)
        metrics = data.pop("metrics")
        self._insert("matches", run_id, data, metrics)

    def _insert(self, table: str, run_id: int, data: dict[str, Any],
                metrics: list[dict[str, Any]] | None = None) -> None:
        """One row (and the metric rows that belong to it), committed with a heartbeat of the
        run's lease."""
        cols = ", ".join(data)
        marks = ", ".join("?" for _ in data)
        extra = []
        for m in metrics or []:
            m = dict(m)
            m["config_json"] = json.dumps(m.pop("config", {}))
            m["provenance_json"] = json.dumps(m.pop("provenance", {}))
            extra.append(m)

        def step(conn: sqlite3.Connection) -> None:
            conn.execute(f"INSERT OR REPLACE INTO {table} (run_id, {cols}) VALUES (?, {marks})",
                         (run_id, *data.values()))
            for m in extra:
                conn.execute(f"INSERT OR REPLACE INTO metrics (run_id, {', '.join(m)}) "
                             f"VALUES (?, {', '.join('?' for _ in m)})", (run_id, *m.values()))
            leases.beat(conn, run_id)

        self._write(step)

    # ------------------------------------------------------------- shards of sharded matches
    def save_shard(self, run_id: int, defense: str, attack: str, call: str, start: int, stop: int, key: str,
                   result: bytes, seconds: float | None = None) -> None:
        """A finished shard of a match whose rows are not stored yet (committed with a heartbeat)."""
        def step(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO shards (run_id, defense, attack, call, start, stop, key, result,"
                         " seconds, stored) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (run_id, defense, attack, call, start, stop, key, sqlite3.Binary(result), seconds,
                          time.time()))
            leases.beat(conn, run_id)

        self._write(step)

    def shards(self, run_id: int, defense: str | None = None, attack: str | None = None) -> list[ShardRecord]:
        """The stored shards of ``run_id`` (of one defense, one attack, or both), in batch order."""
        where, params = "run_id = ?", [run_id]
        for column, value in (("defense", defense), ("attack", attack)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        return [shard_record(r) for r in self._rows(f"SELECT * FROM shards WHERE {where} "
                                                    "ORDER BY defense, attack, call, start, stop", tuple(params))]

    def sharded_matches(self, run_id: int) -> set[tuple[str, str]]:
        """The (defense, attack) pairs of ``run_id`` with stored shards (their tensors not read)."""
        return {(r["defense"], r["attack"]) for r in self._rows(
            "SELECT DISTINCT defense, attack FROM shards WHERE run_id = ?", (run_id,))}

    def forget_shards(self, run_id: int, defense: str, attack: str) -> None:
        """Delete the stored shards of one match (its rows are stored)."""
        def step(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM shards WHERE run_id = ? AND defense = ? AND attack = ?",
                         (run_id, defense, attack))

        self._write(step)

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

    # ------------------------------------------------------------- reuse (incremental tournaments)
    def stored_models(self, keys: set[str]) -> dict[str, ModelRecord]:
        """By key, the newest model row stored with it (in any run)."""
        return self._newest("models", keys, model_record, "")

    def stored_matches(self, keys: set[str]) -> dict[str, MatchRecord]:
        """By key, the newest match row that finished ``ok`` with it (in any run): a failed or
        timed-out match is run again."""
        return self._newest("matches", keys, match_record, " AND status = 'ok'")

    def _newest(self, table: str, keys: set[str], record: Callable[[sqlite3.Row], T], where: str) -> dict[str, T]:
        out: dict[str, T] = {}
        wanted = sorted(k for k in keys if k)
        for i in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            chunk = wanted[i:i + 500]
            marks = ", ".join("?" for _ in chunk)
            for r in self._rows(f"SELECT * FROM {table} WHERE key IN ({marks}){where} ORDER BY run_id, rowid",
                                tuple(chunk)):
                out[r["key"]] = record(r)  # a later run's row replaces an earlier one's
        return out

    def copy_model(self, run_id: int, model: ModelRecord, defense: str, key: str) -> None:
        """``model`` (of an earlier run) stored again in ``run_id`` as ``defense``'s row, with
        its model metrics; its provenance says where it came from."""
        metrics = self._metric_copies(model.run_id, model.defense, "", 0.0, defense, "")
        self.save_model(run_id, defense=defense, defense_id=model.defense_id, defense_kind=model.defense_kind,
                        config=model.config, clean_accuracy=model.clean_accuracy, clean_mask=model.clean_mask,
                        false_positive_rate=model.false_positive_rate, cache_key=model.cache_key,
                        train_seconds=model.train_seconds, checks=model.checks,
                        provenance={**model.provenance, "reused": {"run": model.run_id}}, key=key,
                        metrics=metrics)

    def copy_match(self, run_id: int, match: MatchRecord, defense: str, attack: str, key: str,
                   model: str) -> None:
        """``match`` (of an earlier run) stored again in ``run_id`` as ``defense`` × ``attack``,
        with its match metrics; its provenance's ``reused`` says which run it came from and
        which model (``model``: :func:`model_basis` of that run's model row) it stands on."""
        metrics = self._metric_copies(match.run_id, match.defense, match.attack, match.budget, defense, attack)
        row = MatchRow(defense=defense, attack=attack, budget=match.budget, attack_id=match.attack_id,
                       attack_config=match.attack_config, norm=match.norm, knowledge=match.knowledge,
                       status=match.status, robust_accuracy=match.robust_accuracy, success_rate=match.success_rate,
                       mean_distance=match.mean_distance, mean_queries=match.mean_queries,
                       robust_mask=match.robust_mask, error=match.error, wall_seconds=match.wall_seconds,
                       started=match.started, finished=match.finished,
                       provenance={**match.provenance, "reused": {"run": match.run_id, "model": model}},
                       threat_model=match.threat_model, metrics=metrics)
        self.save_match(run_id, row, key)

    def _metric_copies(self, run_id: int, defense: str, attack: str, budget: float, new_defense: str,
                       new_attack: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM metrics WHERE run_id = ? AND defense = ? AND attack = ? AND budget = ?",
                          (run_id, defense, attack, budget))
        return [{"metric": r["metric"], "metric_id": r["metric_id"], "scope": r["scope"], "defense": new_defense,
                 "attack": new_attack, "budget": r["budget"], "status": r["status"], "value": r["value"],
                 "error": r["error"], "config": json.loads(r["config_json"] or "{}"),
                 "provenance": {**json.loads(r["provenance_json"] or "{}"), "reused": {"run": run_id}}}
                for r in rows]

    def forget_matches(self, run_id: int, pairs: set[tuple[str, str, float]]) -> None:
        """Delete these (defense, attack, budget) rows of ``run_id`` and their metrics (reused rows
        found to stand on another model than the one rebuilt: they are computed again)."""
        def step(conn: sqlite3.Connection) -> None:
            for d, a, b in sorted(pairs):
                conn.execute("DELETE FROM matches WHERE run_id = ? AND defense = ? AND attack = ? AND budget = ?",
                             (run_id, d, a, b))
                conn.execute("DELETE FROM metrics WHERE run_id = ? AND defense = ? AND attack = ? AND budget = ?",
                             (run_id, d, a, b))
            leases.beat(conn, run_id)

        self._write(step)

    def copy_examples(self, old_run: int, old_defense: str, old_attack: str, run_id: int, defense: str,
                      attack: str) -> None:
        """The saved adversarial examples of a reused match, copied next to this run's (none
        saved then: nothing to copy)."""
        import shutil

        source = self.examples_dir(old_run) / f"{_slug(old_defense)}__{_slug(old_attack)}.pt"
        if source.is_file():
            folder = self.examples_dir(run_id)
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / f"{_slug(defense)}__{_slug(attack)}.pt")

    def done_matches(self, run_id: int) -> set[tuple[str, str, float]]:
        rows = self._rows("SELECT defense, attack, budget FROM matches WHERE run_id = ?", (run_id,))
        return {(r["defense"], r["attack"], r["budget"]) for r in rows}

    def run_ids(self) -> list[int]:
        """Every run's id, oldest first."""
        return [int(r[0]) for r in self.conn.execute("SELECT id FROM runs ORDER BY id")]

    def latest_run(self) -> int | None:
        rows = self._rows("SELECT id FROM runs ORDER BY id DESC LIMIT 1")
        return int(rows[0]["id"]) if rows else None

    def run(self, run_id: int) -> RunRecord | None:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        return run_record(rows[0]) if rows else None

    def models(self, run_id: int) -> list[ModelRecord]:
        return [model_record(r) for r in self._rows("SELECT * FROM models WHERE run_id = ? ORDER BY rowid", (run_id,))]

    def metrics(self, run_id: int) -> list[MetricRecord]:
        """The run's metric values, model metrics first, each in the order stored."""
        return [metric_record(r) for r in self._rows(
            "SELECT * FROM metrics WHERE run_id = ? ORDER BY scope DESC, rowid", (run_id,))]

    def matches(self, run_id: int) -> list[MatchRecord]:
        return [match_record(r) for r in self._rows("SELECT * FROM matches WHERE run_id = ? ORDER BY rowid",
                                                    (run_id,))]


def model_basis(cache_key: str | None, clean_mask: Any) -> str:
    """What a match's result stands on, of its model row: the trained weights' cache key and the
    clean predictions (a rebuilt model with other bits answers differently on some sample, or
    has another cache key)."""
    import hashlib

    return hashlib.sha256(f"{cache_key or ''}|{mask_text(clean_mask)}".encode()).hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
