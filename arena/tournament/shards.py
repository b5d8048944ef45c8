"""Sharded matches: one attack call's batches split into contiguous ranges that run as separate
tasks and merge into exactly the rows one task stores.

An attack call (one per budget of a fixed-budget attack, one unbounded call of a minimal attack)
attacks the samples it faces in batches; batch ``b`` is seeded with ``seed + b`` and, in a
targeted run, takes its targets from one generator seeded with ``seed`` that every earlier batch
drew from. A shard is a range ``[start, stop)`` of **batch indices**: it attacks those batches
with their global seeds, replays the target draws of the batches before ``start`` without
attacking them, and returns its per-sample tensors (:func:`arena.tournament.matches.run_shard`).
The driver concatenates the shards of a call in batch order and scores the call as an unsharded
run scores it (:func:`arena.tournament.matches.merge_shards`).

This module holds what needs no model: how many batches a call has and how many shards it gets
(:func:`shard_count`: a fixed number, or from its expected cost against the other matches' and
the executor's parallelism), the ranges (:func:`ranges`, :func:`missing`), what a finished shard
is stored under (:func:`piece_key`) and how its tensors are stored (:func:`encode`,
:func:`decode`: a ``torch.save`` of plain tensors and JSON, loadable with ``weights_only``).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from typing import Any

import torch

AUTO = "auto"
# "auto" never makes a shard cheaper than this many units (about one forward and backward pass
# of one sample each, :mod:`arena.tournament.progress`): a task costs tens of milliseconds to
# hand out and, in a targeted run, a clean pass over the call's samples.
MIN_SHARD_UNITS = 10_000.0
# "auto" batch size: the first try is every attacked row of the call, at most this many.
AUTO_BATCH_MAX = 4096
# The batch size of the clean evaluation of entrants in a run whose batch_size is "auto".
AUTO_EVAL_BATCH = 256


@dataclass(frozen=True)
class Shard:
    """Batches ``[start, stop)`` of the attack call at ``eps`` (None: a minimal attack's one
    unbounded call), a call the driver counted ``batches`` batches in (checked by the task)."""

    eps: float | None
    start: int
    stop: int
    batches: int

    @property
    def call(self) -> str:
        return call_name(self.eps)


def call_name(eps: float | None) -> str:
    """How an attack call is named in the ``shards`` table: ``min`` or the budget's repr."""
    return "min" if eps is None else repr(float(eps))


def targets_per_sample(mode: str | int | None, num_classes: int) -> int:
    """Rows per attacked sample: 1 untargeted, the other classes for ``all``, N for N targets."""
    if mode is None or mode in ("random", "least-likely"):
        return 1
    return num_classes - 1 if mode == "all" else int(mode)


def samples_per_batch(batch_size: int, mode: str | int | None, num_classes: int) -> int:
    """Samples per batch: in a targeted run the (sample, target) rows fill the batch."""
    if mode is None:
        return batch_size
    return max(1, batch_size // targets_per_sample(mode, num_classes))


def attacked(clean_correct: torch.Tensor, survivors: dict[float, torch.Tensor] | None,
             served: tuple[float, ...]) -> torch.Tensor:
    """The mask of the samples an attack call attacks: those the model classifies correctly and,
    in a cascade, that an earlier attack left robust at one of the budgets it serves."""
    mask = clean_correct.clone().bool()
    if survivors is not None:
        mask &= torch.stack([survivors[b] for b in served]).any(0)
    return mask


def batch_count(samples: int, step: int) -> int:
    return (samples + step - 1) // step


def shard_count(setting: int | str, units: float, batches: int, target: float | None) -> int:
    """Shards of one attack call: ``setting`` (a number, at most the call's batches), or for
    ``"auto"`` its expected ``units`` over ``target`` (the units one task of a balanced run
    takes: every pending match's units over the executor's parallelism; None: no parallelism),
    rounded up, with shards of at least :data:`MIN_SHARD_UNITS`; never more than its batches."""
    if batches <= 1:
        return 1
    if setting != AUTO:
        return max(1, min(int(setting), batches))
    if target is None or target <= 0 or units <= target:
        return 1
    wanted = math.ceil(units / target)
    if MIN_SHARD_UNITS > 0:
        wanted = min(wanted, math.floor(units / MIN_SHARD_UNITS))
    return max(1, min(wanted, batches))


def ranges(batches: int, count: int) -> list[tuple[int, int]]:
    """``[0, batches)`` in ``count`` contiguous ranges as equal as they come (the first ones one
    batch longer); ``[(0, 0)]`` for a call without batches."""
    if batches <= 0:
        return [(0, 0)]
    count = max(1, min(count, batches))
    size, extra = divmod(batches, count)
    out, start = [], 0
    for i in range(count):
        stop = start + size + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def missing(planned: list[tuple[int, int]], stored: list[tuple[int, int]]) -> tuple[list[tuple[int, int]],
                                                                                   list[tuple[int, int]]]:
    """Which stored ranges to use (non-overlapping, in order; a stored range of another split of
    the same batches is used as well) and the planned ranges cut down to what they leave."""
    keep: list[tuple[int, int]] = []
    end = 0
    total = planned[-1][1] if planned else 0
    for start, stop in sorted(set(stored)):
        if start >= end and stop <= total and stop > start:
            keep.append((start, stop))
            end = stop
    todo = []
    for start, stop in planned:
        cursor = start
        for a, b in keep:
            if b <= cursor or a >= stop:
                continue
            if a > cursor:
                todo.append((cursor, a))
            cursor = max(cursor, b)
        if cursor < stop or (start == stop and not keep):
            todo.append((cursor, stop))
    return keep, todo


def piece_key(match_keys: list[str | None], served: tuple[float, ...], basis: str, mask: torch.Tensor,
              batch_size: int, step: int) -> str:
    """What a stored shard stands on: the keys of the rows its call serves
    (:mod:`arena.tournament.identity`), those budgets, the model it attacked
    (:func:`~arena.tournament.store.model_basis`), the samples attacked and the batch size; a
    stored shard whose key differs from the one a resumed run computes is not used."""
    text = json.dumps({"keys": match_keys, "served": [repr(float(b)) for b in served], "basis": basis,
                       "mask": "".join("1" if v else "0" for v in mask.tolist()), "batch_size": batch_size,
                       "step": step}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ stored results

_TENSORS = ("idx", "queries", "x_rows", "y_rows", "x_adv", "row_index")
_JUDGED = ("broken", "hit", "correct", "distance", "rows", "x_adv", "row_distance")


def encode(part: dict[str, Any]) -> bytes:
    """A shard's partial result (:func:`arena.tournament.matches.run_shard`'s ``part``) as bytes."""
    budgets = list(part["judged"])
    tensors = {name: part[name] for name in _TENSORS}
    if part.get("targets") is not None:
        tensors["targets"] = part["targets"]
    for i, b in enumerate(budgets):
        for name in _JUDGED:
            tensors[f"judged.{i}.{name}"] = part["judged"][b][name]
    meta = {"budgets": budgets, "batches": part["batches"], "batch_details": part["batch_details"],
            "targeted": part.get("targets") is not None}
    buffer = io.BytesIO()
    torch.save({"tensors": {k: v.contiguous() for k, v in tensors.items()}, "meta": json.dumps(meta)}, buffer)
    return buffer.getvalue()


def decode(blob: bytes) -> dict[str, Any]:
    """The partial result :func:`encode` stored (weights-only loading: nothing but tensors and text)."""
    saved = torch.load(io.BytesIO(blob), weights_only=True)
    tensors, meta = saved["tensors"], json.loads(saved["meta"])
    part: dict[str, Any] = {name: tensors[name] for name in _TENSORS}
    part["targets"] = tensors["targets"] if meta["targeted"] else None
    part["batches"], part["batch_details"] = meta["batches"], meta["batch_details"]
    part["judged"] = {float(b): {name: tensors[f"judged.{i}.{name}"] for name in _JUDGED}
                      for i, b in enumerate(meta["budgets"])}
    return part
