"""One match: an attack against one defended model, scored at every budget it serves.

:func:`run_match` is a pure function of its arguments, so that an executor can run it in this
process or in a Ray worker; the driver alone writes the database. A plugin that raises,
returns NaN, exceeds its query budget or its time limit fails its own match only: the rows say
why and the tournament goes on.
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
from arena.errors import ArenaError
from arena.metric import MatchInputs, evaluate
from arena.model import default_device, seeded, torch_threads_for
from arena.threat import within
from arena.training import judged, predict
from arena.tournament.plan import AttackPlan, View
from arena.tournament.records import metric_row
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
    batch_size: int
    timeout: float | None = None
    save_examples: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    isolate: bool = True  # black-box and gray-box attacks in the attacker process (arena.isolation)
    judge_passes: int = 20  # passes judging an example against a randomised model (majority)
    # cascade: per budget, the evaluated samples still robust after the earlier attacks (None: all)
    survivors: dict[float, torch.Tensor] | None = None
    metrics: tuple[Any, ...] = ()  # the match metrics (MetricPlans) measured on this match


@dataclass
class MatchOutcome:
    rows: list[MatchRow]
    examples: dict[str, torch.Tensor] | None = None


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


def run_match(entrant: Entrant, spec: MatchSpec, data: Split, splits: DataSplits | None = None) -> MatchOutcome:
    """Run ``spec`` against ``entrant`` on the evaluation ``data``; never raises for plugin faults.
    ``splits``: the tournament's data, for match metrics that need the training split."""
    device = default_device()
    entrant.model.to(device)
    rows, examples = [], {}
    for eps, served in spec.attack.runs(spec.budgets):
        started, t0 = time.time(), time.perf_counter()
        try:
            with time_limit(spec.timeout), torch_threads_for(entrant.model), isolation.setting(spec.isolate):
                out = _attack(entrant, eps, served, spec, data, device)
            status, error = "ok", None
        except MatchTimeout as exc:
            out, status, error = None, "timed-out", str(exc)
        except Exception as exc:  # one plugin's failure fails its own match only
            out, status, error = None, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        wall = (time.perf_counter() - t0) / len(served)
        for budget in served:
            row = _row(entrant.label, spec, budget, status, error, wall, started)
            if out is not None:
                _score(row, out, budget, entrant, spec.judge_passes)
                row.metrics = match_metrics(entrant, spec, budget, out, data, splits, device)
            rows.append(row)
        if out is not None and spec.save_examples:
            examples["min" if eps is None else f"{eps:g}"] = out["x_adv"]
            examples["index"] = out["row_index"]
            if out["targets"] is not None:
                examples["targets"] = out["targets"]
    return MatchOutcome(rows, examples or None)


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
            data: Split, device: torch.device) -> dict[str, Any]:
    """Attack the correctly classified samples in batches and judge the examples on the full
    defended model at every budget ``served`` (:func:`_judge_rows`); per sample: broken at each
    budget, distance, queries; per row (a sample and a target): the examples."""
    plan = spec.attack
    attack, mode = plan.attack, plan.targets
    victim = entrant.base if plan.view.off_target else entrant.model
    gray = plan.view.kind is View.GRAY_BOX
    attackable = entrant.clean_correct.clone()
    if spec.survivors is not None:  # a cascade attacks what the earlier attacks left robust
        attackable &= torch.stack([spec.survivors[b] for b in served]).any(0)
    idx = torch.nonzero(attackable).flatten()
    step, clean = spec.batch_size, None
    if mode is not None:  # the clean logits pick the targets (least-likely) and tell the class count
        with seeded(spec.seed, device), torch.no_grad():
            clean = predict(entrant.model, data.x[idx].to(device), spec.batch_size).cpu()
        per = clean.shape[1] - 1 if mode == "all" else 1 if mode in ("random", "least-likely") else int(mode)
        step = max(1, spec.batch_size // per)  # rows, not samples, fill a batch
    generator = torch.Generator().manual_seed(spec.seed)
    details: dict[str, Any] | None = None  # the attack's own account of its work, over all batches
    parts: dict[str, list[Any]] = {k: [] for k in ("x_adv", "owner", "targets", "queries", "x_rows", "y_rows")}
    judged: dict[float, dict[str, list[torch.Tensor]]] = {
        b: {"broken": [], "hit": [], "correct": [], "distance": [], "rows": [], "x_adv": [], "row_distance": []}
        for b in served}
    keep_rows = bool(spec.metrics)  # match metrics read every row's example as judged
    for b, start in enumerate(range(0, len(idx), step)):
        sel = idx[start:start + step]
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
        details = merge_details(details, result.details)
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
    return {"idx": idx, "queries": cat(parts["queries"], torch.long),
            "x_rows": cat(parts["x_rows"]), "y_rows": cat(parts["y_rows"], torch.long),
            "x_adv": cat(parts["x_adv"]), "row_index": cat(parts["owner"], torch.long),
            "targets": None if mode is None else cat(parts["targets"], torch.long), "details": details,
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
    ``{budget: (x_adv, distance)}``, or ``{budget: error text}`` where crafting failed."""
    device = default_device()
    surrogate.model.to(device)
    attack = spec.attack.attack
    crafted: dict[float, Any] = {}
    for eps, served in spec.attack.runs(spec.budgets):
        try:
            with time_limit(spec.timeout), isolation.setting(spec.isolate):
                parts = [attack(surrogate.model, data.x[i:i + spec.batch_size].to(device),
                                data.y[i:i + spec.batch_size].to(device), eps, seed=spec.seed + b)
                         for b, i in enumerate(range(0, len(data), spec.batch_size))]
            result: Any = (torch.cat([p.x_adv.cpu() for p in parts]), torch.cat([p.distance.cpu() for p in parts]))
        except Exception as exc:  # the crafting failure fails every defense's match, nothing else
            result = f"{type(exc).__name__}: {exc}".splitlines()[0]
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
