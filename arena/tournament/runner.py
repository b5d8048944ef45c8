"""The tournament driver: builds every entrant once, runs every attack against every defense
through an executor, and writes one row per (defense, attack, budget) as each match ends.

Shared work is never repeated: trained models come from the on-disk cache, clean predictions
are computed once per model, samples already misclassified are not attacked, one run of a
minimal-perturbation attack serves every budget, and ``resume`` skips finished matches and
entrants that no unfinished match needs.

Sharded matches (:mod:`arena.tournament.shards`). A match whose attack calls have several
batches can run as several tasks, each a contiguous range of one call's batches, merged by the
driver into exactly the rows one task stores: ``shards = N`` in the file splits every call into
N, ``"auto"`` (the default) only the calls whose expected cost exceeds a balanced task's share
(every pending match's expected cost over the executor's parallelism), so that a run of many
matches, or on one worker, runs as before. Each finished shard is stored (the ``shards``
table) until its match's rows are, and ``resume`` runs only the missing ones.

Incremental tournaments. Every model and match row is stored with its key
(:mod:`arena.tournament.identity`: what determines the result). A new run first copies into
itself each result that an earlier run of the database stored under the same key (``ok`` rows
only, with their metrics, marked ``reused`` in their provenance), then runs what is left: adding
a defense, an attack or a budget to a file runs exactly the new matches. ``reuse=False``
(``arena run --fresh``) computes everything again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from operator import attrgetter

from arena import isolation
from arena.tournament import identity
from arena.model import default_device
from arena.tournament.entrants import EntrantSpec, Prepared, prepare, providers
from arena.tournament.executors import InlineExecutor, LocalExecutor, RayExecutor
from arena.tournament.matches import (Entrant, MatchOutcome, MatchSpec, ShardOutcome, craft_transfer, failed_rows,
                                      merge_shards, run_match, score_transfer)
from arena.tournament.plan import AttackPlan, DefensePlan, Plan, check_architectures, check_samples
from arena.tournament.progress import Output, Progress, match_units
from arena.tournament.provenance import provenance
from arena.tournament.shards import (AUTO, AUTO_EVAL_BATCH, Shard, attacked, batch_count, call_name, decode, encode,
                                     missing, piece_key, ranges, samples_per_batch, shard_count)
from arena.tournament.store import Store, model_basis
from arena.tournament.workers import Shared

Todo = dict[str, list[tuple[AttackPlan, tuple[float, ...]]]]


@dataclass
class Sharded:
    """A match that runs as shards: what is left to run, what has come back (or was stored by
    an interrupted run), and the key each of its calls' shards are stored under."""

    label: str
    attack: AttackPlan
    spec: MatchSpec
    keys: dict[str, str]  # call name -> piece key (shards.piece_key)
    todo: list[Shard] = field(default_factory=list)
    pieces: list[ShardOutcome] = field(default_factory=list)
    waiting: int = 0
    done: bool = False


class Runner:
    """Runs one tournament :class:`~arena.tournament.plan.Plan` into a :class:`Store`."""

    def __init__(self, plan: Plan, store: Store, *, cache_dir: str | Path | None = ".arena/cache",
                 progress: bool | Output = True, executor: LocalExecutor | RayExecutor | InlineExecutor | None = None,
                 source: str | None = None, source_text: str | None = None, reuse: bool = True) -> None:
        self.plan, self.registry, self.store = plan, plan.registry, store
        self.cache_root = str(Path(cache_dir) / "models") if cache_dir is not None else None
        self.progress = progress
        self.executor = executor or LocalExecutor()
        self.source, self.source_text = source, source_text
        self.reuse = reuse
        self.reused = 0  # the match rows this run took from earlier runs
        self.entrants: dict[str, Entrant] = {}
        self.shared: dict[str, Any] = {}  # each entrant as the executor shares it with its tasks

    def run(self, resume: bool = False) -> int:
        """Run (or, with ``resume``, finish) the tournament; returns the run id."""
        plan, cfg = self.plan, self.plan.config
        self.data = plan.dataset.build().load(plan.seed)
        check_samples(plan, self.data)
        check_architectures(plan, self.data)
        self.eval = self.data.test.take(cfg.samples, plan.seed)
        run_id = self.store.resumable_run(plan.digest()) if resume else None
        if run_id is None:
            run_id = self.store.start_run(plan.name, plan.digest(), cfg.model_dump(mode="json"), self.source,
                                          self.source_text, plan.seed, time.time(), self._provenance())
        self.run_id = run_id
        try:
            self.keys = identity.keys(plan)
            if self.reuse:
                self._reuse()
            self._run_all(self.store.done_matches(run_id))
        except BaseException:  # ^C, SIGTERM, a crash of the driver: the run can be resumed
            self.store.finish_run(run_id, time.time(), status="interrupted")
            raise
        self.store.finish_run(run_id, time.time())
        return run_id

    def _run_all(self, done: set[tuple[str, str, float]]) -> None:
        todo = self._todo(done)
        self._todo_now = todo
        needed = self._needed(todo)
        self._needed_now = needed
        with Progress.for_run(self, needed, todo) as bar:
            self.bar = bar
            shared = (self.executor.share(self.data), self.executor.share(self.eval))
            for level in self.plan.levels():
                self._prepare_level([d for d in level if d.label in needed], shared)
                self._run_matches([d.label for d in level if d.label in self.entrants], todo, shared)
            self._run_transfers(todo, shared)

    # ------------------------------------------------------------- reuse
    def _reuse(self) -> None:
        """Copy into this run every result an earlier run stored under the same key that this
        run lacks: the match rows that finished ``ok``, and each entrant's model row. A match row
        is taken only when it stands on the same model as the model row taken (same cache key
        and clean predictions); an entrant rebuilt later is checked again (:meth:`_recheck`)."""
        run_id, keys = self.run_id, self.keys
        have_models = {m.defense for m in self.store.models(run_id)}
        found = identity.stored(self.store, keys, self.store.done_matches(run_id))
        examples: set[tuple[int, str, str, str, str]] = set()
        for (defense, attack, _), (key, match, basis) in found.matches.items():
            self.store.copy_match(run_id, match, defense, attack, key, basis)
            self.reused += 1
            examples.add((match.run_id, match.defense, match.attack, defense, attack))
        for label, model in found.models.items():
            if label not in have_models:
                self.store.copy_model(run_id, model, label, keys.models[label])
        if self.plan.config.save_examples:
            for old_run, old_defense, old_attack, defense, attack in examples:
                self.store.copy_examples(old_run, old_defense, old_attack, run_id, defense, attack)

    def _recheck(self, label: str, row: dict[str, Any], todo: Todo) -> None:
        """After ``label`` was built in this run: the reused matches that stand on another build
        of its model (other cache key or clean predictions, e.g. trained again elsewhere) are
        dropped and run again."""
        basis = model_basis(row.get("cache_key"), row["clean_mask"])
        runnable = {a.label for a in self.plan.attacks
                    if a.view.surrogate is None or a.view.surrogate in self._needed_now}
        stale = {(m.defense, m.attack, m.budget) for m in self.store.matches(self.run_id)
                 if m.defense == label and m.attack in runnable and isinstance(m.provenance.get("reused"), dict)
                 and m.provenance["reused"].get("model") != basis}
        if not stale:
            return
        self.store.forget_matches(self.run_id, stale)
        self.reused -= len(stale)
        for attack in self.plan.attacks:
            budgets = {b for (_, a, b) in stale if a == attack.label}
            if not budgets:
                continue
            items = todo.setdefault(label, [])
            known = next((i for i, (a, _) in enumerate(items) if a is attack), None)
            if known is None:
                items.append((attack, tuple(sorted(budgets))))
            else:
                items[known] = (attack, tuple(sorted(set(items[known][1]) | budgets)))

    # ------------------------------------------------------------- planning
    def _todo(self, done: set[tuple[str, str, float]]) -> Todo:
        """Per defense, the attacks with the budgets still to be run."""
        todo: Todo = {}
        for d in self.plan.defenses:
            for a in self.plan.attacks:
                missing = tuple(b for b in a.budgets if (d.label, a.label, b) not in done) if a.faces(d.label) else ()
                if missing:
                    todo.setdefault(d.label, []).append((a, missing))
        return todo

    def _needed(self, todo: Todo) -> set[str]:
        """Entrants with unfinished matches, entrants whose matches were all reused but whose
        model row is not (a model metric was added), and the entrants they are built from."""
        built = {m.defense for m in self.store.models(self.run_id)}
        finished = {m.defense for m in self.store.matches(self.run_id) if m.ok}
        return self.plan.needed(todo, sorted(finished - built))

    # ------------------------------------------------------------- running
    def _prepare_level(self, level: list[DefensePlan], shared: tuple[Any, Any]) -> None:
        cfg = self.plan.config
        jobs = []
        handles = {}
        for defense in level:
            code = providers(self.registry, defenses=defense.id, architectures=defense.architecture.id,
                             datasets=self.plan.dataset.id)
            batch = AUTO_EVAL_BATCH if cfg.batch_size == AUTO else cfg.batch_size
            spec = EntrantSpec(defense, self.plan.dataset, cfg.seed, batch, self.cache_root, code,
                               judge_passes=cfg.judge_passes, metrics=self.plan.metrics_for(defense.label), speed=cfg.speed.settings())
            parents = tuple(self.shared[r] for r in defense.parents if r in self.shared)
            handles[defense.label] = Shared.of(None).id  # the worker keeps the entrant it built
            jobs.append((defense.label, (spec, shared[0], shared[1], *parents),
                         {"keep": (handles[defense.label], attrgetter("entrant"))}))
        for label, result in self.executor.map(prepare, self.bar.feed("training", jobs)):
            self.bar.trained(label, result)
            if isinstance(result, Prepared):
                self.store.save_model(self.run_id, **result.model_row, key=self.keys.models.get(label))
                self._recheck(label, result.model_row, self._todo_now)
                self.entrants[label] = result.entrant
                self.shared[label] = self.executor.share(Shared(handles[label], result.entrant))
            else:
                reason = f"defense '{label}' could not be built: {type(result).__name__}: {result}"
                for a in self.plan.attacks:
                    if a.faces(label):
                        self._save_failed(label, a, a.budgets, reason)

    def _run_matches(self, labels: list[str], todo: Todo, shared: tuple[Any, Any]) -> None:
        direct = [a for a in self.plan.attacks if a.view.surrogate is None]
        # every match at once; in a cascade, one attack after the other (each defense in parallel)
        waves = [[a] for a in direct] if self.plan.config.cascade else [direct]
        for wave in waves:
            items = []
            for label in labels:
                for attack, budgets in todo.get(label, []):
                    if attack in wave:
                        spec = self._spec(attack, budgets, label)
                        if self.plan.config.cascade:
                            spec = replace(spec, survivors=self._survivors(label, attack, budgets))
                        items.append((label, attack, spec))
            sharded = self._shard(items)
            for match in sharded.values():
                if not match.todo:  # every shard stored by the interrupted run: merged at once
                    self._merge(match, todo)
            for key, outcome in self.executor.map(run_match, self._match_jobs(items, sharded, shared)):
                label, attack = key[0], key[1]
                match = sharded.get((label, attack.label))
                if match is None:
                    self._store_outcome(label, attack, todo, outcome)
                else:
                    self._shard_done(match, outcome, todo)

    # ------------------------------------------------------------- sharded matches
    def _shard(self, items: list[tuple[str, AttackPlan, MatchSpec]]) -> dict[tuple[str, str], Sharded]:
        """The matches of ``items`` that run as shards, each with the shards left to run and
        those an interrupted run stored. A match is sharded when one of its attack calls gets
        more than one shard (:func:`~arena.tournament.shards.shard_count`: the file's
        ``shards``, or from its expected cost against every match of ``items`` and the
        executor's parallelism), or when an interrupted run stored shards of it (whatever the
        setting now: they are used); matches with match metrics, transfer attacks and
        ``batch_size = "auto"`` run whole."""
        cfg = self.plan.config
        if cfg.batch_size == AUTO or not items:
            return {}
        stored = self.store.sharded_matches(self.run_id)
        if cfg.shards == 1 and not stored:
            return {}
        k = int(getattr(self.data, "num_classes", 10) or 10)
        calls: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
        total = 0.0
        for label, attack, spec in items:
            entrant, plan = self.entrants[label], []
            for eps, served in attack.runs(spec.budgets):
                mask = attacked(entrant.clean_correct, spec.survivors, served)
                n, step = int(mask.sum()), samples_per_batch(int(cfg.batch_size), attack.targets, k)
                units = match_units(attack, served, n, k)
                plan.append((eps, served, mask, batch_count(n, step), step, units))
                total += units
            calls[(label, attack.label)] = plan
        parallelism = int(getattr(self.executor, "parallelism", 1) or 1)
        target = total / parallelism if parallelism > 1 else None
        out: dict[tuple[str, str], Sharded] = {}
        for label, attack, spec in items:
            if spec.metrics or attack.view.surrogate is not None:
                continue
            plan = calls[(label, attack.label)]
            counts = [shard_count(cfg.shards, units, nb, target) for (_, _, _, nb, _, units) in plan]
            if max(counts) <= 1 and (label, attack.label) not in stored:
                continue
            out[(label, attack.label)] = self._pieces(label, attack, spec, plan, counts)
        return out

    def _pieces(self, label: str, attack: AttackPlan, spec: MatchSpec, plan: list[tuple[Any, ...]],
                counts: list[int]) -> Sharded:
        """The shards of one match: per call, its planned ranges less those stored under the same
        key by an interrupted run of this run id (taken as they are)."""
        entrant = self.entrants[label]
        basis = model_basis(entrant.cache_key, entrant.clean_correct)
        stored = self.store.shards(self.run_id, label, attack.label)
        match = Sharded(label, attack, spec, {})
        for (eps, served, mask, nb, step, _), count in zip(plan, counts):
            name = call_name(eps)
            key = piece_key([self.keys.matches.get((label, attack.label, b)) for b in served], served, basis, mask,
                            int(self.plan.config.batch_size), step)
            match.keys[name] = key
            parts = {}
            for r in stored:
                if r.call == name and r.key == key:
                    try:
                        parts[(r.start, r.stop)] = (decode(r.result), r.seconds or 0.0)
                    except Exception:  # an unreadable stored shard is run again
                        continue
            keep, todo = missing(ranges(nb, count), list(parts))
            for start, stop in keep:
                part, seconds = parts[(start, stop)]
                match.pieces.append(ShardOutcome(Shard(eps, start, stop, nb), "ok", None, part, seconds, time.time()))
            match.todo += [Shard(eps, start, stop, nb) for start, stop in todo]
        match.waiting = len(match.todo)
        return match

    def _match_jobs(self, items: list[tuple[str, AttackPlan, MatchSpec]], sharded: dict[tuple[str, str], Sharded],
                    shared: tuple[Any, Any]) -> Any:
        """The tasks of ``items``: one per unsharded match, one per shard left to run. The progress
        sees the first task of each match start (a match counts once, however many shards); an
        executor that takes tasks one at a time skips the shards of a match that crashed already."""
        for label, attack, spec in items:
            match = sharded.get((label, attack.label))
            if match is None:
                yield from self.bar.feed("match", [((label, attack), (self.shared[label], spec, *_data(spec, shared)),
                                                    self._options(spec))])
                continue
            for i, shard in enumerate(match.todo):
                if match.done:
                    break
                piece = replace(spec, shard=shard)
                job = ((label, attack, shard), (self.shared[label], piece, shared[1]), self._options(piece))
                if i == 0:
                    yield from self.bar.feed("match", [job])
                else:
                    yield job

    def _shard_done(self, match: Sharded, outcome: Any, todo: Todo) -> None:
        """A shard came back: stored (when it ran), and the match merged once every shard is in;
        a shard whose task crashed (a dead worker, a hard time limit) fails the whole match."""
        if match.done:
            return
        if not isinstance(outcome, ShardOutcome):
            match.done = True
            self._store_outcome(match.label, match.attack, todo, outcome)
            self.store.forget_shards(self.run_id, match.label, match.attack.label)
            return
        match.pieces.append(outcome)
        if outcome.status == "ok" and outcome.part is not None:
            shard = outcome.shard
            self.store.save_shard(self.run_id, match.label, match.attack.label, shard.call, shard.start, shard.stop,
                                  match.keys[shard.call], encode(outcome.part), outcome.seconds)
        match.waiting -= 1
        if match.waiting <= 0:
            self._merge(match, todo)

    def _merge(self, match: Sharded, todo: Todo) -> None:
        """Every shard of ``match`` is in: its rows stored, its shards forgotten."""
        match.done = True
        try:
            outcome: Any = merge_shards(self.entrants[match.label], match.spec, match.pieces)
        except Exception as exc:  # shards that do not fit together fail their match, not the run
            outcome = exc
        self._store_outcome(match.label, match.attack, todo, outcome)
        self.store.forget_shards(self.run_id, match.label, match.attack.label)

    def _options(self, spec: MatchSpec) -> dict[str, Any]:
        """A task's options: its hard time limit, and what its attack asks a Ray cluster for
        (``[resources.attacks]``)."""
        options = _limit(spec)
        own = self.plan.config.resources.for_attack(spec.attack.label)
        if own:
            options["resources"] = own
        return options

    def _survivors(self, label: str, attack: AttackPlan, budgets: tuple[float, ...]) -> dict[float, torch.Tensor]:
        """Per budget, the evaluated samples that every earlier (direct) attack of ``attack``'s
        norm left robust at that budget or a smaller one (a break within a smaller ball of the
        same norm is a break within the larger one); from the stored rows, so that a resumed run
        cascades the same way."""
        entrant = self.entrants[label]
        earlier = {a.label for a in self.plan.attacks[:self.plan.attacks.index(attack)]
                   if a.view.surrogate is None}
        norm = attack.attack.threat_norm.value
        rows = [m for m in self.store.matches(self.run_id)
                if m.defense == label and m.attack in earlier and m.norm == norm and m.ok and m.robust_mask]
        out = {}
        for b in budgets:
            mask = entrant.clean_correct.clone()
            for m in rows:
                if m.budget <= b:
                    mask &= torch.tensor(m.robust_mask, dtype=torch.bool)
            out[b] = mask
        return out

    def _run_transfers(self, todo: Todo, shared: tuple[Any, Any]) -> None:
        """Transfer attacks: examples crafted once per (surrogate, attack), judged on every defense."""
        wanted: dict[str, tuple[AttackPlan, set[float], list[str]]] = {}
        for label, items in todo.items():
            for attack, budgets in items:
                if attack.view.surrogate is not None and label in self.entrants:
                    entry = wanted.setdefault(attack.label, (attack, set(), []))
                    entry[1].update(budgets)
                    entry[2].append(label)
        jobs = []
        for name, (a, b, _) in wanted.items():
            spec = self._spec(a, tuple(sorted(b)), a.view.surrogate)
            jobs.append((name, (self.shared[a.view.surrogate], spec, shared[1]), self._options(spec)))
        for name, crafted in self.executor.map(craft_transfer, self.bar.feed("craft", jobs)):
            attack, _, labels = wanted[name]
            scoring = []
            for label in labels:
                if isinstance(crafted, BaseException):
                    self.bar.matched(label, attack, crafted)
                    self._crashed(label, attack, todo, crafted)
                    continue
                budgets = next(b for a, b in todo[label] if a is attack)
                spec = self._spec(attack, budgets, label)
                scoring.append(((label, attack), (self.shared[label], spec, crafted, *_data(spec, shared)),
                                _limit(spec)))
            for (label, _), outcome in self.executor.map(score_transfer, self.bar.feed("match", scoring)):
                self._store_outcome(label, attack, todo, outcome)

    def _store_outcome(self, label: str, attack: AttackPlan, todo: Todo, outcome: Any) -> None:
        """A finished match's rows (and examples), or failed rows where its task raised or died."""
        self.bar.matched(label, attack, outcome)
        if not isinstance(outcome, MatchOutcome):
            self._crashed(label, attack, todo, outcome)
            return
        for row in outcome.rows:
            self.store.save_match(self.run_id, row, self.keys.matches.get((row.defense, row.attack, row.budget)))
        if outcome.examples is not None:
            self.store.save_examples(self.run_id, label, attack.label, outcome.examples)

    def _crashed(self, label: str, attack: AttackPlan, todo: Todo, exc: BaseException) -> None:
        budgets = next(b for a, b in todo[label] if a is attack)
        status = "timed-out" if getattr(exc, "timed_out", False) else "failed"
        self._save_failed(label, attack, budgets, f"{type(exc).__name__}: {exc}", status)

    def _save_failed(self, label: str, attack: AttackPlan, budgets: tuple[float, ...], reason: str,
                     status: str = "failed") -> None:
        for row in failed_rows(label, attack, budgets, reason, status):
            self.store.save_match(self.run_id, row, self.keys.matches.get((row.defense, row.attack, row.budget)))

    def _spec(self, attack: AttackPlan, budgets: tuple[float, ...], defense: str) -> MatchSpec:
        cfg, owners = self.plan.config, self.registry.owners
        timeout = attack.timeout if attack.timeout is not None else cfg.match_timeout
        view = attack.view.kind.value if attack.view.kind.value == "gray-box" else None
        return MatchSpec(attack, budgets, cfg.seed, cfg.batch_size, timeout, cfg.save_examples,
                         {"attack_plugin": str(owners.get(("attacks", attack.id), "")),
                          "defense_plugin": str(owners.get(("defenses", self.plan.defense(defense).id), "")),
                          "config_hash": self.plan.digest(), "seed": cfg.seed,
                          "executor": self.executor.name, "surrogate": attack.view.surrogate, "view": view,
                          **({"targets": attack.targets} if attack.targets is not None else {})},
                         isolate=isolation.enabled(), judge_passes=cfg.judge_passes,
                         metrics=self.plan.metrics_for(defense, attack.label))

    def _provenance(self) -> dict[str, Any]:
        device = default_device()
        return {**provenance(device), "executor": self.executor.name, "config_hash": self.plan.digest(),
                "torch_deterministic": torch.are_deterministic_algorithms_enabled()}


# A worker whose attack ignores its soft time limit (an ``except Exception`` around the attack
# swallows the alarm) is killed this long after the limit of all its attack calls.
GRACE = 5.0


def _data(spec: MatchSpec, shared: tuple[Any, Any]) -> tuple[Any, ...]:
    """A match task's data: the evaluation split, and the whole data set too when one of its
    metrics needs the training split."""
    if any("train" in mp.metric.needs for mp in spec.metrics):
        return shared[1], shared[0]
    return (shared[1],)


def _limit(spec: MatchSpec) -> dict[str, Any]:
    """The task options of a match: a hard time limit when the match has a soft one (per
    attack call it runs: a shard runs part of one)."""
    if spec.timeout is None:
        return {}
    calls = 1 if spec.shard is not None else len(spec.attack.runs(spec.budgets))
    return {"timeout": spec.timeout * calls + max(GRACE, 0.2 * spec.timeout)}
