"""One match: an attack against one defended model, scored at every budget it serves.

:func:`run_match` is a pure function of its arguments, so that an executor can run it in this
process or in a Ray worker; the driver alone writes the database. A plugin that raises,
returns NaN, exceeds its query budget or its time limit fails its own match only: the rows say
why and the tournament goes on.

A sharded match (:mod:`arena.tournament.shards`) runs as several tasks, each a range of one
attack call's batches (:func:`run_shard`, reached through :func:`run_match` when the spec names
a shard); the driver merges them (:func:`merge_shards`) into the rows one task would store.
``batch_size = "auto"`` starts an attack call with every attacked row in one batch (at most
:data:`~arena.tournament.shards.AUTO_BATCH_MAX`) and halves the batch on an out-of-memory
error until the call fits (:func:`_attack_sized`); the size used is in each row's provenance.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from arena import isolation
from arena.attack import merge_details
from arena.data import DataSplits, Split
from arena.defense import Defense, DetectorDefense
from arena.errors import ArenaError, Interrupted
from arena.metric import MatchInputs, evaluate
from arena.model import default_device, seeded, torch_threads_for
from arena.threat import within
from arena.training import judged, predict
from arena.tournament.plan import AttackPlan, View
from arena.tournament.records import metric_row
from arena.tournament.shards import (AUTO, AUTO_BATCH_MAX, Shard, attacked, batch_count, samples_per_batch,
                                     targets_per_sample)
from arena.tournament.store import MatchRow, encode_mask


class MatchTimeout(ArenaError):
    """A match ran past its time limit."""


@dataclass
class Entrant:
    """A defended model ready to be attacked."""

    label: str
    defense: Defense
    model: nn.Module  # the whole defended model (white-box view)
    base: nn.Module  # the classifier without inference-time parts (gray-box view)
    detector: DetectorDefense | None
    clean_correct: torch.Tensor  # bool per evaluated sample
    cache_key: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)  # backend that runs the model, model file


@dataclass(frozen=True)
class MatchSpec:
    """Which planned attack, at which of its budgets, under which limits."""

    attack: AttackPlan
    budgets: tuple[float, ...]
    seed: int
    batch_size: int | str  # samples per attack call, or "auto" (the largest that fits)
    timeout: float | None = None
    save_examples: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    isolate: bool = True  # black-box and gray-box attacks in the attacker process (arena.isolation)
    judge_passes: int = 20  # passes judging an example against a randomised model (majority)
    # cascade: per budget, the evaluated samples still robust after the earlier attacks (None: all)
    survivors: dict[float, torch.Tensor] | None = None
    metrics: tuple[Any, ...] = ()  # the match metrics (MetricPlans) measured on this match
    shard: Shard | None = None  # one shard of the match: a range of one attack call's batches


@dataclass
class MatchOutcome:
    rows: list[MatchRow]
    examples: dict[str, torch.Tensor] | None = None


@dataclass
class ShardOutcome:
    """What one shard of a match brings back: its per-sample tensors (``part``: see
    :func:`_attack`) or why it failed (``status`` failed / timed-out, ``error``), and its time."""

    shard: Shard
    status: str
    error: str | None
    part: dict[str, Any] | None
    seconds: float
    started: float


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`MatchTimeout` in this thread after ``seconds`` (main thread only)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise MatchTimeout(f"exceeded its time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_match(entrant: Entrant, spec: MatchSpec, data: Split,
              splits: DataSplits | None = None) -> MatchOutcome | ShardOutcome:
    """Run ``spec`` against ``entrant`` on the evaluation ``data``; never raises for plugin faults.
    ``splits``: the tournament's data, for match metrics that need the training split. A spec
    that names a shard runs only that shard (:func:`run_shard`)."""
    if spec.shard is not None:
        return run_shard(entrant, spec, data)
    device = default_device()
    entrant.model.to(device)
    rows, examples = [], {}
    for eps, served in spec.attack.runs(spec.budgets):
        started, t0 = time.time(), time.perf_counter()
        size = None
        try:
            with time_limit(spec.timeout), torch_threads_for(entrant.model), isolation.setting(spec.isolate):
                out, size = _attack_sized(entrant, eps, served, spec, data, device)
            status, error = "ok", None
        except Interrupted:  # SIGTERM to the process running it (inline): the run stops, the match is not failed
            raise
        except MatchTimeout as exc:
            out, status, error = None, "timed-out", str(exc)
        except Exception as exc:  # one plugin's failure fails its own match only
            out, status, error = None, "failed", _first_line(exc)
        wall = (time.perf_counter() - t0) / len(served)
        for budget in served:
            row = _row(entrant.label, spec, budget, status, error, wall, started)
            if size is not None:
                row.provenance = {**row.provenance, "batch_size": size}
            if out is not None:
                _score(row, out, budget, entrant, spec.judge_passes)
                row.metrics = match_metrics(entrant, spec, budget, out, data, splits, device)
            rows.append(row)
        if out is not None and spec.save_examples:
            _examples(examples, eps, out)
    return MatchOutcome(rows, examples or None)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _examples(examples: dict[str, torch.Tensor], eps: float | None, out: dict[str, Any]) -> None:
    examples["min" if eps is None else f"{eps:g}"] = out["x_adv"]
    examples["index"] = out["row_index"]
    if out["targets"] is not None:
        examples["targets"] = out["targets"]


def run_shard(entrant: Entrant, spec: MatchSpec, data: Split) -> ShardOutcome:
    """One shard of a match: batches ``[start, stop)`` of the attack call at ``spec.shard.eps``,
    each with its global seed (the target draws of the batches before ``start`` replayed, not
    attacked), under the match's time limit for one call; never raises for plugin faults."""
    shard = spec.shard
    assert shard is not None
    device = default_device()
    entrant.model.to(device)
    served = next(s for e, s in spec.attack.runs(spec.budgets) if e == shard.eps)
    started, t0 = time.time(), time.perf_counter()
    try:
        with time_limit(spec.timeout), torch_threads_for(entrant.model), isolation.setting(spec.isolate):
            part = _attack(entrant, shard.eps, served, spec, data, device, int(spec.batch_size),
                           (shard.start, shard.stop))
        if part["batches"] != shard.batches:
            raise ArenaError(f"the shard expected {shard.batches} batches in the attack call, it has "
                             f"{part['batches']}")
        part.pop("survivors", None)
        part.pop("details", None)
        status, error = "ok", None
    except Interrupted:
        raise
    except MatchTimeout as exc:
        part, status, error = None, "timed-out", str(exc)
    except Exception as exc:  # one plugin's failure fails its own match only
        part, status, error = None, "failed", _first_line(exc)
    return ShardOutcome(shard, status, error, part, time.perf_counter() - t0, started)


def merge_shards(entrant: Entrant, spec: MatchSpec, pieces: list[ShardOutcome]) -> MatchOutcome:
    """The rows (and examples) of a sharded match from its shards, as :func:`run_match` stores
    them unsharded: each call's shards concatenated in batch order and scored by :func:`_score`
    (details merged batch after batch); a call with a shard that failed fails its rows with the
    error of the first such shard in batch order. ``entrant`` needs only ``clean_correct`` and
    ``model`` (whether it is randomised): the driver merges, it runs no model. The rows'
    provenance says how many shards each call ran as (``shards``)."""
    rows, examples = [], {}
    for eps, served in spec.attack.runs(spec.budgets):
        mine = sorted((p for p in pieces if p.shard.eps == eps), key=lambda p: p.shard.start)
        started = min((p.started for p in mine), default=time.time())
        wall = sum(p.seconds for p in mine) / len(served)
        bad = next((p for p in mine if p.status != "ok"), None)
        if not mine:
            bad = ShardOutcome(Shard(eps, 0, 0, 0), "failed", "no shard of the attack call ran", None, 0.0, started)
        out = None if bad is not None else _concat([p.part for p in mine], spec)
        for budget in served:
            status, error = ("ok", None) if bad is None else (bad.status, bad.error)
            row = _row(entrant.label, spec, budget, status, error, wall, started)
            row.provenance = {**row.provenance, "shards": len(mine)}
            if out is not None:
                _score(row, out, budget, entrant, spec.judge_passes)
            rows.append(row)
        if out is not None and spec.save_examples:
            _examples(examples, eps, out)
    return MatchOutcome(rows, examples or None)


def _concat(parts: list[dict[str, Any]], spec: MatchSpec) -> dict[str, Any]:
    """One call's shards as the output of one unsharded :func:`_attack`."""
    first = parts[0]
    for p in parts[1:]:
        if not torch.equal(p["idx"], first["idx"]):
            raise ArenaError("the shards of an attack call attacked different samples")
    cat = lambda k: torch.cat([p[k] for p in parts])  # noqa: E731
    details = None
    for p in parts:
        for d in p["batch_details"]:
            details = merge_details(details, d)
    return {"idx": first["idx"], "queries": cat("queries"), "x_rows": cat("x_rows"), "y_rows": cat("y_rows"),
            "x_adv": cat("x_adv"), "row_index": cat("row_index"),
            "targets": None if first["targets"] is None else cat("targets"), "details": details,
            "survivors": spec.survivors,
            "judged": {b: {k: torch.cat([p["judged"][b][k] for p in parts]) for k in j}
                       for b, j in first["judged"].items()}}


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: ``torch.OutOfMemoryError`` (CUDA and other
    accelerators), or a ``RuntimeError`` of the CPU allocator ("can't allocate memory", "out of
    memory"); an error crossing from the attacker process is told by its type name."""
    oom = getattr(torch, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    if any(t.__name__ == "OutOfMemoryError" for t in type(exc).__mro__):
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and ("out of memory" in text or
                                                             "can't allocate memory" in text)


def auto_batch(entrant: Entrant, served: tuple[float, ...], spec: MatchSpec, data: Split,
               device: torch.device) -> int:
    """The first batch size ``"auto"`` tries for an attack call: all its attacked rows (samples
    × targets per sample), at most :data:`~arena.tournament.shards.AUTO_BATCH_MAX`."""
    n = int(attacked(entrant.clean_correct, spec.survivors, served).sum())
    per = 1
    if spec.attack.targets is not None and n:
        with torch.no_grad():  # one sample tells the class count
            k = int(predict(entrant.model, data.x[:1].to(device)).shape[1])
        per = targets_per_sample(spec.attack.targets, k)
    return max(1, min(n * per, AUTO_BATCH_MAX))


def _attack_sized(entrant: Entrant, eps: float | None, served: tuple[float, ...], spec: MatchSpec, data: Split,
                  device: torch.device) -> tuple[dict[str, Any], int | None]:
    """:func:`_attack` at the spec's batch size; with ``"auto"``, from :func:`auto_batch` down,
    halving the whole call again on an out-of-memory error (so the result is that of a fixed
    batch size of the size returned)."""
    if spec.batch_size != AUTO:
        return _attack(entrant, eps, served, spec, data, device, int(spec.batch_size)), None
    size = auto_batch(entrant, served, spec, data, device)
    while True:
        try:
            return _attack(entrant, eps, served, spec, data, device, size), size
        except Exception as exc:
            if size <= 1 or not out_of_memory(exc):
                raise
        size //= 2
        _free(device)


def _free(device: torch.device) -> None:
    """What an out-of-memory error left in the CUDA allocator's cache, given back before the next
    try (on the CPU the tensors of the failed try are freed as their references go)."""
    if device.type == "cuda":
        import gc

        gc.collect()
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- judging

def randomized(model: Any) -> bool:
    """Whether ``model`` declares that its outputs change between calls (``randomized``)."""
    return bool(getattr(model, "randomized", False))


def choose_targets(mode: str | int, logits: torch.Tensor, y: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The attacked rows of a targeted run: for each sample (its position in ``y``) the targets
    ``mode`` asks for, as ``(owner, targets)`` (the sample of each row, the target of each row).

    ``all``: every other class; ``random``: one other class, uniformly; ``least-likely``: the
    class with the lowest clean logit; N: N distinct other classes, uniformly."""
    n, k = logits.shape
    others = torch.arange(k).expand(n, k)[torch.arange(k).expand(n, k) != y.cpu().unsqueeze(1)].view(n, k - 1)
    if mode == "least-likely":
        return torch.arange(n), logits.cpu().argmin(1)
    if mode == "all":
        count = k - 1
        chosen = others
    else:
        count = 1 if mode == "random" else int(mode)
        order = torch.rand(n, k - 1, generator=generator).argsort(dim=1)[:, :count]
        chosen = others.gather(1, order)
    return torch.arange(n).repeat_interleave(count), chosen.reshape(-1)


def _per_sample(values: torch.Tensor, owner: torch.Tensor, n: int, how: str) -> torch.Tensor:
    """Rows' values gathered per sample: ``any``, ``sum``, or ``min``."""
    if how == "any":
        return torch.zeros(n, dtype=torch.long).index_add_(0, owner, values.long()) > 0
    if how == "sum":
        return torch.zeros(n, dtype=values.dtype).index_add_(0, owner, values)
    out = torch.full((n,), float("inf"), dtype=values.dtype)
    return out.scatter_reduce_(0, owner, values, reduce="amin")


def _attack(entrant: Entrant, eps: float | None, served: tuple[float, ...], spec: MatchSpec,
            data: Split, device: torch.device, batch_size: int,
            span: tuple[int, int] | None = None) -> dict[str, Any]:
    """Attack the correctly classified samples in batches of ``batch_size`` and judge the
    examples on the full defended model at every budget ``served`` (:func:`_judge_rows`); per
    sample: broken at each budget, distance, queries; per row (a sample and a target): the
    examples. ``span``: only the batches ``[start, stop)`` (a shard), the target draws of the
    batches before it replayed without attacking them. ``batches``: the call's batch count;
    ``batch_details``: each attacked batch's details (``details``: merged)."""
    plan = spec.attack
    attack, mode = plan.attack, plan.targets
    victim = entrant.base if plan.view.off_target else entrant.model
    gray = plan.view.kind is View.GRAY_BOX
    # a cascade attacks what the earlier attacks left robust
    idx = torch.nonzero(attacked(entrant.clean_correct, spec.survivors, served)).flatten()
    step, clean = batch_size, None
    if mode is not None and len(idx):  # the clean logits pick the targets (least-likely) and tell the class count
        with seeded(spec.seed, device), torch.no_grad():
            clean = predict(entrant.model, data.x[idx].to(device), batch_size).cpu()
        step = samples_per_batch(batch_size, mode, clean.shape[1])  # rows, not samples, fill a batch
    first, stop = span if span is not None else (0, batch_count(len(idx), step))
    generator = torch.Generator().manual_seed(spec.seed)
    batch_details: list[dict[str, Any] | None] = []  # the attack's own account of its work, per batch
    parts: dict[str, list[Any]] = {k: [] for k in ("x_adv", "owner", "targets", "queries", "x_rows", "y_rows")}
    judged: dict[float, dict[str, list[torch.Tensor]]] = {
        b: {"broken": [], "hit": [], "correct": [], "distance": [], "rows": [], "x_adv": [], "row_distance": []}
        for b in served}
    keep_rows = bool(spec.metrics)  # match metrics read every row's example as judged
    for b, start in enumerate(range(0, len(idx), step)):
        if b >= stop:
            break
        sel = idx[start:start + step]
        if b < first:  # an earlier shard's batch: only its target draws, so that later batches draw the same
            if mode is not None:
                choose_targets(mode, clean[start:start + step], data.y[sel], generator)
            continue
        x, y = data.x[sel].to(device), data.y[sel].to(device)
        owner, targets = torch.arange(len(sel)), None
        if mode is not None:
            owner, targets = choose_targets(mode, clean[start:start + step], y, generator)
            x, y, targets = x[owner.to(device)], y[owner.to(device)], targets.to(device)
        if gray and isolation.enabled():  # the base classifier alone, in a process without the defense
            result = isolation.call_elsewhere(attack, victim, x, y, eps, spec.seed + b, targets)
        else:
            result = attack(victim, x, y, eps, targets, seed=spec.seed + b,
                            context=None if gray else entrant.defense)
        with seeded(spec.seed + b, device):
            for budget in served:
                broken, hit, correct, distance, x_judged = _judge_rows(entrant, x, y, targets, result, eps,
                                                                       budget, spec)
                j = judged[budget]
                if keep_rows:
                    j["rows"].append(broken.cpu())
                    j["x_adv"].append(x_judged.detach().cpu())
                    j["row_distance"].append(distance.detach().cpu().float())
                j["broken"].append(_per_sample(broken.cpu(), owner, len(sel), "any"))
                j["hit"].append(hit.cpu())
                j["correct"].append(_per_sample(correct.cpu(), owner, len(sel), "min"))
                # the distance of each sample's nearest example that breaks it (∞: none does)
                far = torch.where(broken, distance, torch.full_like(distance, float("inf"))).cpu().float()
                j["distance"].append(_per_sample(far, owner, len(sel), "min"))
        parts["queries"].append(_per_sample(result.queries.cpu(), owner, len(sel), "sum"))
        batch_details.append(result.details)
        parts["owner"].append(sel[owner])
        parts["targets"].append(None if targets is None else targets.cpu())
        if keep_rows:
            parts["x_rows"].append(x.detach().cpu())
            parts["y_rows"].append(y.cpu())
        if spec.save_examples:
            parts["x_adv"].append(result.x_adv.detach().cpu())
    cat = lambda v, dtype=torch.float32: torch.cat(v) if v else torch.empty(0, dtype=dtype)  # noqa: E731
    kinds = {"broken": torch.bool, "hit": torch.bool, "correct": torch.float32, "distance": torch.float32,
             "rows": torch.bool, "x_adv": torch.float32, "row_distance": torch.float32}
    details: dict[str, Any] | None = None
    for d in batch_details:
        details = merge_details(details, d)
    return {"idx": idx, "queries": cat(parts["queries"], torch.long),
            "x_rows": cat(parts["x_rows"]), "y_rows": cat(parts["y_rows"], torch.long),
            "x_adv": cat(parts["x_adv"]), "row_index": cat(parts["owner"], torch.long),
            "targets": None if mode is None else cat(parts["targets"], torch.long), "details": details,
            "batch_details": batch_details, "batches": batch_count(len(idx), step),
            "survivors": spec.survivors,
            "judged": {b: {k: cat(v, kinds[k]) for k, v in j.items()} for b, j in judged.items()}}


def _judge_rows(entrant: Entrant, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                result: Any, eps: float | None, budget: float,
                spec: MatchSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each attacked row at ``budget``, judged on the full defended model: broken (misclassified
    and not flagged by a detector), the target reached (targeted runs; else the same as broken),
    the fraction of passes classified correctly, the distance of the judged example, and the
    judged example itself.

    A minimal attack's example is clipped to the budget first (its perturbation projected onto
    the ε-ball, as foolbox scores it), so the score at ε is never weaker than the clipped example;
    where the distance is within ε the clip changes nothing. A model that declares itself
    randomised is judged over ``spec.judge_passes`` passes, and fooled means fooled on the
    majority of them: a lucky draw is not a break."""
    x_adv = result.x_adv
    clipped = eps is None and not math.isinf(budget)
    if clipped:
        x_adv = (x + result.norm.project(x_adv - x, budget)).clamp(0, 1)
    if (targets is None and not clipped and not spec.attack.view.off_target
            and not randomized(entrant.model)):
        # the harness judged this very example on this very model, once: its verdict stands
        correct = ~result.success
        fraction, reached = correct.float(), result.success
    elif targets is None:
        (correct, fraction), = judged(entrant.model, x_adv, spec.judge_passes, y)
        reached = ~correct
    else:
        (correct, fraction), (reached, _) = judged(entrant.model, x_adv, spec.judge_passes, y, targets)
    if entrant.detector is not None:
        with torch.no_grad():
            flagged = entrant.detector.detect(entrant.model, x_adv).to(correct.device).bool()
        correct, reached = correct | flagged, reached & ~flagged  # a flagged example is stopped
        fraction = torch.where(flagged, torch.ones_like(fraction), fraction)
    return ~correct, reached, fraction, result.norm.measure(x_adv - x), x_adv


def match_metrics(entrant: Entrant, spec: MatchSpec, budget: float, out: dict[str, Any], data: Split,
                  splits: DataSplits | None, device: torch.device) -> list[dict[str, Any]]:
    """The match metrics of ``spec`` at ``budget`` as ``metrics`` rows, measured on the rows the
    match attacked and their examples as judged (a metric's failure fails its own row only)."""
    if not spec.metrics:
        return []
    j = out["judged"][budget]
    inputs = MatchInputs(entrant.label, entrant.model, entrant.base, entrant.detector, data.x, data.y,
                         entrant.clean_correct, splits.train if splits is not None else None, device,
                         attack=spec.attack.label, norm=spec.attack.attack.threat_norm, budget=budget,
                         x_rows=out["x_rows"], y_rows=out["y_rows"], x_adv=j["x_adv"], broken=j["rows"],
                         distance=j["row_distance"], targets=out["targets"], row_sample=out["row_index"])
    rows = []
    for mp in spec.metrics:
        with seeded(spec.seed, device):
            outcome = evaluate(mp.metric, inputs)
        rows.append(metric_row(mp, entrant.label, spec.attack.label, budget, outcome,
                               {"metric_plugin": mp.plugin, "rows": len(inputs.x_rows), "seed": spec.seed}))
    return rows


def _row(defense: str, spec: MatchSpec, budget: float, status: str, error: str | None,
         wall: float, started: float) -> MatchRow:
    plan, attack = spec.attack, spec.attack.attack
    return MatchRow(defense=defense, attack=plan.label, budget=budget, attack_id=plan.id,
                    attack_config=attack.config.model_dump(mode="json"), norm=attack.threat_norm.value,
                    knowledge=plan.view.knowledge(attack), threat_model=plan.view.threat_model(attack),
                    status=status, error=error, wall_seconds=wall, started=started, finished=time.time(),
                    provenance=spec.provenance)


def failed_rows(defense: str, plan: AttackPlan, budgets: tuple[float, ...], reason: str,
                status: str = "failed") -> list[MatchRow]:
    """The rows of matches that could not run (the defense was not built, or a task crashed)."""
    attack = plan.attack
    return [MatchRow(defense=defense, attack=plan.label, budget=b, attack_id=plan.id,
                     attack_config=attack.config.model_dump(mode="json"), norm=attack.threat_norm.value,
                     knowledge=plan.view.knowledge(attack), threat_model=plan.view.threat_model(attack),
                     status=status, error=reason.splitlines()[0])
            for b in budgets]


def craft_transfer(surrogate: Entrant, spec: MatchSpec, data: Split) -> dict[float, Any]:
    """Transfer examples crafted once on ``surrogate`` for every evaluated sample and budget:
    ``{budget: (x_adv, distance)}`` (``batch_size = "auto"``: ``(x_adv, distance, size)``), or
    ``{budget: error text}`` where crafting failed."""
    device = default_device()
    surrogate.model.to(device)
    attack = spec.attack.attack

    def craft(eps: float | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [attack(surrogate.model, data.x[i:i + size].to(device), data.y[i:i + size].to(device), eps,
                        seed=spec.seed + b)
                 for b, i in enumerate(range(0, len(data), size))]
        return torch.cat([p.x_adv.cpu() for p in parts]), torch.cat([p.distance.cpu() for p in parts])

    crafted: dict[float, Any] = {}
    for eps, served in spec.attack.runs(spec.budgets):
        try:
            with time_limit(spec.timeout), isolation.setting(spec.isolate):
                if spec.batch_size != AUTO:
                    result: Any = craft(eps, int(spec.batch_size))
                else:
                    size = max(1, min(len(data), AUTO_BATCH_MAX))
                    while True:
                        try:
                            result = (*craft(eps, size), size)
                            break
                        except Exception as exc:
                            if size <= 1 or not out_of_memory(exc):
                                raise
                        size //= 2
                        _free(device)
        except Exception as exc:  # the crafting failure fails every defense's match, nothing else
            result = _first_line(exc)
        crafted.update({budget: result for budget in served})
    return crafted


def score_transfer(entrant: Entrant, spec: MatchSpec, crafted: dict[float, Any], data: Split,
                   splits: DataSplits | None = None) -> MatchOutcome:
    """Judge transfer examples on ``entrant``: the target model is never queried while crafting."""
    device, rows = default_device(), []
    idx = torch.nonzero(entrant.clean_correct).flatten()
    for budget in spec.budgets:
        started, item = time.time(), crafted[budget]
        if isinstance(item, str):
            rows.append(_row(entrant.label, spec, budget, "failed", item, 0.0, started))
            continue
        x_adv, distance = item[0][idx].to(device), item[1][idx]
        with seeded(spec.seed, device):
            (correct, fraction), = judged(entrant.model, x_adv, spec.judge_passes, data.y[idx].to(device))
            if entrant.detector is not None:
                with torch.no_grad():
                    flagged = entrant.detector.detect(entrant.model, x_adv).to(correct.device).bool()
                correct = correct | flagged
                fraction = torch.where(flagged, torch.ones_like(fraction), fraction)
        broken = (~correct).cpu() & within(distance, budget)
        fraction = torch.where(within(distance, budget), fraction.cpu(), torch.ones_like(fraction.cpu()))
        row = _row(entrant.label, spec, budget, "ok", None, 0.0, started)
        if len(item) > 2:  # the batch size "auto" crafted with
            row.provenance = {**row.provenance, "batch_size": item[2]}
        far = torch.where(broken, distance, torch.full_like(distance, float("inf")))
        out = {"idx": idx, "queries": torch.zeros(len(idx), dtype=torch.long), "targets": None,
               "x_rows": data.x[idx], "y_rows": data.y[idx], "row_index": idx,
               "judged": {budget: {"broken": broken, "hit": broken, "correct": fraction, "distance": far,
                                   "rows": broken, "x_adv": x_adv.cpu(), "row_distance": distance.float()}}}
        _score(row, out, budget, entrant, spec.judge_passes)
        row.metrics = match_metrics(entrant, spec, budget, out, data, splits, device)
        rows.append(row)
    return MatchOutcome(rows)


def _score(row: MatchRow, out: dict[str, Any], budget: float, entrant: Entrant, passes: int) -> None:
    """The row's figures at ``budget``: robust accuracy (over every evaluated sample; a sample the
    model misclassifies clean is not robust), success rate (broken samples, or in a targeted run
    targets reached, over the attacked samples or rows), the mean distance of each broken sample's
    nearest breaking example, mean queries, and the robust mask; for a randomised model also the mean accuracy
    over passes."""
    judged = out["judged"][budget]
    broken, distance = judged["broken"].bool(), judged["distance"]
    robust = entrant.clean_correct.clone()
    robust[out["idx"]] = ~broken
    if out.get("survivors") is not None:  # a cascade: robust after this and every earlier attack
        robust &= out["survivors"][budget]
    row.robust_accuracy = float(robust.float().mean())
    if out["targets"] is not None:
        row.success_rate = float(judged["hit"].float().mean()) if len(judged["hit"]) else 0.0
    else:
        row.success_rate = float(broken.float().sum() / max(len(out["idx"]), 1))
    finite = distance[torch.isfinite(distance)]
    row.mean_distance = float(finite.mean()) if len(finite) else None
    row.mean_queries = float(out["queries"].float().mean()) if len(out["queries"]) else 0.0
    row.robust_mask = encode_mask(robust)
    if out.get("details"):
        row.provenance = {**row.provenance, "details": out["details"]}
    if randomized(entrant.model):
        fraction = torch.zeros(len(entrant.clean_correct))
        fraction[out["idx"]] = judged["correct"].float()
        row.provenance = {**row.provenance, "judged": {"passes": passes, "rule": "majority",
                                                       "mean_accuracy": float(fraction.mean())}}
