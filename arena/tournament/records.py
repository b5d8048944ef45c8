"""The typed records that come out of the results database (:mod:`arena.tournament.store`),
and the row a match is stored from.

JSON columns are decoded to dicts and the masks (stored as compact ``'0101'`` text) to tuples of
bools, once, here: readers use the attributes.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any


def threat_model_of(knowledge: str, provenance: dict[str, Any]) -> str:
    """The threat model a match is filed and shown under: its attack's knowledge, except that a
    transfer attack (examples crafted on a surrogate entry; stored as black-box, since the target
    is never queried) is ``transfer``."""
    return "transfer" if provenance.get("surrogate") else knowledge


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
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metric rows of this match (metric_row)


def metric_row(plan: Any, defense: str, attack: str, budget: float, outcome: dict[str, Any],
               provenance: dict[str, Any]) -> dict[str, Any]:
    """A ``metrics`` row from a resolved metric (``plan``: a MetricPlan) and its outcome
    (:func:`arena.metric.evaluate`); a model metric has ``attack`` '' and ``budget`` 0."""
    return {"metric": plan.label, "metric_id": plan.id, "scope": plan.scope.value, "defense": defense,
            "attack": attack, "budget": budget, "status": outcome["status"], "value": outcome["value"],
            "error": outcome["error"], "config": plan.metric.config.model_dump(mode="json"),
            "provenance": {**provenance, "better": plan.metric.better, "seconds": round(outcome["seconds"], 3)}}


@dataclass(frozen=True)
class MetricRecord:
    """One metric value: per model (``scope`` model, ``attack`` '', ``budget`` 0) or per match."""

    run_id: int
    metric: str
    metric_id: str
    scope: str
    defense: str
    attack: str
    budget: float
    status: str
    value: float | None
    error: str | None
    config: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == "ok"


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
    key: str | None = None  # what identifies the model row (arena.tournament.identity)


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
    key: str | None = None  # what identifies the result (arena.tournament.identity)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class ShardRecord:
    """A finished shard of a sharded match not yet stored as rows: batches ``[start, stop)`` of
    the attack call ``call`` (``min`` or the budget's repr), what it stands on (``key``) and its
    tensors (``result``: :func:`arena.tournament.shards.encode`)."""

    run_id: int
    defense: str
    attack: str
    call: str
    start: int
    stop: int
    key: str
    result: bytes
    seconds: float | None


@dataclass(frozen=True)
class Lease:
    """Who is running a run: process ``pid`` on ``host`` (``process``: its start time there, to
    tell a reused pid), holding it since ``since``, last heard from at ``heartbeat``."""

    run_id: int
    pid: int
    host: str
    process: str
    since: float
    heartbeat: float


def _loads(text: str | None) -> dict[str, Any]:
    return json.loads(text) if text else {}


def run_record(r: sqlite3.Row) -> RunRecord:
    return RunRecord(id=r["id"], name=r["name"], config_hash=r["config_hash"], config=_loads(r["config_json"]),
                     source=r["source"], source_text=r["source_text"], seed=r["seed"], status=r["status"],
                     started=r["started"], finished=r["finished"], provenance=_loads(r["provenance_json"]))


def model_record(r: sqlite3.Row) -> ModelRecord:
    return ModelRecord(run_id=r["run_id"], defense=r["defense"], defense_id=r["defense_id"],
                       defense_kind=r["defense_kind"], config=_loads(r["config_json"]),
                       clean_accuracy=r["clean_accuracy"], clean_mask=tuple(decode_mask(r["clean_mask"])),
                       false_positive_rate=r["false_positive_rate"], cache_key=r["cache_key"],
                       train_seconds=r["train_seconds"], checks=_loads(r["checks_json"]),
                       provenance=_loads(r["provenance_json"]), key=_key(r))


def lease_record(r: sqlite3.Row) -> Lease:
    return Lease(run_id=r["run_id"], pid=r["pid"], host=r["host"], process=r["process"], since=r["since"],
                 heartbeat=r["heartbeat"])


def match_record(r: sqlite3.Row) -> MatchRecord:
    provenance = _loads(r["provenance_json"])
    mask = r["robust_mask"]
    return MatchRecord(
        run_id=r["run_id"], defense=r["defense"], attack=r["attack"], budget=r["budget"], attack_id=r["attack_id"],
        attack_config=_loads(r["attack_config_json"]), norm=r["norm"], knowledge=r["knowledge"],
        threat_model=r["threat_model"] or threat_model_of(r["knowledge"], provenance), status=r["status"],
        robust_accuracy=r["robust_accuracy"], success_rate=r["success_rate"], mean_distance=r["mean_distance"],
        mean_queries=r["mean_queries"], robust_mask=None if mask is None else tuple(decode_mask(mask)),
        error=r["error"], wall_seconds=r["wall_seconds"], started=r["started"], finished=r["finished"],
        provenance=provenance, key=_key(r))


def shard_record(r: sqlite3.Row) -> ShardRecord:
    return ShardRecord(run_id=r["run_id"], defense=r["defense"], attack=r["attack"], call=r["call"],
                       start=r["start"], stop=r["stop"], key=r["key"], result=bytes(r["result"]),
                       seconds=r["seconds"])


def _key(r: sqlite3.Row) -> str | None:
    return r["key"] if "key" in r.keys() else None


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


def mask_text(mask: Any) -> str:
    """A mask to store: '0101' text as given (checked), anything else through :func:`encode_mask`."""
    if isinstance(mask, str):
        if set(mask) - {"0", "1"}:
            raise ValueError(f"a mask is '0'/'1' text, got {mask[:20]!r}")
        return mask
    return encode_mask(mask)


def metric_record(r: sqlite3.Row) -> MetricRecord:
    return MetricRecord(run_id=r["run_id"], metric=r["metric"], metric_id=r["metric_id"], scope=r["scope"],
                        defense=r["defense"], attack=r["attack"], budget=r["budget"], status=r["status"],
                        value=r["value"], error=r["error"], config=json.loads(r["config_json"] or "{}"),
                        provenance=json.loads(r["provenance_json"] or "{}"))
