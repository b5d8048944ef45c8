"""The tournament driver: builds every entrant once, runs every attack against every defense
through an executor, and writes one row per (defense, attack, budget) as each match ends.

Shared work is never repeated: trained models come from the on-disk cache, clean predictions
are computed once per model, samples already misclassified are not attacked, one run of a
minimal-perturbation attack serves every budget, and ``resume`` skips finished matches and
entrants that no unfinished match needs.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from arena.model import default_device
from arena.registry import Registry
from arena.tournament.config import AttackEntry, DefenseEntry, TournamentConfig, attack_minimal, defense_order
from arena.tournament.entrants import EntrantSpec, Prepared, prepare
from arena.tournament.executors import LocalExecutor, RayExecutor
from arena.tournament.matches import Entrant, MatchOutcome, MatchSpec, craft_transfer, run_match, score_transfer
from arena.tournament.provenance import provenance
from arena.tournament.store import MatchRow, Store

UNBOUNDED = math.inf


class Runner:
    """Runs one tournament into a :class:`Store`."""

    def __init__(self, cfg: TournamentConfig, registry: Registry, store: Store, *,
                 cache_dir: str | Path | None = ".arena/cache", progress: bool = True,
                 executor: LocalExecutor | RayExecutor | None = None, source: str | None = None,
                 source_text: str | None = None) -> None:
        self.cfg, self.registry, self.store = cfg, registry, store
        self.cache_root = str(Path(cache_dir) / "models") if cache_dir is not None else None
        self.progress = progress
        self.executor = executor or LocalExecutor()
        self.source, self.source_text = source, source_text
        self.entrants: dict[str, Entrant] = {}
        self._minimal: dict[str, bool] = {}

    def run(self, resume: bool = False) -> int:
        """Run (or, with ``resume``, finish) the tournament; returns the run id."""
        cfg = self.cfg
        self.data = self.registry.make_dataset(cfg.dataset.id, **cfg.dataset.params).load(cfg.seed)
        self.eval = self.data.test.take(cfg.samples, cfg.seed)
        run_id = self.store.resumable_run(cfg.digest()) if resume else None
        if run_id is None:
            run_id = self.store.start_run(cfg.name, cfg.digest(), cfg.model_dump(mode="json"), self.source,
                                          self.source_text, cfg.seed, time.time(), self._provenance())
        self.run_id = run_id
        todo = self._todo(self.store.done_matches(run_id))
        needed = self._needed(todo)
        total = len(needed) + sum(len(v) for v in todo.values())
        with tqdm(total=total, disable=not self.progress, unit="task", dynamic_ncols=True) as bar:
            self.bar = bar
            shared = (self.executor.share(self.data), self.executor.share(self.eval))
            for level in _levels([e for e in defense_order(cfg) if e.label in needed]):
                self._prepare_level(level, shared)
                self._run_matches([e.label for e in level if e.label in self.entrants], todo, shared[1])
            self._run_transfers(todo, shared[1])
        self.store.finish_run(run_id, time.time())
        return run_id

    # ------------------------------------------------------------- planning
    def _budgets(self, attack: AttackEntry) -> list[float]:
        """The entry's budgets, plus ∞ for a minimal attack (judged per configured instance: a
        wrapper such as eot is minimal only when its inner attack is)."""
        if attack.label not in self._minimal:
            self._minimal[attack.label] = attack_minimal(self.registry.get("attacks", attack.id), attack.params)
        return list(attack.budgets) + ([UNBOUNDED] if self._minimal[attack.label] else [])

    def _todo(self, done: set[tuple[str, str, float]]) -> dict[str, list[tuple[Any, list[float]]]]:
        """Per defense, the attacks with the budgets still to be run."""
        todo: dict[str, list[tuple[Any, list[float]]]] = {}
        for d in self.cfg.defenses:
            for a in self.cfg.attacks:
                if not a.faces(d.label):
                    continue
                missing = [b for b in self._budgets(a) if (d.label, a.label, b) not in done]
                if missing:
                    todo.setdefault(d.label, []).append((a, missing))
        return todo

    def _needed(self, todo: dict[str, Any]) -> set[str]:
        """Entrants with unfinished matches, and the entrants they are built from."""
        needed: set[str] = set()
        stack = list(todo)
        while stack:
            label = stack.pop()
            if label not in needed:
                needed.add(label)
                entry = self.cfg.defense(label)
                stack += [r for r in (entry.on, entry.finetune_from) if r]
                stack += [a.surrogate for a, _ in todo.get(label, []) if a.surrogate]
        return needed

    # ------------------------------------------------------------- running
    def _prepare_level(self, level: list[DefenseEntry], shared: tuple[Any, Any]) -> None:
        cfg = self.cfg
        jobs = []
        for entry in level:
            spec = EntrantSpec(entry, cfg.architecture, cfg.dataset, cfg.training, cfg.seed, cfg.batch_size,
                               self.cache_root, progress=False)
            parents = {r: self.entrants[r] for r in (entry.on, entry.finetune_from) if r in self.entrants}
            jobs.append((entry.label, (self.registry, spec, shared[0], shared[1], parents)))
        for label, result in self.executor.map(prepare, jobs):
            self.bar.update()
            if isinstance(result, Prepared):
                self.store.save_model(self.run_id, **result.model_row)
                self.entrants[label] = result.entrant
            else:
                self._entrant_failed(label, result)

    def _entrant_failed(self, label: str, exc: BaseException) -> None:
        reason = f"defense '{label}' could not be built: {type(exc).__name__}: {exc}".splitlines()[0]
        for a in self.cfg.attacks:
            for b in self._budgets(a) if a.faces(label) else []:
                self.store.save_match(self.run_id, MatchRow(
                    defense=label, attack=a.label, budget=b, attack_id=a.id, attack_config=a.params, norm="",
                    knowledge="", status="failed", error=reason))

    def _run_matches(self, labels: list[str], todo: dict[str, list], evaluation: Any) -> None:
        jobs = []
        for label in labels:
            entrant = self.executor.share(self.entrants[label])
            for attack, budgets in todo.get(label, []):
                if attack.surrogate is not None:
                    continue
                spec = self._spec(attack, budgets, label)
                jobs.append(((label, attack.label), (self.registry, entrant, spec, evaluation)))
        for (label, attack), outcome in self.executor.map(run_match, jobs):
            self.bar.set_description(f"{attack} vs {label}")
            self.bar.update()
            if isinstance(outcome, MatchOutcome):
                for row in outcome.rows:
                    self.store.save_match(self.run_id, row)
                if outcome.examples is not None:
                    self.store.save_examples(self.run_id, label, attack, outcome.examples)
            else:
                self._match_crashed(label, attack, todo, outcome)

    def _run_transfers(self, todo: dict[str, list], evaluation: Any) -> None:
        """Transfer attacks: examples crafted once per (surrogate, attack), judged on every defense."""
        wanted: dict[str, tuple[Any, set[float], list[str]]] = {}
        for label, items in todo.items():
            for attack, budgets in items:
                if attack.surrogate is not None and label in self.entrants:
                    entry = wanted.setdefault(attack.label, (attack, set(), []))
                    entry[1].update(budgets)
                    entry[2].append(label)
        jobs = [(name, (self.registry, self.entrants[a.surrogate], self._spec(a, sorted(b), a.surrogate), evaluation))
                for name, (a, b, _) in wanted.items()]
        for name, crafted in self.executor.map(craft_transfer, jobs):
            attack, _, labels = wanted[name]
            for label in labels:
                self.bar.set_description(f"{name} vs {label}")
                self.bar.update()
                budgets = next(b for a, b in todo[label] if a.label == name)
                if isinstance(crafted, BaseException):
                    self._match_crashed(label, name, todo, crafted)
                    continue
                spec = self._spec(attack, budgets, label)
                for row in score_transfer(self.registry, self.entrants[label], spec, crafted, self.eval).rows:
                    self.store.save_match(self.run_id, row)

    def _match_crashed(self, label: str, attack: str, todo: dict[str, list], exc: BaseException) -> None:
        entry, budgets = next((a, b) for a, b in todo[label] if a.label == attack)
        for b in budgets:
            self.store.save_match(self.run_id, MatchRow(
                defense=label, attack=attack, budget=b, attack_id=entry.id, attack_config=entry.params, norm="",
                knowledge="", status="failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0]))

    def _spec(self, attack: Any, budgets: list[float], defense: str) -> MatchSpec:
        owners = self.registry.owners
        timeout = attack.timeout if attack.timeout is not None else self.cfg.match_timeout
        return MatchSpec(attack.label, attack.id, dict(attack.params), tuple(budgets), self.cfg.seed,
                         self.cfg.batch_size, timeout, self.cfg.save_examples,
                         {"attack_plugin": str(owners.get(("attacks", attack.id), "")),
                          "defense_plugin": str(owners.get(("defenses", self.cfg.defense(defense).id), "")),
                          "config_hash": self.cfg.digest(), "seed": self.cfg.seed,
                          "executor": self.executor.name, "surrogate": attack.surrogate, "view": attack.view},
                         view=attack.view)

    def _provenance(self) -> dict[str, Any]:
        device = default_device()
        return {**provenance(device), "executor": self.executor.name, "config_hash": self.cfg.digest(),
                "torch_deterministic": torch.are_deterministic_algorithms_enabled()}


def _levels(entries: list[DefenseEntry]) -> list[list[DefenseEntry]]:
    """Group dependency-ordered entries into levels whose members do not depend on each other."""
    depth: dict[str, int] = {}
    for e in entries:
        refs = [r for r in (e.on, e.finetune_from) if r]
        depth[e.label] = 1 + max((depth.get(r, -1) for r in refs), default=-1)
    return [[e for e in entries if depth[e.label] == d] for d in range(max(depth.values(), default=-1) + 1)]
