"""Entrants: defended models built once per tournament (trained, loaded from the cache, loaded
from a file, or wrapped around another entrant), with their clean predictions."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena.checks import model_checks
from arena.data import DataSplits, Split
from arena.defense import DetectorDefense, InferenceDefense, PretrainedDefense, TrainingDefense
from arena.metric import ModelInputs, evaluate
from arena.model import SpeedSettings, default_device, eager, seeded, speed_record, warm_up, with_speed, without_speed
from arena.refs import DatasetRef
from arena.registry import Registry
from arena.training import judged
from arena.tournament.cache import ModelCache, content_key, numerics
from arena.tournament.matches import Entrant
from arena.tournament.plan import DefensePlan
from arena.tournament.records import metric_row
from arena.tournament.store import encode_mask


@dataclass(frozen=True)
class EntrantSpec:
    """Everything needed to build one entrant, picklable for remote executors."""

    defense: DefensePlan
    dataset: DatasetRef
    seed: int
    batch_size: int
    cache_root: str | None
    code: dict[str, str]  # the distribution and version of each plugin involved, by kind (providers)
    progress: bool = False
    judge_passes: int = 20  # a randomised model is correct on a sample when the majority of passes are
    metrics: tuple[Any, ...] = ()  # the model metrics (MetricPlans) measured on this entrant
    speed: SpeedSettings | None = None  # the tournament's [speed]: how the built model runs (None: as built)


@dataclass
class Prepared:
    entrant: Entrant
    model_row: dict[str, Any]


@dataclass
class Built:
    """What a defense's kind makes of it: the defended model, its base classifier, the detector
    (if any) and the cache key of trained weights (if any)."""

    model: nn.Module
    base: nn.Module
    detector: DetectorDefense | None = None
    key: str | None = None


def prepare(spec: EntrantSpec, data: DataSplits, evaluation: Split, *parents: Entrant) -> Prepared:
    """Build the entrant of ``spec``; ``parents`` are the entrants it wraps or fine-tunes, in the
    order of ``spec.defense.parents`` (positional, so that every executor can share them)."""
    by_label = {p.label: p for p in parents}
    plan, device = spec.defense, default_device()
    start = time.perf_counter()
    built = plan.defense.enter(_Builder(spec, data, by_label, device))
    seconds = time.perf_counter() - start
    built = _with_speed(built, spec.speed)
    model, detector = built.model, built.detector
    if len(evaluation):  # compile now (speed.compile), or fall back to eager and say so in the provenance
        warm_up(model, evaluation.x[:spec.batch_size].to(device))
    with seeded(spec.seed, device):  # a randomised model's clean answers must not depend on the RNG's history
        ((correct, _),) = judged(model, evaluation.x.to(device), spec.judge_passes, evaluation.y.to(device),
                                 batch_size=spec.batch_size)
        correct = correct.cpu()
        fpr = None
        if detector is not None:
            with torch.no_grad():
                fpr = float(detector.detect(model, evaluation.x.to(device)).float().mean())
        with eager(model):  # the checks trace the forward pass's Python calls; compiling would add to them
            checks = model_checks(model, evaluation.x[:64].to(device), evaluation.y[:64].to(device))
        metrics = model_metrics(spec, data, evaluation, plan.label, built, correct, device)
    provenance = getattr(plan.defense, "provenance", None)
    if provenance is None:  # a wrapper or detector runs on the backend of the model it wraps
        parent = by_label.get(plan.on) if plan.on else None
        provenance = dict(parent.provenance) if parent is not None and parent.provenance else {"backend": "torch"}
    speed = speed_record(model)
    provenance = {k: v for k, v in provenance.items() if k != "speed"} | ({"speed": speed} if speed else {})
    row = dict(defense=plan.label, checks=checks, provenance=provenance, defense_id=plan.id,
               defense_kind=plan.defense.defense_kind.value, config=plan.defense.config.model_dump(mode="json"),
               clean_accuracy=float(correct.float().mean()), clean_mask=encode_mask(correct),
               false_positive_rate=fpr, cache_key=built.key, train_seconds=seconds, metrics=metrics)
    entrant = Entrant(plan.label, plan.defense, model, built.base, detector, correct, built.key, provenance)
    return Prepared(entrant, row)


def _with_speed(built: Built, speed: SpeedSettings | None) -> Built:
    """``built`` with its model and base classifier under the speed settings (the same wrapper
    when they are one module); nothing changes when no setting is on. Applied after training,
    loading or caching, so weights and cache entries are those of the plain model."""
    if speed is None or not speed.active:
        return built
    model = with_speed(built.model, speed)
    base = model if built.base is built.model else with_speed(built.base, speed)
    return Built(model, base, built.detector, built.key)


def model_metrics(spec: EntrantSpec, data: DataSplits, evaluation: Split, label: str, built: Built,
                  correct: torch.Tensor, device: torch.device) -> list[dict[str, Any]]:
    """The entrant's model metrics as ``metrics`` rows, each measured on the evaluated clean
    samples (a metric's failure fails its own row only)."""
    rows = []
    for mp in spec.metrics:
        inputs = ModelInputs(label, built.model, built.base, built.detector, evaluation.x, evaluation.y, correct,
                             data.train if "train" in mp.metric.needs else None, device)
        with seeded(spec.seed, device):
            outcome = evaluate(mp.metric, inputs)
        rows.append(metric_row(mp, label, "", 0.0, outcome,
                               {"metric_plugin": mp.plugin, "samples": len(evaluation), "seed": spec.seed}))
    return rows


def providers(registry: Registry, **ids: str) -> dict[str, str]:
    """The distribution and version that provide each plugin (``defenses="gda"`` ->
    ``{"defenses": "adversarial-arena 0.1.1"}``), part of every cache key: a new release of a plugin's
    package trains its models again instead of reusing weights its old code produced."""
    out = {}
    for kind, pid in ids.items():
        owner = registry.owners.get((kind, pid))
        out[kind] = f"{owner.distribution} {owner.version}" if owner is not None else ""
    return out


def _data_files(spec: EntrantSpec) -> dict[str, Any]:
    """What the data files the dataset's params name hold (a local image tree, a tensor file),
    for the cache key: adding images under the same path trains again. Nothing for a dataset
    that names no files, so those keys are as they were."""
    from arena.tournament.identity import fingerprint

    files = fingerprint(spec.dataset.params)
    return {"data": files} if files else {}


class _Builder:
    """The tournament's :class:`arena.defense.EntrantBuilder`: trains (or restores from the cache),
    loads, wraps or fits each kind of defense."""

    def __init__(self, spec: EntrantSpec, data: DataSplits, parents: dict[str, Entrant],
                 device: torch.device) -> None:
        self.spec, self.data, self.parents, self.device = spec, data, parents, device
        self.cache = ModelCache(Path(spec.cache_root) if spec.cache_root else None)

    def train(self, defense: TrainingDefense) -> Built:
        spec, plan, data = self.spec, self.spec.defense, self.data
        parent = self.parents[plan.finetune_from] if plan.finetune_from else None
        key = content_key(defense=plan.id, config=defense.config.model_dump(mode="json"),
                          architecture=plan.architecture.model_dump(mode="json"),
                          dataset=spec.dataset.model_dump(mode="json"), seed=spec.seed,
                          parent=parent.cache_key if parent else None,
                          code=spec.code, numerics=numerics(self.device), **_data_files(spec))

        def fresh() -> nn.Module:  # the untrained model, initialised by the seed alone
            torch.manual_seed(spec.seed)
            return defense.build(plan.architecture.build(), data.input_shape, data.num_classes).to(self.device)

        def build() -> nn.Module:
            model = fresh()
            if parent is not None:
                model.load_state_dict(without_speed(parent.base).state_dict())
            defense.train(model, data, seed=spec.seed, finetune=parent is not None, progress=spec.progress)
            return model

        model = self._cached(key, fresh, build).to(self.device).eval()
        return Built(model, model, key=key)

    def load(self, defense: PretrainedDefense) -> Built:
        model = defense.load(self.spec.defense.architecture.build(), self.data).to(self.device).eval()
        return Built(model, model)

    def wrap(self, defense: InferenceDefense) -> Built:
        """An inference-time defense around its parent. One that trains parameters of its own (DLN's
        sanitiser) is cached like a trained model, keyed by its config and the wrapped model's key."""
        spec, below, device = self.spec, self.parents[self.spec.defense.on], self.device
        inner = without_speed(below.model).to(device)  # a defense wraps the network, not its speed wrapper
        base = without_speed(below.base).to(device)
        if not (defense.learned and below.cache_key):
            return Built(defense.wrap(inner, self.data, seed=spec.seed).to(device).eval(), base)
        key = content_key(defense=spec.defense.id, config=defense.config.model_dump(mode="json"),
                          dataset=spec.dataset.model_dump(mode="json"), seed=spec.seed,
                          wraps=below.cache_key, code={"defenses": spec.code["defenses"]},
                          numerics=numerics(device))
        model = self._cached(key, lambda: defense.wrap(inner, self.data, seed=spec.seed, train=False).to(device),
                             lambda: defense.wrap(inner, self.data, seed=spec.seed))
        return Built(model.to(device).eval(), base, key=key)

    def detect(self, defense: DetectorDefense) -> Built:
        below = self.parents[self.spec.defense.on]
        model = without_speed(below.model).to(self.device)
        defense.fit(model, self.data.train, seed=self.spec.seed)
        return Built(model, without_speed(below.base).to(self.device), detector=defense)

    def _cached(self, key: str, fresh: Callable[[], nn.Module], build: Callable[[], nn.Module]) -> nn.Module:
        """A module from ``fresh()`` (untrained) with the weights cached under ``key``, handed out only
        when the entry is intact and fits it completely (:class:`ModelCache`); else ``build()``'s
        model, trained from scratch on a module of its own and cached, replacing a rejected entry."""
        cached = self.cache.load(key, fresh)
        if cached is not None:
            return cached
        model = build()
        self.cache.save(key, model)
        return model
