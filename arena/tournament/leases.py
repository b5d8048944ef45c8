"""Leases of runs: which process is running which run of a results database.

A lease is a row of the ``leases`` table (pid, host, the process's start time there, since,
heartbeat). :func:`claim` is called inside a ``BEGIN IMMEDIATE`` transaction of
:class:`~arena.tournament.store.Store`, so that two processes cannot both take a run. A lease
whose process is gone is taken over: on the same host, when the pid is dead, a zombie, or now
another process (its start time differs); on another host (where a pid says nothing), when it
has not been heard from for :data:`LEASE_STALE_S`.
"""
from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

from arena.errors import ConfigError
from arena.tournament.records import Lease, lease_record

LEASE_STALE_S = 6 * 3600.0  # a run leased on another host and unheard of for this long is taken over

LEASES = """
CREATE TABLE IF NOT EXISTS leases (
    run_id INTEGER PRIMARY KEY REFERENCES runs(id),
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    process TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    heartbeat REAL NOT NULL
);
"""


def host() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str:
    """When process ``pid`` of this host started (Linux ``/proc``, clock ticks since boot),
    ``'zombie'`` for one that has exited, ``''`` where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    rest = stat.rpartition(")")[2].split()
    if len(rest) < 20:
        return ""
    return "zombie" if rest[0] in ("Z", "X") else rest[19]


def alive(lease: Lease) -> bool | None:
    """Whether the process holding ``lease`` (on this host) still runs; None: cannot tell."""
    if os.name == "nt":  # os.kill(pid, 0) would signal it there
        return None
    try:
        os.kill(lease.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    now = process_start(lease.pid)
    return now != "zombie" and not (lease.process and now and now != lease.process)


def stale(lease: Lease, now: float) -> bool:
    """The lease's process is gone (or, on another host, has not been heard from for long)."""
    running = alive(lease) if lease.host == host() else None
    return now - lease.heartbeat > LEASE_STALE_S if running is None else not running


def mine(lease: Lease) -> bool:
    return lease.pid == os.getpid() and lease.host == host()


def held(conn: sqlite3.Connection, run_id: int) -> Lease | None:
    row = conn.execute("SELECT * FROM leases WHERE run_id = ?", (run_id,)).fetchone()
    return None if row is None else lease_record(row)


def claim(conn: sqlite3.Connection, run_id: int, path: Path) -> None:
    """Lease ``run_id`` to this process (in the caller's write transaction); a ConfigError naming
    ``path`` and the holder if a live process holds it."""
    run = conn.execute("SELECT name, source FROM runs WHERE id = ?", (run_id,)).fetchone()
    if run is None:
        raise ConfigError(f"{path}: there is no run {run_id}")
    lease, now = held(conn, run_id), time.time()
    if lease is not None and not mine(lease) and not stale(lease, now):
        where = f"process {lease.pid}" + ("" if lease.host == host() else f" on {lease.host}")
        raise ConfigError(f"{path}: run {run_id} of {run['source'] or run['name']} is being run by {where} (last heard "
                          f"from {_ago(now - lease.heartbeat)} ago); wait for it, stop it, or run without --resume "
                          "to start a new run")
    conn.execute("INSERT OR REPLACE INTO leases (run_id, pid, host, process, since, heartbeat)"
                 " VALUES (?, ?, ?, ?, ?, ?)", (run_id, os.getpid(), host(), process_start(os.getpid()), now, now))


def release(conn: sqlite3.Connection, run_id: int) -> None:
    """Drop this process's lease of ``run_id`` (another's is left alone)."""
    conn.execute("DELETE FROM leases WHERE run_id = ? AND pid = ? AND host = ?", (run_id, os.getpid(), host()))


def beat(conn: sqlite3.Connection, run_id: int) -> None:
    """Refresh this process's lease of ``run_id``, if it holds it."""
    conn.execute("UPDATE leases SET heartbeat = ? WHERE run_id = ? AND pid = ? AND host = ?",
                 (time.time(), run_id, os.getpid(), host()))


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.0f} h"
