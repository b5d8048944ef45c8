"""The results database: typed records out, the threat model as a column, a versioned schema
migrated step by step from older files; readers that never disturb a run (WAL, read-only opens),
writes that wait out a lock, one process per run (leases), and damaged files as one-line errors."""
from __future__ import annotations

import hashlib
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch

import arena
from arena.tournament import leases as leases_module
from arena.tournament import store as store_module
from arena.tournament.store import (SCHEMA_VERSION, MatchRecord, MatchRow, ModelRecord, RunRecord, Store,
                                    decode_mask, encode_mask)

# The schema as it was before it had a version (user_version 0), copied as it was written.
OLD_SCHEMA = """
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

# The same, as written before checks_json and the provenance columns were added on open.
OLDEST_SCHEMA = (OLD_SCHEMA.replace("    checks_json TEXT NOT NULL DEFAULT '{}',\n", "")
                 .replace(",\n    provenance_json TEXT NOT NULL DEFAULT '{}',\n    PRIMARY KEY", ",\n    PRIMARY KEY"))


def _old_database(path, schema):
    """A results file written by an unversioned arena: one run, one model, a white-box match and
    a transfer match (stored as black-box, its surrogate in the provenance when the file has it)."""
    conn = sqlite3.connect(str(path))
    conn.executescript(schema)
    conn.execute("INSERT INTO runs (name, config_hash, config_json, seed, started) VALUES "
                 "('old', 'h', '{\"dataset\": {\"id\": \"digits\"}}', 1, 0.0)")
    conn.execute("INSERT INTO models (run_id, defense, defense_id, defense_kind, config_json, clean_accuracy, "
                 "clean_mask) VALUES (1, 'standard', 'standard', 'training-time', '{}', 0.75, '1101')")
    with_provenance = "provenance_json" in {r[1] for r in conn.execute("PRAGMA table_info(matches)")}
    for attack, knowledge, provenance in (("pgd", "white-box", "{}"),
                                          ("transfer-pgd", "black-box", '{"surrogate": "standard"}')):
        cols, values = "", ()
        if with_provenance:
            cols, values = ", provenance_json", (provenance,)
        conn.execute("INSERT INTO matches (run_id, defense, attack, budget, attack_id, attack_config_json, norm, "
                     f"knowledge, status, robust_accuracy, robust_mask{cols}) VALUES "
                     f"(1, 'standard', ?, 0.1, 'pgd', '{{}}', 'linf', ?, 'ok', 0.5, '1001'{', ?' * len(values)})",
                     (attack, knowledge, *values))
    conn.commit()
    conn.close()
    return with_provenance


def _user_version(path):
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def _columns(path, table):
    conn = sqlite3.connect(str(path))
    try:
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    finally:
        conn.close()


@pytest.mark.parametrize("schema", [OLD_SCHEMA, OLDEST_SCHEMA], ids=["unversioned", "before-provenance"])
def test_an_unversioned_database_is_migrated_on_open(tmp_path, schema):
    path = tmp_path / "old.db"
    with_provenance = _old_database(path, schema)
    assert _user_version(path) == 0 and "threat_model" not in _columns(path, "matches")

    store = Store(path)
    assert _user_version(path) == SCHEMA_VERSION >= 1
    assert {"threat_model", "provenance_json"} <= _columns(path, "matches")
    assert {"checks_json", "provenance_json"} <= _columns(path, "models")
    stored = dict(store.conn.execute("SELECT attack, threat_model FROM matches"))
    shown = {m.attack: m.threat_model for m in store.matches(1)}
    expected = {"pgd": "white-box", "transfer-pgd": "transfer" if with_provenance else "black-box"}
    assert stored == shown == expected
    (model,) = store.models(1)
    assert model.clean_mask == (True, True, False, True) and model.checks == {} and model.provenance == {}
    assert store.run(1).dataset == "digits"
    assert {"metric", "scope", "value", "status"} <= _columns(path, "metrics") and store.metrics(1) == []
    store.close()
    Store(path).close()  # opening again changes nothing
    assert _user_version(path) == SCHEMA_VERSION


def test_a_new_database_starts_at_the_current_version(tmp_path):
    Store(tmp_path / "new.db").close()
    assert _user_version(tmp_path / "new.db") == SCHEMA_VERSION
    assert "threat_model" in _columns(tmp_path / "new.db", "matches")


def test_a_database_from_a_newer_arena_is_refused_in_one_line(tmp_path):
    path = tmp_path / "future.db"
    Store(path).close()
    conn = sqlite3.connect(str(path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(arena.ConfigError) as err:
        Store(path)
    message = str(err.value)
    assert str(path) in message and "newer arena" in message and "upgrade" in message and "\n" not in message


def test_a_failed_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """The steps run in one transaction: a step that fails half way changes nothing."""
    path = tmp_path / "old.db"
    _old_database(path, OLD_SCHEMA)

    def broken(conn):
        store_module.MIGRATIONS[0](conn)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store_module, "MIGRATIONS", (store_module.MIGRATIONS[0], broken))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        Store(path)
    assert _user_version(path) == 0 and "threat_model" not in _columns(path, "matches")


def test_a_file_that_is_not_a_database_is_a_user_error(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are not results " * 100)
    with pytest.raises(arena.ConfigError, match="not an arena results database"):
        Store(path)


def _filled(tmp_path):
    store = Store(tmp_path / "r.db")
    run = store.start_run("r", "h", {"dataset": {"id": "digits"}}, "t.toml", "name = 'r'", 3, 1.0, {"host": "x"})
    store.save_model(run, defense="standard", defense_id="standard", defense_kind="training-time",
                     config={"epochs": 2}, clean_accuracy=0.75, clean_mask=encode_mask(torch.tensor([1, 1, 0, 1])),
                     false_positive_rate=None, cache_key="k", train_seconds=1.5,
                     checks={"randomized": False}, provenance={"backend": "torch"})
    base = dict(defense="standard", budget=0.1, attack_config={"steps": 3}, norm="linf", status="ok",
                robust_accuracy=0.5)
    store.save_match(run, MatchRow(attack="pgd", attack_id="pgd", knowledge="white-box", robust_mask="1001", **base))
    store.save_match(run, MatchRow(attack="transfer-pgd", attack_id="pgd", knowledge="black-box",
                                   robust_mask=[True, False, False, True], provenance={"surrogate": "standard"},
                                   **base))
    store.save_match(run, MatchRow(attack="explodes", attack_id="explodes", knowledge="", robust_mask=None,
                                   error="RuntimeError: kaboom", **{**base, "status": "failed",
                                                                    "robust_accuracy": None, "budget": math.inf}))
    return store, run


def test_records_come_out_typed_and_decoded(tmp_path):
    store, run_id = _filled(tmp_path)
    run = store.run(run_id)
    assert isinstance(run, RunRecord) and run.config == {"dataset": {"id": "digits"}} and run.dataset == "digits"
    assert run.provenance == {"host": "x"} and run.status == "running" and run.source_text == "name = 'r'"
    (model,) = store.models(run_id)
    assert isinstance(model, ModelRecord) and model.clean_mask == (True, True, False, True)
    assert model.config == {"epochs": 2} and model.checks == {"randomized": False}
    assert model.provenance == {"backend": "torch"}
    pgd, transfer, failed = store.matches(run_id)
    assert all(isinstance(m, MatchRecord) for m in (pgd, transfer, failed))
    assert pgd.robust_mask == transfer.robust_mask == (True, False, False, True)
    assert pgd.attack_config == {"steps": 3} and pgd.ok and not failed.ok
    assert failed.robust_mask is None and failed.budget == math.inf and failed.error == "RuntimeError: kaboom"
    with pytest.raises(Exception):  # frozen
        pgd.status = "failed"


def test_a_transfer_match_is_filed_under_transfer(tmp_path):
    store, run_id = _filled(tmp_path)
    shown = {m.attack: (m.knowledge, m.threat_model) for m in store.matches(run_id)}
    assert shown == {"pgd": ("white-box", "white-box"), "transfer-pgd": ("black-box", "transfer"),
                     "explodes": ("", "")}
    assert dict(store.conn.execute("SELECT attack, threat_model FROM matches"))["transfer-pgd"] == "transfer"
    store.save_match(run_id, MatchRow(defense="standard", attack="gray", budget=0.1, attack_id="fgsm",
                                      attack_config={}, norm="linf", knowledge="gray-box", status="ok",
                                      threat_model="custom"))
    assert store.matches(run_id)[-1].threat_model == "custom"  # a threat model given is kept


def test_masks_are_text_on_disk(tmp_path):
    store, run_id = _filled(tmp_path)
    assert {r[0] for r in store.conn.execute("SELECT robust_mask FROM matches")} == {"1001", None}
    assert store.conn.execute("SELECT clean_mask FROM models").fetchone()[0] == "1101"
    assert decode_mask("1001") == [True, False, False, True]
    with pytest.raises(TypeError, match="booleans"):
        decode_mask((True, False))


# ---------------------------------------------------------------- concurrent readers and writers

def _match(attack="pgd", budget=0.1):
    return MatchRow(defense="standard", attack=attack, budget=budget, attack_id="pgd", attack_config={},
                    norm="linf", knowledge="white-box", status="ok", robust_accuracy=0.5, robust_mask="1001")


def _started(path, source="t.toml", config_hash="h"):
    store = Store(path)
    return store, store.start_run("r", config_hash, {}, source, "", 1, 1.0, {})


def test_a_reader_holding_a_transaction_does_not_block_a_run(tmp_path):
    """`arena leaderboard` (or any reader) in the middle of a read while a match is saved: the
    match is stored at once (WAL), the reader keeps its snapshot."""
    store, run = _started(tmp_path / "r.db")
    store.save_match(run, _match("first"))
    reader = sqlite3.connect(str(tmp_path / "r.db"))
    reader.execute("BEGIN")
    assert len(reader.execute("SELECT * FROM matches").fetchall()) == 1
    started = time.monotonic()
    store.save_match(run, _match("second"))
    assert time.monotonic() - started < 2
    assert {m.attack for m in store.matches(run)} == {"first", "second"}
    assert len(reader.execute("SELECT * FROM matches").fetchall()) == 1  # its snapshot
    reader.commit()
    assert len(reader.execute("SELECT * FROM matches").fetchall()) == 2
    reader.close()
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_readonly_store_reads_beside_a_running_store(tmp_path):
    store, run = _started(tmp_path / "r.db")
    board = Store(tmp_path / "r.db", readonly=True)
    store.save_match(run, _match("first"))
    assert [m.attack for m in board.matches(run)] == ["first"]
    store.save_match(run, _match("second"))
    board.close()
    assert len(store.matches(run)) == 2


def _lock_for(path, seconds, ready):
    conn = sqlite3.connect(str(path))
    conn.execute("BEGIN EXCLUSIVE")
    ready.set()
    time.sleep(seconds)
    conn.commit()
    conn.close()


def test_a_write_locked_out_for_a_while_is_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(store_module, "RETRY_DELAY_S", 0.05)
    store, run = _started(tmp_path / "r.db")
    ready = threading.Event()
    holder = threading.Thread(target=_lock_for, args=(tmp_path / "r.db", 0.6, ready))
    holder.start()
    ready.wait()
    store.save_match(run, _match())  # waits out the lock instead of losing the match
    holder.join()
    assert [m.attack for m in store.matches(run)] == ["pgd"]


def test_a_write_locked_out_for_good_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_S", 0.02)
    monkeypatch.setattr(store_module, "RETRY_DELAY_S", 0.01)
    store, run = _started(tmp_path / "r.db")
    ready = threading.Event()
    holder = threading.Thread(target=_lock_for, args=(tmp_path / "r.db", 1.0, ready))
    holder.start()
    ready.wait()
    with pytest.raises(arena.ConfigError) as err:
        store.save_match(run, _match())
    holder.join()
    message = str(err.value)
    assert str(tmp_path / "r.db") in message and "locked" in message and "\n" not in message
    store.save_match(run, _match())  # the store is still usable once the lock is gone
    assert len(store.matches(run)) == 1


# ---------------------------------------------------------------- read-only opens

def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_readonly_open_creates_nothing(tmp_path):
    path = tmp_path / "typo.db"
    with pytest.raises(arena.ConfigError, match="no such results database") as err:
        Store(path, readonly=True)
    assert str(path) in str(err.value) and not path.exists()


def test_a_readonly_open_of_an_old_database_migrates_in_memory_only(tmp_path):
    path = tmp_path / "old.db"
    _old_database(path, OLD_SCHEMA)
    before = _digest(path)
    store = Store(path, readonly=True)
    assert {m.attack: m.threat_model for m in store.matches(1)} == {"pgd": "white-box",
                                                                    "transfer-pgd": "transfer"}
    with pytest.raises(arena.ConfigError, match="read-only"):
        store.save_match(1, _match())
    store.close()
    assert _digest(path) == before and _user_version(path) == 0


def test_a_readonly_open_of_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "future.db"
    Store(path).close()
    conn = sqlite3.connect(str(path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(arena.ConfigError, match="newer arena"):
        Store(path, readonly=True)


# ---------------------------------------------------------------- damaged files

def _damaged(path, how):
    """A results file damaged in one of the ways a disk, a copy or a user damages one."""
    good = path.with_name("good.db")
    store, run = _started(good)
    store.conn.execute("PRAGMA synchronous = OFF")  # a quick fixture
    for i in range(200):
        store.save_match(run, _match(f"a{i}"))
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = good.read_bytes()
    page = 4096
    if how == "text":
        path.write_text("these are not results " * 100)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "header-only":
        path.write_bytes(data[:100])
    elif how == "garbage-pages":
        path.write_bytes(data[:page] + bytes((i * 37 + 11) % 256 for i in range(len(data) - page)))
    elif how == "zeroed-pages":
        path.write_bytes(data[: 2 * page] + bytes(len(data) - 2 * page))
    elif how == "another-program":
        conn = sqlite3.connect(str(path))
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.commit()
        conn.close()
    elif how == "directory":
        path.mkdir()
    return path


DAMAGE = ["text", "truncated", "header-only", "garbage-pages", "zeroed-pages", "another-program", "directory"]


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("mode", ["write", "readonly", "resume"])
def test_a_damaged_database_is_a_one_line_error_naming_it(tmp_path, how, mode):
    path = _damaged(tmp_path / "r.db", how)
    before = None if path.is_dir() else _digest(path)
    with pytest.raises(arena.ConfigError) as err:
        store = (Store(path) if mode == "write" else Store(path, readonly=True) if mode == "readonly"
                 else Store.open_existing(path))
        store.latest_run(), store.run(1), store.matches(1), store.models(1)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    if before is not None:
        assert _digest(path) == before  # nothing written into someone else's (or a broken) file


@pytest.mark.parametrize("how", ["garbage-pages", "another-program", "text"])
def test_arena_leaderboard_on_a_damaged_database_exits_2_in_one_line(tmp_path, how):
    from click.testing import CliRunner

    from arena.cli import cli

    path = _damaged(tmp_path / "r.db", how)
    result = CliRunner().invoke(cli, ["leaderboard", str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]


@pytest.mark.parametrize("what", ["missing", "empty-file", "no-runs"])
def test_resume_needs_a_results_database(tmp_path, what):
    path = tmp_path / "r.db"
    if what == "empty-file":
        path.write_bytes(b"")
    elif what == "no-runs":
        Store(path).close()
    with pytest.raises(arena.ConfigError) as err:
        Store.open_existing(path)
    assert str(err.value) == f"{path}: no results database to resume"
    assert path.exists() == (what != "missing")


# ---------------------------------------------------------------- one process per run

HOLDER = """
import sys
from arena.tournament.store import Store
store = Store(sys.argv[1])
run = store.resumable_run("h")
print(run, flush=True)
sys.stdin.read()
"""


def _resumer(path):
    """Another process, resuming run 1 of ``path``; it holds the run until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "1"
    return proc


def test_a_run_being_resumed_elsewhere_is_refused_until_its_process_is_gone(tmp_path):
    path = tmp_path / "r.db"
    store, _ = _started(path)
    store.close()  # the first process was interrupted
    other = _resumer(path)
    try:
        with pytest.raises(arena.ConfigError) as err:
            Store(path).resumable_run("h")
        message = str(err.value)
        assert f"run 1 of t.toml is being run by process {other.pid}" in message and "\n" not in message
        assert "wait for it" in message and message.startswith(str(path))
        assert Store(path).holder(1).pid == other.pid
    finally:
        other.kill()  # killed: it releases nothing
        other.wait(timeout=30)
    store = Store(path)
    assert store.resumable_run("h") == 1  # its process is gone: the run is taken over
    assert store.holder(1).pid == os.getpid()


def test_a_run_claimed_on_another_host_is_refused_until_its_heartbeat_is_old(tmp_path):
    path = tmp_path / "r.db"
    store, run = _started(path)
    store.release_run(run)
    assert store.holder(run) is None
    conn = sqlite3.connect(str(path))
    conn.execute("INSERT INTO leases (run_id, pid, host, process, since, heartbeat) VALUES (?, 4242, 'far-away', "
                 "'', ?, ?)", (run, time.time() - 60, time.time() - 60))
    conn.commit()
    with pytest.raises(arena.ConfigError, match="process 4242 on far-away"):
        Store(path).resumable_run("h")
    conn.execute("UPDATE leases SET heartbeat = ?", (time.time() - leases_module.LEASE_STALE_S - 1,))
    conn.commit()
    conn.close()
    assert Store(path).resumable_run("h") == run


def test_finishing_or_releasing_a_run_frees_it(tmp_path):
    store, run = _started(tmp_path / "r.db")
    assert store.holder(run).pid == os.getpid()
    store.claim_run(run)  # claiming what this process holds again is fine
    before = store.holder(run).heartbeat
    time.sleep(0.01)
    store.save_match(run, _match())
    assert store.holder(run).heartbeat > before  # every save is a heartbeat
    store.finish_run(run, 2.0)
    assert store.holder(run) is None
    assert store.resumable_run("h") is None
    with pytest.raises(arena.ConfigError, match="there is no run 99"):
        store.claim_run(99)
