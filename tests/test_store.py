"""The results database: typed records out, the threat model as a column, a versioned schema
migrated step by step from older files."""
from __future__ import annotations

import math
import sqlite3

import pytest
import torch

import arena
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
