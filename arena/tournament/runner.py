"""The tournament runner: trains (or loads) every defended model once, runs every attack
against every defense, and writes one row per (defense, attack, budget) as each match ends.

Shared work is never repeated: trained models come from the on-disk cache, clean predictions
are computed once per model, samples already misclassified are not attacked, and one run of a
minimal-perturbation attack serves every budget.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from arena.attack import Attack
from arena.defense import Defense, DefenseKind, DetectorDefense
from arena.model import default_device
from arena.registry import Registry
from arena.threat import Knowledge
from arena.training import predict
from arena.tournament.cache import ModelCache, content_key
from arena.tournament.config import AttackEntry, DefenseEntry, TournamentConfig, defense_order, merged_params
from arena.tournament.provenance import provenance
from arena.tournament.store import MatchRow, Store, encode_mask

UNBOUNDED = math.inf


@dataclass
class Entrant:
    """A defended model ready to be attacked."""

    entry: DefenseEntry
    defense: Defense
    model: nn.Module  # the whole defended model (white-box view)
    base: nn.Module  # the classifier without inference-time parts (gray-box view)
    detector: DetectorDefense | None
    clean_correct: torch.Tensor  # bool per evaluated sample
    cache_key: str | None = None


class Runner:
    """Runs one tournament into a :class:`Store`."""

    def __init__(self, cfg: TournamentConfig, registry: Registry, store: Store, *,
                 cache_dir: str | Path | None = ".arena/cache", progress: bool = True,
                 device: torch.device | None = None, source: str | None = None,
                 source_text: str | None = None) -> None:
        self.cfg, self.registry, self.store = cfg, registry, store
        self.cache = ModelCache(Path(cache_dir) / "models" if cache_dir is not None else None)
        self.progress = progress
        self.device = device or default_device()
        self.source, self.source_text = source, source_text
        self.entrants: dict[str, Entrant] = {}

    def run(self, resume: bool = False) -> int:
        """Run (or, with ``resume``, finish) the tournament; returns the run id."""
        cfg = self.cfg
        data = self.registry.make_dataset(cfg.dataset.id, **cfg.dataset.params).load(cfg.seed)
        self.data = data
        self.eval = data.test.take(cfg.samples, cfg.seed)
        run_id = self.store.resumable_run(cfg.digest()) if resume else None
        if run_id is None:
            run_id = self.store.start_run(cfg.name, cfg.digest(), cfg.model_dump(mode="json"), self.source,
                                          self.source_text, cfg.seed, time.time(), provenance(self.device))
        done = self.store.done_matches(run_id)
        order = defense_order(cfg)
        total = len(order) * (1 + len(cfg.attacks))
        with tqdm(total=total, disable=not self.progress, unit="step", dynamic_ncols=True) as bar:
            for entry in order:
                bar.set_description(f"preparing {entry.label}")
                self.entrants[entry.label] = entrant = self._prepare(entry, run_id)
                bar.update()
                for attack_entry in cfg.attacks:
                    bar.set_description(f"{attack_entry.label} vs {entry.label}")
                    todo = [b for b in self._budgets(attack_entry) if (entry.label, attack_entry.label, b) not in done]
                    if todo:
                        for row in self._match(entrant, attack_entry, todo):
                            self.store.save_match(run_id, row)
                    bar.update()
        self.store.finish_run(run_id, time.time())
        return run_id

    def _budgets(self, entry: AttackEntry) -> list[float]:
        cls = self.registry.get("attacks", entry.id)
        return list(entry.budgets) + ([UNBOUNDED] if cls.minimal else [])

    # ----------------------------------------------------------------- models
    def _prepare(self, entry: DefenseEntry, run_id: int) -> Entrant:
        cls = self.registry.get("defenses", entry.id)
        defaults = self.cfg.training if cls.defense_kind is DefenseKind.TRAINING else None
        defense = cls(**merged_params(cls, entry.params, defaults))
        start = time.perf_counter()
        detector, key = None, None
        if cls.defense_kind is DefenseKind.TRAINING:
            model, key = self._train(entry, defense)
            base = model
        elif cls.defense_kind is DefenseKind.PRETRAINED:
            arch = self.registry.make_architecture(self.cfg.architecture.id, **self.cfg.architecture.params)
            model = base = defense.load(arch, self.data).to(self.device).eval()
        else:
            below = self.entrants[entry.on]
            base = below.base
            if cls.defense_kind is DefenseKind.INFERENCE:
                model = defense.wrap(below.model, self.data, seed=self.cfg.seed).to(self.device).eval()
            else:
                model, detector = below.model, defense
                defense.fit(model, self.data.train, seed=self.cfg.seed)
        seconds = time.perf_counter() - start
        correct = self._predict(model, self.eval.x).argmax(1).cpu() == self.eval.y
        fpr = None
        if detector is not None:
            fpr = float(self._detect(detector, model, self.eval.x).float().mean())
        self.store.save_model(run_id, defense=entry.label, defense_id=entry.id,
                              defense_kind=cls.defense_kind.value, config=defense.config.model_dump(mode="json"),
                              clean_accuracy=float(correct.float().mean()), clean_mask=encode_mask(correct),
                              false_positive_rate=fpr, cache_key=key, train_seconds=seconds)
        return Entrant(entry, defense, model, base, detector, correct, key)

    def _train(self, entry: DefenseEntry, defense: Any) -> tuple[nn.Module, str]:
        cfg = self.cfg
        arch = self.registry.make_architecture(cfg.architecture.id, **cfg.architecture.params)
        parent = self.entrants[entry.finetune_from] if entry.finetune_from else None
        key = content_key(defense=entry.id, config=defense.config.model_dump(mode="json"),
                          architecture=cfg.architecture.model_dump(mode="json"),
                          dataset=cfg.dataset.model_dump(mode="json"), seed=cfg.seed,
                          parent=parent.cache_key if parent else None)
        torch.manual_seed(cfg.seed)
        template = defense.build(arch, self.data.input_shape, self.data.num_classes)
        cached = self.cache.load(key, template)
        if cached is not None:
            return cached.to(self.device), key
        model = template.to(self.device)
        if parent is not None:
            model.load_state_dict(parent.base.state_dict())
        defense.train(model, self.data, seed=cfg.seed, finetune=parent is not None, progress=self.progress)
        self.cache.save(key, model)
        return model.eval(), key

    def _predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return predict(model, x.to(self.device), self.cfg.batch_size)

    def _detect(self, detector: DetectorDefense, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return detector.detect(model, x.to(self.device)).cpu()

    # ---------------------------------------------------------------- matches
    def _match(self, entrant: Entrant, entry: AttackEntry, budgets: list[float]) -> list[MatchRow]:
        cls = self.registry.get("attacks", entry.id)
        attack: Attack = cls(**entry.params)
        rows = []
        runs = [(None, budgets)] if attack.minimal else [(b, [b]) for b in budgets]
        for eps, served in runs:
            started, t0 = time.time(), time.perf_counter()
            try:
                outcome = self._attack(entrant, attack, eps)
                status, error = "ok", None
            except Exception as exc:  # one plugin's failure fails its own match only
                outcome, status, error = None, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
            wall = (time.perf_counter() - t0) / len(served)
            for budget in served:
                row = MatchRow(defense=entrant.entry.label, attack=entry.label, budget=budget, attack_id=entry.id,
                               attack_config=attack.config.model_dump(mode="json"), norm=attack.threat_norm.value,
                               knowledge=attack.knowledge.value, status=status, error=error, wall_seconds=wall,
                               started=started, finished=time.time())
                if outcome is not None:
                    self._score(row, outcome, budget, entrant)
                rows.append(row)
        return rows

    def _attack(self, entrant: Entrant, attack: Attack, eps: float | None) -> dict[str, torch.Tensor]:
        """Attack the correctly classified samples in batches; judge on the full defended model."""
        victim = entrant.base if attack.knowledge is Knowledge.GRAY_BOX else entrant.model
        idx = torch.nonzero(entrant.clean_correct).flatten()
        fooled, detected, distance, queries = [], [], [], []
        for b, start in enumerate(range(0, len(idx), self.cfg.batch_size)):
            sel = idx[start:start + self.cfg.batch_size]
            x, y = self.eval.x[sel].to(self.device), self.eval.y[sel].to(self.device)
            result = attack(victim, x, y, eps, seed=self.cfg.seed + b, context=entrant.defense)
            success = result.success
            if victim is not entrant.model:
                success = self._predict(entrant.model, result.x_adv).argmax(1) != y
            flagged = (self._detect(entrant.detector, entrant.model, result.x_adv) if entrant.detector
                       else torch.zeros(len(sel), dtype=torch.bool))
            fooled.append(success.cpu())
            detected.append(flagged.cpu())
            distance.append(result.distance.cpu())
            queries.append(result.queries.cpu())
        return {"idx": idx, "fooled": _cat(fooled, torch.bool), "detected": _cat(detected, torch.bool),
                "distance": _cat(distance, torch.float32), "queries": _cat(queries, torch.long)}

    def _score(self, row: MatchRow, out: dict[str, torch.Tensor], budget: float, entrant: Entrant) -> None:
        within = out["distance"] <= budget * (1 + 1e-5) + 1e-7
        broken = out["fooled"] & within & ~out["detected"]
        robust = entrant.clean_correct.clone()
        robust[out["idx"]] = ~broken
        n_attacked = max(len(out["idx"]), 1)
        row.robust_accuracy = float(robust.float().mean())
        row.success_rate = float(broken.float().sum() / n_attacked)
        finite = out["distance"][out["fooled"] & torch.isfinite(out["distance"])]
        row.mean_distance = float(finite.mean()) if len(finite) else None
        row.mean_queries = float(out["queries"].float().mean()) if len(out["queries"]) else 0.0
        row.robust_mask = encode_mask(robust)


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.empty(0, dtype=dtype)
