"""One match: an attack against one defended model, scored at every budget it serves.

:func:`run_match` is a pure function of its arguments, so that an executor can run it in this
process or in a Ray worker; the driver alone writes the database. A plugin that raises,
returns NaN, exceeds its query budget or its time limit fails its own match only: the rows say
why and the tournament goes on.
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from arena import isolation
from arena.data import Split
from arena.defense import Defense, DetectorDefense
from arena.errors import ArenaError
from arena.model import default_device, seeded, torch_threads_for
from arena.threat import within
from arena.training import predict
from arena.tournament.plan import AttackPlan, View
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


def run_match(entrant: Entrant, spec: MatchSpec, data: Split) -> MatchOutcome:
    """Run ``spec`` against ``entrant`` on the evaluation ``data``; never raises for plugin faults."""
    device = default_device()
    entrant.model.to(device)
    rows, examples = [], {}
    for eps, served in spec.attack.runs(spec.budgets):
        started, t0 = time.time(), time.perf_counter()
        try:
            with time_limit(spec.timeout), torch_threads_for(entrant.model), isolation.setting(spec.isolate):
                out = _attack(entrant, eps, spec, data, device)
            status, error = "ok", None
        except MatchTimeout as exc:
            out, status, error = None, "timed-out", str(exc)
        except Exception as exc:  # one plugin's failure fails its own match only
            out, status, error = None, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        wall = (time.perf_counter() - t0) / len(served)
        for budget in served:
            row = _row(entrant.label, spec, budget, status, error, wall, started)
            if out is not None:
                _score(row, out, budget, entrant)
            rows.append(row)
        if out is not None and spec.save_examples:
            examples["min" if eps is None else f"{eps:g}"] = out["x_adv"]
    return MatchOutcome(rows, {**examples, "index": out["idx"]} if examples and out else None)


def _attack(entrant: Entrant, eps: float | None, spec: MatchSpec, data: Split,
            device: torch.device) -> dict[str, torch.Tensor]:
    """Attack the correctly classified samples in batches; judge on the full defended model."""
    attack = spec.attack.attack
    victim = entrant.base if spec.attack.view.off_target else entrant.model
    gray = spec.attack.view.kind is View.GRAY_BOX
    idx = torch.nonzero(entrant.clean_correct).flatten()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("fooled", "detected", "distance", "queries", "x_adv")}
    for b, start in enumerate(range(0, len(idx), spec.batch_size)):
        sel = idx[start:start + spec.batch_size]
        x, y = data.x[sel].to(device), data.y[sel].to(device)
        if gray and isolation.enabled():  # the base classifier alone, in a process without the defense
            result = isolation.call_elsewhere(attack, victim, x, y, eps, spec.seed + b)
        else:
            result = attack(victim, x, y, eps, seed=spec.seed + b, context=None if gray else entrant.defense)
        fooled = result.success
        with seeded(spec.seed + b, device):
            if victim is not entrant.model:
                fooled = predict(entrant.model, result.x_adv).argmax(1) != y
            if entrant.detector is not None:
                with torch.no_grad():
                    flagged = entrant.detector.detect(entrant.model, result.x_adv)
            else:
                flagged = torch.zeros(len(sel), dtype=torch.bool)
        for key, value in (("fooled", fooled), ("detected", flagged), ("distance", result.distance),
                           ("queries", result.queries), ("x_adv", result.x_adv if spec.save_examples else None)):
            if value is not None:
                parts[key].append(value.detach().cpu())
    out = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
    out["idx"] = idx
    return out


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


def score_transfer(entrant: Entrant, spec: MatchSpec, crafted: dict[float, Any], data: Split) -> MatchOutcome:
    """Judge transfer examples on ``entrant``: the target model is never queried while crafting."""
    device, rows = default_device(), []
    idx = torch.nonzero(entrant.clean_correct).flatten()
    for budget in spec.budgets:
        started, item = time.time(), crafted[budget]
        if isinstance(item, str):
            rows.append(_row(entrant.label, spec, budget, "failed", item, 0.0, started))
            continue
        x_adv, distance = item[0][idx].to(device), item[1][idx]
        with seeded(spec.seed, device), torch.no_grad():
            fooled = (predict(entrant.model, x_adv).argmax(1).cpu() != data.y[idx])
            flagged = (entrant.detector.detect(entrant.model, x_adv).cpu() if entrant.detector is not None
                       else torch.zeros(len(idx), dtype=torch.bool))
        row = _row(entrant.label, spec, budget, "ok", None, 0.0, started)
        _score(row, {"idx": idx, "fooled": fooled, "detected": flagged, "distance": distance,
                     "queries": torch.zeros(len(idx))}, budget, entrant)
        rows.append(row)
    return MatchOutcome(rows)


def _score(row: MatchRow, out: dict[str, torch.Tensor], budget: float, entrant: Entrant) -> None:
    fooled, distance = out["fooled"].bool(), out["distance"]
    broken = fooled & within(distance, budget) & ~out["detected"].bool() if len(fooled) else fooled
    robust = entrant.clean_correct.clone()
    robust[out["idx"]] = ~broken
    row.robust_accuracy = float(robust.float().mean())
    row.success_rate = float(broken.float().sum() / max(len(out["idx"]), 1))
    finite = distance[fooled & torch.isfinite(distance)] if len(fooled) else distance
    row.mean_distance = float(finite.mean()) if len(finite) else None
    row.mean_queries = float(out["queries"].float().mean()) if len(out["queries"]) else 0.0
    row.robust_mask = encode_mask(robust)
