"""Entrants: defended models built once per tournament (trained, loaded from the cache, loaded
from a file, or wrapped around another entrant), with their clean predictions."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arena.checks import model_checks
from arena.data import DataSplits, Split
from arena.defense import DefenseKind
from arena.model import default_device
from arena.registry import Registry
from arena.training import predict
from arena.tournament.cache import ModelCache, content_key
from arena.tournament.config import DefenseEntry, PluginRef, merged_params
from arena.tournament.matches import Entrant, seeded
from arena.tournament.store import encode_mask


@dataclass(frozen=True)
class EntrantSpec:
    """Everything needed to build one entrant, picklable for remote executors."""

    entry: DefenseEntry
    architecture: PluginRef
    dataset: PluginRef
    training: dict[str, Any]
    seed: int
    batch_size: int
    cache_root: str | None
    progress: bool = False


@dataclass
class Prepared:
    entrant: Entrant
    model_row: dict[str, Any]


def prepare(registry: Registry, spec: EntrantSpec, data: DataSplits, evaluation: Split,
            parents: dict[str, Entrant]) -> Prepared:
    """Build the entrant of ``spec`` (``parents`` holds the entrants it wraps or fine-tunes)."""
    entry, device = spec.entry, default_device()
    architecture = entry.architecture or spec.architecture
    cls = registry.get("defenses", entry.id)
    defaults = spec.training if cls.defense_kind is DefenseKind.TRAINING else None
    defense = cls(**merged_params(cls, entry.params, defaults))
    start = time.perf_counter()
    detector, key = None, None
    if cls.defense_kind is DefenseKind.TRAINING:
        model, key = _train(registry, spec, defense, data, parents, device)
        base = model
    elif cls.defense_kind is DefenseKind.PRETRAINED:
        arch = registry.make_architecture(architecture.id, **architecture.params)
        model = base = defense.load(arch, data).to(device).eval()
    else:
        below = parents[entry.on]
        base = below.base.to(device)
        if cls.defense_kind is DefenseKind.INFERENCE:
            model, key = _wrap(registry, spec, defense, below, data, device)
        else:
            model, detector = below.model.to(device), defense
            defense.fit(model, data.train, seed=spec.seed)
    seconds = time.perf_counter() - start
    with seeded(spec.seed, device):  # a randomised model's clean answers must not depend on the RNG's history
        correct = predict(model, evaluation.x.to(device), spec.batch_size).argmax(1).cpu() == evaluation.y
        fpr = None
        if detector is not None:
            with torch.no_grad():
                fpr = float(detector.detect(model, evaluation.x.to(device)).float().mean())
        checks = model_checks(model, evaluation.x[:64].to(device), evaluation.y[:64].to(device))
    provenance = getattr(defense, "provenance", None)
    if provenance is None:  # a wrapper or detector runs on the backend of the model it wraps
        parent = parents.get(entry.on) if entry.on else None
        provenance = dict(parent.provenance) if parent is not None and parent.provenance else {"backend": "torch"}
    row = dict(defense=entry.label, checks=checks, provenance=provenance, defense_id=entry.id,
               defense_kind=cls.defense_kind.value, config=defense.config.model_dump(mode="json"),
               clean_accuracy=float(correct.float().mean()), clean_mask=encode_mask(correct),
               false_positive_rate=fpr, cache_key=key, train_seconds=seconds)
    return Prepared(Entrant(entry.label, defense, model, base, detector, correct, key, provenance), row)


def providers(registry: Registry, **ids: str) -> dict[str, str]:
    """The distribution and version that provide each plugin (``defenses="gda"`` ->
    ``{"defenses": "adversarial-arena 0.1.1"}``), part of every cache key: a new release of a plugin's
    package trains its models again instead of reusing weights its old code produced."""
    out = {}
    for kind, pid in ids.items():
        owner = registry.owners.get((kind, pid))
        out[kind] = f"{owner.distribution} {owner.version}" if owner is not None else ""
    return out


def _wrap(registry: Registry, spec: EntrantSpec, defense: Any, below: Entrant, data: DataSplits,
          device: torch.device) -> tuple[nn.Module, str | None]:
    """An inference-time defense around ``below``. One that trains parameters of its own (DLN's
    sanitiser) is cached like a trained model, keyed by its config and the wrapped model's key."""
    if not (getattr(defense, "learned", False) and below.cache_key):
        return defense.wrap(below.model.to(device), data, seed=spec.seed).to(device).eval(), None
    key = content_key(defense=spec.entry.id, config=defense.config.model_dump(mode="json"),
                      dataset=spec.dataset.model_dump(mode="json"), seed=spec.seed,
                      wraps=below.cache_key, code=providers(registry, defenses=spec.entry.id))
    template = defense.wrap(below.model.to(device), data, seed=spec.seed, train=False).to(device)
    model = _cached(spec, key, template, lambda: defense.wrap(below.model.to(device), data, seed=spec.seed))
    return model.to(device).eval(), key


def _cached(spec: EntrantSpec, key: str, template: nn.Module, build) -> nn.Module:
    """``template`` with the weights cached under ``key``, else ``build()``'s model, cached."""
    cache = ModelCache(Path(spec.cache_root) if spec.cache_root else None)
    cached = cache.load(key, template)
    if cached is not None:
        return cached
    model = build()
    cache.save(key, model)
    return model


def _train(registry: Registry, spec: EntrantSpec, defense: Any, data: DataSplits,
           parents: dict[str, Entrant], device: torch.device) -> tuple[nn.Module, str]:
    entry = spec.entry
    architecture = entry.architecture or spec.architecture
    arch = registry.make_architecture(architecture.id, **architecture.params)
    parent = parents[entry.finetune_from] if entry.finetune_from else None
    key = content_key(defense=entry.id, config=defense.config.model_dump(mode="json"),
                      architecture=architecture.model_dump(mode="json"),
                      dataset=spec.dataset.model_dump(mode="json"), seed=spec.seed,
                      parent=parent.cache_key if parent else None,
                      code=providers(registry, defenses=entry.id, architectures=architecture.id,
                                     datasets=spec.dataset.id))
    torch.manual_seed(spec.seed)
    template = defense.build(arch, data.input_shape, data.num_classes)

    def build() -> nn.Module:
        model = template.to(device)
        if parent is not None:
            model.load_state_dict(parent.base.state_dict())
        defense.train(model, data, seed=spec.seed, finetune=parent is not None, progress=spec.progress)
        return model

    return _cached(spec, key, template, build).to(device).eval(), key
