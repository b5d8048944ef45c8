"""The Python API: evaluate one model on given samples, or run a tournament file, from Python.

:func:`evaluate` measures the robustness of any ``torch.nn.Module`` (logits out, [0, 1] images in)
on the samples it is given, against a list of attacks and budgets. It runs *through the same
harness and store as a tournament*: the samples become a transient dataset plugin (``tensors``)
and the model a transient pretrained defense (``module``), registered into a copy of the active
registry; an ordinary :class:`~arena.tournament.plan.Plan` is resolved from them and run by the
:class:`~arena.tournament.runner.Runner` into a :class:`~arena.tournament.store.Store`, and the
:class:`Evaluation` is read back from the stored rows and the leaderboard built from them
(:func:`arena.leaderboard.tables.build`), worst case included.

:class:`Tournament` is a tournament file (or the same data as a dict) as an object:
``Tournament.from_toml(path).run()`` is ``arena run path`` without the printing, and its result
gives the leaderboard that ``arena leaderboard`` prints. Both go through :func:`run_tournament`,
the one place that turns a plan into a finished run (executor, store, runner).

See ``docs/python-api.md``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import pickle
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from arena import __version__
from arena.data import DataSplits, Dataset, Split
from arena.defense import PretrainedDefense
from arena.discovery import Owner
from arena.errors import ArenaError, ConfigError
from arena.hookspecs import hookimpl
from arena.model import Architecture, frozen, model_device
from arena.plugin import PluginConfig
from arena.registry import KINDS, Registry, active_registry

__all__ = ["AttackOutcome", "Evaluation", "Tournament", "TournamentResult", "evaluate", "run_tournament"]

SOURCE = "arena.evaluate"  # what errors and the stored run name as the "file"


# ------------------------------------------------------------------------------- transient plugins
#
# The samples and the model given to evaluate() stay in this process, in these tables, keyed by
# their content hashes (which are also their plugins' params, so that a stored run says exactly
# what it evaluated and an incremental tournament never mistakes one model or data set for
# another). A model travels to a worker process inside its defense object (it pickles with it).

_TENSORS: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
_MODULES: dict[str, nn.Module] = {}


class TensorData(Dataset):
    """The samples handed to :func:`arena.evaluate` (the Python API): images in [0, 1] and their
    labels, held in the process that called it. They are both the test split (every one is
    evaluated) and the training split (nothing trains on them; a metric that needs a training
    split reads them)."""

    id: ClassVar[str] = "tensors"

    class Config(PluginConfig):
        digest: str = Field(description="SHA-256 of the images and labels")
        samples: int = Field(ge=1)
        shape: tuple[int, int, int] = Field(description="(C, H, W)")
        num_classes: int = Field(ge=2)

    def load(self, seed: int = 42) -> DataSplits:
        given = _TENSORS.get(self.config.digest)
        if given is None:
            raise ConfigError(f"dataset '{self.id}' holds the samples given to arena.evaluate, in the process "
                              "that called it; they are not available here")
        split = Split(*given)
        return DataSplits(self.id, split, split, self.config.num_classes)


class ModuleArchitecture(Architecture):
    """The network of a model handed to :func:`arena.evaluate`, as it was given (its class is
    recorded by name, its weights by ``fingerprint``). Nothing is trained on it: :meth:`build`
    returns a view that runs the given model in eval mode (and leaves its mode as it was), for
    the tournament's check that the network takes the data's inputs."""

    id: ClassVar[str] = "module"

    class Config(PluginConfig):
        module: str = Field("", description="the model's class, module.qualname")
        fingerprint: str = Field("", description="SHA-256 of the model's class, parameters and buffers")

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        module = _MODULES.get(self.config.fingerprint)
        if module is None:
            raise ConfigError(f"architecture '{self.id}' stands for a model given to arena.evaluate; "
                              "it is not available here")
        return _View(module)


class _View(nn.Module):
    """Runs a model it does not own (not a submodule: ``eval()``/``to()`` leave it alone) in eval
    mode without parameter gradients, restoring both afterwards."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._target = (module,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (module,) = self._target
        with frozen(module):
            return module(x.to(model_device(module)))


class Normalization(PluginConfig):
    """``normalize`` of :func:`arena.evaluate`: one mean and one std per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


class ModuleDefense(PretrainedDefense):
    """A torch module handed to :func:`arena.evaluate`, entered as it is (no training, no cache),
    behind :func:`arena.model.with_normalization` when it was given ``normalize``. Its params
    record the module's class and a SHA-256 of its class and state (``fingerprint``)."""

    id: ClassVar[str] = "module"

    class Config(PluginConfig):
        module: str = Field(description="the model's class, module.qualname")
        fingerprint: str = Field(description="SHA-256 of the model's class, parameters and buffers")
        normalize: Normalization | None = None

    provenance: dict[str, Any]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # the module itself, set while evaluate() runs; it pickles with this object (local executor)
        self.module = _MODULES.get(self.config.fingerprint)

    def load(self, architecture: Architecture, data: DataSplits) -> nn.Module:
        if self.module is None:
            raise ConfigError(f"defense '{self.id}' enters a model given to arena.evaluate; it is not available here")
        model = self.module
        norm = self.config.normalize
        if norm is not None:
            model = _normalized(model, norm.mean, norm.std)
        self.provenance = {"backend": "torch", "module": self.config.module, "fingerprint": self.config.fingerprint}
        return model


@hookimpl
def _register_datasets(register: Callable[[type], None]) -> None:
    register(TensorData)


@hookimpl
def _register_architectures(register: Callable[[type], None]) -> None:
    register(ModuleArchitecture)


@hookimpl
def _register_defenses(register: Callable[[type], None]) -> None:
    register(ModuleDefense)


PLUGIN = "python-api"
_PLUGINS = (("datasets", TensorData), ("architectures", ModuleArchitecture), ("defenses", ModuleDefense))
_HOOKS = {"arena_register_datasets": _register_datasets, "arena_register_architectures": _register_architectures,
          "arena_register_defenses": _register_defenses}


def with_python_plugins(base: Registry | None = None) -> Registry:
    """A copy of ``base`` (the active registry by default) with the transient plugins added
    (``base`` itself when it has them). It travels to other processes as ``base`` does, plus
    these plugins."""
    base = base if base is not None else active_registry()
    if all(base._tables[kind].get(cls.id) is cls for kind, cls in _PLUGINS):
        return base
    entry_points, blocked, extra = base.origin or (True, frozenset(), ())
    registry = Registry(base.plugin_manager, {k: dict(base._tables[k]) for k in KINDS}, dict(base.owners),
                        origin=(entry_points, blocked, (*extra, (PLUGIN, None, dict(_HOOKS)))))
    owner = Owner(PLUGIN, "adversarial-arena", __version__)
    for kind, cls in _PLUGINS:
        registry._add(kind, cls, owner)
    return registry


# ------------------------------------------------------------------------------- running a plan

def run_tournament(plan: Any, db: str | Path, *, executor: str = "local", address: str | None = None,
                   resume: bool = False, cache_dir: str | Path | None = ".arena/cache", progress: bool = False,
                   source: str | None = None, source_file: str | Path | None = None,
                   started: list[Any] | None = None, reuse: bool = True, workers: int = 1) -> tuple[int, Any]:
    """Run a tournament into the results database ``db``: returns ``(run_id, store)``, the store
    still open (the caller closes it).

    ``plan`` is a :class:`~arena.tournament.plan.Plan`, or a function returning one: it is then
    called after the local executor's worker processes have started warming up (their forkserver
    imports torch and the plugins while this process loads the plan). ``executor``: ``local``
    (``workers`` worker processes, each with an equal share of the cores), ``inline`` (this
    process) or ``ray`` (with the plan's ``[resources]``; ``address`` joins a cluster). ``resume`` finishes the newest unfinished run of the same
    configuration in an existing ``db``. ``source_file`` is the tournament file, stored with the
    run (read after the plan is loaded); ``source`` the name stored for it (default: the file's
    path). ``started`` receives the :class:`~arena.tournament.runner.Runner` once it is built (it
    knows the run id when interrupted). ``reuse=False`` computes every result again instead of
    taking those an earlier run of ``db`` stored under the same key (``arena run --fresh``)."""
    from arena.tournament.executors import make_executor
    from arena.tournament.workers import warm_up

    if workers != 1 and executor != "local":
        raise ConfigError(f"workers={workers!r} is for the local executor (executor {executor!r} runs "
                          f"{'one task at a time' if executor == 'inline' else 'as many tasks as the cluster has CPUs'})")
    if executor == "local":  # the forkserver imports torch and the plugins while the plan loads
        warm_up()
    pool = make_executor(executor, workers=workers) if executor != "ray" else None
    store = None
    try:
        plan = plan() if callable(plan) else plan
        from arena.tournament.runner import Runner
        from arena.tournament.store import Store

        store = Store.open_existing(db) if resume else Store(db)
        if pool is None:
            resources = plan.config.resources
            pool = make_executor(executor, address, resources.num_cpus, resources.num_gpus)
        text = Path(source_file).read_text(encoding="utf-8") if source_file is not None else None
        name = source if source is not None else str(source_file) if source_file is not None else None
        options = {} if reuse else {"reuse": False}
        runner = Runner(plan, store, cache_dir=cache_dir, progress=progress, executor=pool, source=name,
                        source_text=text, **options)
        if started is not None:
            started.append(runner)
        return runner.run(resume=resume), store
    except BaseException:
        if store is not None:
            store.close()
        raise
    finally:
        if pool is not None:
            pool.close()


# ------------------------------------------------------------------------------- evaluate

@dataclass(frozen=True)
class AttackOutcome:
    """One attack entry of an :class:`Evaluation`, per budget (∞ included for a minimal attack):
    the stored status (``ok``, ``failed``, ``timed-out``; ``missing`` where no row was stored),
    the error of each budget that did not finish ok, and the stored figures (success rate over
    the attacked samples, mean distance of the broken samples' examples as judged, mean
    queries per attacked sample; None where it did not finish ok). ``status`` is ``ok`` when
    every budget is, else the first other status."""

    label: str
    id: str
    norm: str
    threat_model: str
    budgets: tuple[float, ...]
    statuses: dict[float, str] = field(default_factory=dict)
    errors: dict[float, str] = field(default_factory=dict)
    success_rate: dict[float, float | None] = field(default_factory=dict)
    mean_distance: dict[float, float | None] = field(default_factory=dict)
    mean_queries: dict[float, float | None] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return next((s for s in self.statuses.values() if s != "ok"), "ok")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "id": self.id, "norm": self.norm, "threat_model": self.threat_model,
                "status": self.status, "budgets": [_key(b) for b in self.budgets],
                "statuses": _keyed(self.statuses), "errors": _keyed(self.errors), "success_rate": _keyed(self.success_rate),
                "mean_distance": _keyed(self.mean_distance), "mean_queries": _keyed(self.mean_queries)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttackOutcome":
        return cls(data["label"], data["id"], data["norm"], data["threat_model"],
                   tuple(float(b) for b in data["budgets"]), _unkeyed(data["statuses"]), _unkeyed(data["errors"]),
                   _unkeyed(data["success_rate"]), _unkeyed(data["mean_distance"]), _unkeyed(data["mean_queries"]))


@dataclass
class Evaluation:
    """What :func:`arena.evaluate` measured, read from the stored run.

    Accuracies are fractions in [0, 1] over all ``samples`` given (a sample the model
    misclassifies clean is not robust at any budget). ``robust_accuracy``: per attack label, per
    budget (∞ for a minimal attack's unbounded run), None where the attack did not finish ok.
    ``worst_case``: per norm, per budget, the per-example worst case over every attack of that
    norm evaluated at that budget (a sample is robust only if it survived all of them), as the
    leaderboard computes and ranks it. ``incomplete`` lists the worst cases that lack an attack
    that should cover them (it failed, timed out or is missing): such a worst case is an upper
    bound, as the leaderboard marks it. ``attacks``: per label, an :class:`AttackOutcome`.
    ``db`` is the results database, None when it was a temporary one (deleted afterwards).
    """

    name: str
    samples: int
    clean_accuracy: float
    robust_accuracy: dict[str, dict[float, float | None]]
    worst_case: dict[str, dict[float, float | None]]
    attacks: dict[str, AttackOutcome]
    incomplete: list[dict[str, Any]]
    run_id: int
    db: str | None
    notes: list[str] = field(default_factory=list)
    _board: Any = field(default=None, repr=False, compare=False)

    @property
    def complete(self) -> bool:
        """Every attack finished ok at every budget, and no worst case is incomplete."""
        return all(a.ok for a in self.attacks.values()) and not self.incomplete

    @property
    def status(self) -> dict[str, str]:
        """Per attack label, its status."""
        return {label: a.status for label, a in self.attacks.items()}

    @property
    def errors(self) -> dict[str, dict[float, str]]:
        """Per attack label that did not finish ok, its error per budget."""
        return {label: dict(a.errors) for label, a in self.attacks.items() if a.errors}

    def leaderboard(self) -> Any:
        """The :class:`arena.leaderboard.tables.Leaderboard` of the run, as ``arena leaderboard``
        builds it from the store (built when the run finished; read again from ``db`` for an
        evaluation loaded with :meth:`from_json`)."""
        if self._board is None:
            if self.db is None:
                raise ConfigError("this evaluation kept no results database (pass db= to arena.evaluate)")
            self._board = _board(self.db, self.run_id)
        return self._board

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; budgets as keys are written ``repr(float)`` (``"0.1"``, ``"inf"``)."""
        return {"name": self.name, "samples": self.samples, "clean_accuracy": self.clean_accuracy,
                "robust_accuracy": {a: _keyed(v) for a, v in self.robust_accuracy.items()},
                "worst_case": {n: _keyed(v) for n, v in self.worst_case.items()},
                "attacks": {label: a.to_dict() for label, a in self.attacks.items()},
                "incomplete": [{**w, "budget": _key(w["budget"])} for w in self.incomplete],
                "complete": self.complete, "run_id": self.run_id, "db": self.db, "notes": list(self.notes)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Evaluation":
        return cls(data["name"], data["samples"], data["clean_accuracy"],
                   {a: _unkeyed(v) for a, v in data["robust_accuracy"].items()},
                   {n: _unkeyed(v) for n, v in data["worst_case"].items()},
                   {label: AttackOutcome.from_dict(a) for label, a in data["attacks"].items()},
                   [{**w, "budget": float(w["budget"])} for w in data["incomplete"]],
                   data["run_id"], data["db"], list(data.get("notes", [])))

    @classmethod
    def from_json(cls, text: str) -> "Evaluation":
        return cls.from_dict(json.loads(text))

    def to_markdown(self) -> str:
        """A report: clean accuracy, one row per attack and budget, the worst case per norm and
        budget (accuracies in %), the incomplete worst cases and the leaderboard's notes."""
        from tabulate import tabulate

        from arena.leaderboard.formats import cell_text, markdown, markdown_block
        from arena.leaderboard.labels import budget_label

        run = f"run {self.run_id}" + (f" of {self.db}" if self.db else "")
        parts = [markdown_block(f"{self.name}: {self.samples} samples ({run}); accuracy in %"),
                 f"clean accuracy: {cell_text(self.clean_accuracy)}"]
        rows = []
        for label, a in self.attacks.items():
            for b in a.budgets:
                acc = self.robust_accuracy[label].get(b)
                distance = a.mean_distance.get(b)
                rows.append([label, f"{a.threat_model} {a.norm}", budget_label(b),
                             cell_text(acc) if acc is not None else "–",
                             cell_text(a.success_rate.get(b)), "–" if distance is None else f"{distance:.4g}",
                             a.statuses.get(b, "missing") + (f": {a.errors[b]}" if b in a.errors else "")])
        missing = {(w["norm"], w["budget"]): w["missing"] for w in self.incomplete}
        for norm, by_budget in self.worst_case.items():
            for b, acc in by_budget.items():
                gaps = missing.get((norm, b))
                state = "complete" if not gaps else "incomplete (upper bound): " + ", ".join(
                    f"{g['attack']} {g['status']}" for g in gaps)
                rows.append(["worst case", norm, budget_label(b), cell_text(acc) + ("*" if gaps else ""), "–", "–",
                             state])
        headers = ["attack", "threat model", "ε", "robust accuracy", "success rate", "mean distance", "status"]
        parts.append(tabulate([[markdown(c) for c in r] for r in rows], headers=headers, tablefmt="github",
                              disable_numparse=True))
        if self.notes:
            parts.append("notes:\n\n" + "\n".join(f"- {markdown_block(n)}" for n in self.notes))
        return "\n\n".join(parts)


def _key(budget: float) -> str:
    return repr(float(budget))


def _keyed(values: Mapping[float, Any]) -> dict[str, Any]:
    return {_key(b): v for b, v in values.items()}


def _unkeyed(values: Mapping[str, Any]) -> dict[float, Any]:
    return {float(b): v for b, v in values.items()}


def evaluate(model: nn.Module, x: Any, y: Any, attacks: Sequence[str | Mapping[str, Any]] = ("autoattack",),
             budgets: Sequence[float] | float | None = None, *, seed: int = 42, batch_size: int = 256,
             db: str | Path | None = None, executor: str = "inline", num_classes: int | None = None,
             name: str | None = None, normalize: Mapping[str, Sequence[float]] | None = None,
             match_timeout: float | None = None, progress: bool = False,
             registry: Registry | None = None) -> Evaluation:
    """Attack ``model`` on the samples ``x``, ``y`` with every entry of ``attacks`` and return the
    :class:`Evaluation` read back from the stored results.

    ``model``: a ``torch.nn.Module`` mapping [0, 1] images to logits (evaluated in eval mode; the
    object given is not changed: with the inline executor a deep copy is attacked). A network
    trained on normalised inputs is given ``normalize={"mean": [...], "std": [...]}`` (one value per
    channel) and put behind :func:`arena.model.with_normalization`, so that ``x`` and every
    budget stay in [0, 1] pixel space. ``x``: float images (N, C, H, W) in [0, 1], a torch tensor
    or a numpy array; ``y``: N integer labels. Every sample is evaluated (a sample misclassified
    clean counts as not robust; the others are attacked).

    ``attacks``: attack ids (``"pgd"``, ``"autoattack"``), or dicts like a tournament file's
    ``[[attacks]]`` entries (``{"id": "pgd", "params": {"steps": 20}, "budgets": [...], "name": ...}``,
    and ``view``, ``targets``, ``timeout``); ``budgets``: the budget list of every entry that gives
    none (a minimal attack needs none: it is scored at ∞ too).

    Options: ``seed`` (attack calls are seeded with ``seed + batch index``), ``batch_size``
    (samples per attack call), ``db`` (the SQLite results file, created or added to, and kept;
    by default a temporary one, deleted afterwards), ``executor`` (``"inline"``: this process,
    any module works; ``"local"``: worker processes, for a model that pickles with an importable
    class; ``"ray"``), ``num_classes`` (default: the width of the model's logits), ``name`` (the
    model's name in the results; default its class name), ``match_timeout`` (seconds per attack
    run), ``progress`` (a progress bar), ``registry`` (the plugins; default the active registry).

    Mistakes in the inputs are one-line :class:`arena.ConfigError`\\ s, raised before anything runs.
    """
    from arena.tournament.plan import parse_tournament

    if not isinstance(model, nn.Module):
        raise ConfigError(f"{SOURCE}: model must be a torch.nn.Module, got {type(model).__name__}")
    x_t, y_t = _images(x), _labels(y)
    if len(y_t) != len(x_t):
        raise ConfigError(f"{SOURCE}: x has {len(x_t)} samples but y has {len(y_t)} labels")
    if executor not in ("inline", "local", "ray"):
        from arena.errors import did_you_mean

        raise ConfigError(f"{SOURCE}: executor: unknown executor '{executor}'"
                          f"{did_you_mean(str(executor), ['inline', 'local', 'ray'])}; choose inline, local or ray")
    norm = _normalization(normalize, x_t.shape[1])
    k = _classes(model, x_t, norm, num_classes)
    bad = y_t[(y_t < 0) | (y_t >= k)]
    if len(bad):
        raise ConfigError(f"{SOURCE}: y: label {int(bad[0])} is out of range for {k} classes (labels are 0 to {k - 1})")
    label = name if name is not None else type(model).__name__
    if not isinstance(label, str) or not label.strip():
        raise ConfigError(f"{SOURCE}: name: give the model a non-empty name")
    if executor == "local":
        _check_portable(model, executor)

    digest = _data_digest(x_t, y_t, k)
    fingerprint = _fingerprint(model)
    module = model if executor != "inline" else _copy(model)
    data = {"name": label, "seed": seed, "samples": len(x_t), "batch_size": batch_size,
            "match_timeout": match_timeout,
            "dataset": {"id": TensorData.id, "params": {"digest": digest, "samples": len(x_t),
                                                        "shape": list(x_t.shape[1:]), "num_classes": k}},
            "architecture": {"id": ModuleArchitecture.id,
                             "params": {"module": _class_name(model), "fingerprint": fingerprint}},
            "defenses": [{"id": ModuleDefense.id, "name": label,
                          "params": {"module": _class_name(model), "fingerprint": fingerprint,
                                     **({"normalize": norm} if norm is not None else {})}}],
            "attacks": _attack_entries(attacks, budgets)}
    if match_timeout is None:
        del data["match_timeout"]
    reg = with_python_plugins(registry)
    # held while the run needs them (an evaluation of the same model and data running alongside
    # in another thread holds them already, and keeps them)
    own = [table.setdefault(key, value) is value
           for table, key, value in ((_TENSORS, digest, (x_t, y_t)), (_MODULES, fingerprint, module))]
    temporary = tempfile.TemporaryDirectory(prefix="arena-evaluate-") if db is None else None
    try:
        plan = parse_tournament(data, reg, source=SOURCE)
        path = Path(temporary.name) / "evaluation.db" if temporary is not None else Path(db)
        run_id, store = run_tournament(plan, path, executor=executor, cache_dir=None, progress=progress,
                                       source=SOURCE)
        try:
            return _evaluation(plan, store, run_id, label, len(x_t), None if temporary is not None else str(path))
        finally:
            store.close()
    finally:
        if own[0]:
            _TENSORS.pop(digest, None)
        if own[1]:
            _MODULES.pop(fingerprint, None)
        if temporary is not None:
            temporary.cleanup()


def _evaluation(plan: Any, store: Any, run_id: int, label: str, samples: int, db: str | None) -> Evaluation:
    """The Evaluation of ``run_id``, from the stored rows and the leaderboard built from them."""
    from arena.leaderboard import tables

    models = {m.defense: m for m in store.models(run_id)}
    matches = [m for m in store.matches(run_id) if m.defense == label]
    if label not in models:
        reasons = sorted({m.error for m in matches if m.error})
        raise ArenaError(f"{SOURCE}: the model could not be evaluated: {reasons[0] if reasons else 'no result stored'}")
    board = tables.build(store, run_id)
    by_key = {(m.attack, m.budget): m for m in matches}
    robust: dict[str, dict[float, float | None]] = {}
    outcomes: dict[str, AttackOutcome] = {}
    for a in plan.attacks:
        rows = {b: by_key.get((a.label, b)) for b in a.budgets}
        robust[a.label] = {b: m.robust_accuracy if m is not None and m.ok else None for b, m in rows.items()}
        first = next((m for m in rows.values() if m is not None), None)
        outcomes[a.label] = AttackOutcome(
            a.label, a.id, a.attack.threat_norm.value,
            first.threat_model if first is not None else a.view.threat_model(a.attack), tuple(a.budgets),
            {b: m.status if m is not None else "missing" for b, m in rows.items()},
            {b: (m.error or m.status) if m is not None else "no result stored" for b, m in rows.items()
             if m is None or not m.ok},
            {b: m.success_rate if m is not None and m.ok else None for b, m in rows.items()},
            {b: m.mean_distance if m is not None and m.ok else None for b, m in rows.items()},
            {b: m.mean_queries if m is not None and m.ok else None for b, m in rows.items()})
    worst: dict[str, dict[float, float | None]] = {}
    incomplete = []
    for w in board.worst_cases:
        if w["defense"] != label:
            continue
        worst.setdefault(w["norm"], {})[w["budget"]] = w["robust_accuracy"]
        if not w["complete"]:
            incomplete.append({"norm": w["norm"], "budget": w["budget"], "missing": list(w["missing"])})
    return Evaluation(label, samples, models[label].clean_accuracy, robust, worst, outcomes, incomplete, run_id, db,
                      list(board.notes), board)


def _board(db: str | Path, run_id: int) -> Any:
    from arena.leaderboard import tables
    from arena.tournament.store import Store

    store = Store(db, readonly=True)
    try:
        return tables.build(store, run_id)
    finally:
        store.close()


def _images(x: Any) -> torch.Tensor:
    """``x`` as a float32 CPU tensor (N, C, H, W) in [0, 1]; a one-line ConfigError otherwise."""
    try:
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{SOURCE}: x must be a float tensor or numpy array of images, got {type(x).__name__} "
                          f"({str(exc).splitlines()[0] if str(exc) else 'not convertible'})") from None
    if not t.is_floating_point():
        hint = " (divide 8-bit images by 255)" if t.dtype == torch.uint8 else ""
        raise ConfigError(f"{SOURCE}: x must hold floating-point images in [0, 1], got {t.dtype}{hint}")
    if t.dim() != 4:
        raise ConfigError(f"{SOURCE}: x must have shape (N, C, H, W), got {tuple(t.shape)}")
    if t.shape[0] == 0 or min(t.shape[1:]) < 1:
        raise ConfigError(f"{SOURCE}: x holds no images (shape {tuple(t.shape)})")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(f"{SOURCE}: x holds NaN or infinite values; images must lie in [0, 1]")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        raise ConfigError(f"{SOURCE}: x must lie in [0, 1], got values from {lo:g} to {hi:g}; pass unnormalised "
                          "images and give the model's normalize={'mean': [...], 'std': [...]}")
    return t


def _labels(y: Any) -> torch.Tensor:
    try:
        t = y if isinstance(y, torch.Tensor) else torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"{SOURCE}: y must be integer labels (a tensor, array or list), got {type(y).__name__}") \
            from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ConfigError(f"{SOURCE}: y must hold integer class labels, got {t.dtype}")
    if t.dim() != 1:
        raise ConfigError(f"{SOURCE}: y must be one label per sample, shape (N,), got {tuple(t.shape)}")
    return t.detach().to("cpu", torch.int64).contiguous()


def _normalization(normalize: Any, channels: int) -> dict[str, list[float]] | None:
    if normalize is None:
        return None
    if not isinstance(normalize, Mapping) or set(normalize) != {"mean", "std"}:
        keys = sorted(map(str, normalize)) if isinstance(normalize, Mapping) else type(normalize).__name__
        raise ConfigError(f"{SOURCE}: normalize must be {{'mean': [...], 'std': [...]}}, got {keys}")
    out = {}
    for key in ("mean", "std"):
        try:
            values = [float(v) for v in torch.as_tensor(normalize[key], dtype=torch.float64).flatten().tolist()]
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError(f"{SOURCE}: normalize.{key} must be numbers, one per channel") from None
        if len(values) != channels:
            raise ConfigError(f"{SOURCE}: normalize.{key} has {len(values)} value(s) for images of {channels} "
                              "channel(s); give one per channel")
        if not all(math.isfinite(v) for v in values) or (key == "std" and min(values) <= 0):
            raise ConfigError(f"{SOURCE}: normalize.{key} must be finite" + (" and positive" if key == "std" else "")
                              + f", got {values}")
        out[key] = values
    return out


def _normalized(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    from arena.model import with_normalization

    try:
        return with_normalization(model, mean, std)
    except ValueError as exc:
        raise ConfigError(f"{SOURCE}: {exc}") from None


def _classes(model: nn.Module, x: torch.Tensor, norm: dict[str, list[float]] | None,
             num_classes: int | None) -> int:
    """The class count: the width of the model's logits on the first sample (checked against
    ``num_classes`` when given)."""
    probe = _normalized(model, norm["mean"], norm["std"]) if norm is not None else model
    try:
        with frozen(probe), torch.no_grad():
            out = probe(x[:1].to(model_device(model)))
    except Exception as exc:
        raise ConfigError(f"{SOURCE}: the model failed on x[:1]: {type(exc).__name__}: "
                          f"{(str(exc).splitlines() or [''])[0]}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{SOURCE}: the model must return logits of shape (N, num_classes), got {shape} "
                          "for one sample")
    k = int(out.shape[1])
    if num_classes is not None and num_classes != k:
        raise ConfigError(f"{SOURCE}: num_classes is {num_classes} but the model returns {k} logits per sample")
    return k


def _attack_entries(attacks: Any, budgets: Any) -> list[dict[str, Any]]:
    """``attacks`` as tournament ``[[attacks]]`` entries, ``budgets`` filling in where one gives none."""
    if isinstance(attacks, (str, Mapping)):
        attacks = [attacks]
    if budgets is None:
        default: list[Any] = []
    elif isinstance(budgets, (int, float)) and not isinstance(budgets, bool):
        default = [budgets]
    else:
        try:
            default = list(budgets)
        except TypeError:
            raise ConfigError(f"{SOURCE}: budgets must be a list of numbers, got {type(budgets).__name__}") from None
    try:
        items = list(attacks)
    except TypeError:
        raise ConfigError(f"{SOURCE}: attacks must be a list of attack ids or dicts, got "
                          f"{type(attacks).__name__}") from None
    if not items:
        raise ConfigError(f"{SOURCE}: attacks: name at least one attack (an id such as 'pgd' or 'autoattack')")
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append({"id": item, "budgets": list(default)})
        elif isinstance(item, Mapping):
            entry = dict(item)
            entry.setdefault("budgets", list(default))
            out.append(entry)
        else:
            raise ConfigError(f"{SOURCE}: attacks[{i}]: expected an attack id or a dict like "
                              f"{{'id': 'pgd', 'params': {{...}}}}, got {type(item).__name__}")
    return out


def _check_portable(model: nn.Module, executor: str) -> None:
    """A model sent to worker processes must pickle, and by an importable class."""
    cls = type(model)
    reason = None
    if cls.__module__ == "__main__" and not hasattr(__import__("__main__"), "__file__"):
        reason = f"its class {cls.__qualname__} is defined interactively"
    else:
        try:
            pickle.dumps(model)
        except Exception as exc:
            reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    if reason is not None:
        raise ConfigError(f"{SOURCE}: executor '{executor}' sends the model to worker processes, which needs a "
                          f"picklable model with an importable class ({reason}); use executor='inline'")


def _copy(model: nn.Module) -> nn.Module:
    """A deep copy to attack (the harness moves it to its device and sets eval mode); the model
    itself where it cannot be copied."""
    try:
        return copy.deepcopy(model)
    except Exception:
        return model


def _class_name(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def _data_digest(x: torch.Tensor, y: torch.Tensor, k: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(x.shape), k]).encode())
    h.update(x.numpy().tobytes())
    h.update(y.numpy().tobytes())
    return h.hexdigest()


def _fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's class and every parameter and buffer (names, dtypes, shapes, bits)."""
    h = hashlib.sha256(_class_name(model).encode())
    for key, value in model.state_dict(keep_vars=False).items():
        h.update(key.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            try:
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            except (RuntimeError, TypeError):  # a dtype without a plain byte view (quantised)
                h.update(repr(t.dequantize().tolist() if t.is_quantized else t.tolist()).encode())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------- tournaments

@dataclass
class TournamentResult:
    """A finished (or stopped) tournament run: ``run_id`` in the results database ``db``."""

    name: str
    run_id: int
    db: str

    def leaderboard(self, **filters: Any) -> Any:
        """The run's :class:`arena.leaderboard.tables.Leaderboard`, as ``arena leaderboard DB
        --run RUN_ID`` builds it (``filters``: ``dataset``, ``budget``, ``knowledge``)."""
        from arena.leaderboard import tables
        from arena.tournament.store import Store

        store = Store(self.db, readonly=True)
        try:
            return tables.build(store, self.run_id, **filters)
        finally:
            store.close()

    def matches(self) -> list[Any]:
        """The run's stored match rows (:class:`arena.tournament.store.MatchRecord`)."""
        from arena.tournament.store import Store

        store = Store(self.db, readonly=True)
        try:
            return store.matches(self.run_id)
        finally:
            store.close()

    @property
    def failures(self) -> list[Any]:
        """The match rows that failed or timed out (``arena run`` exits with 3 when there are any)."""
        return [m for m in self.matches() if not m.ok]

    @property
    def complete(self) -> bool:
        return not self.failures

    def to_markdown(self) -> str:
        return self.leaderboard().render("markdown")

    def to_json(self) -> str:
        """The leaderboard as ``arena leaderboard DB --format json`` prints it."""
        return self.leaderboard().render("json")


class Tournament:
    """A tournament (a file's contents) resolved into its :attr:`plan` against a registry (the
    active one by default): every mistake is a one-line ConfigError here, before anything runs."""

    def __init__(self, plan: Any, source_file: str | Path | None = None) -> None:
        self.plan = plan
        self.source_file = Path(source_file) if source_file is not None else None

    @classmethod
    def from_toml(cls, path: str | Path, registry: Registry | None = None) -> "Tournament":
        from arena.tournament.plan import load_tournament

        return cls(load_tournament(path, registry if registry is not None else active_registry()), path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], registry: Registry | None = None,
                  source: str = "<tournament>") -> "Tournament":
        from arena.tournament.plan import parse_tournament

        return cls(parse_tournament(dict(data), registry if registry is not None else active_registry(), source))

    @property
    def name(self) -> str:
        return self.plan.name

    def default_db(self) -> Path:
        """Where ``arena run`` would store it: ``results/<file stem>.db`` (``<name>.db`` for a dict)."""
        stem = self.source_file.stem if self.source_file is not None else self.plan.name
        return Path("results") / f"{stem}.db"

    def run(self, db: str | Path | None = None, executor: str = "local", resume: bool = False,
            cache_dir: str | Path | None = ".arena/cache", progress: bool = False,
            address: str | None = None, reuse: bool = True, workers: int = 1) -> TournamentResult:
        """Run (``resume``: finish) the tournament into ``db`` (default :meth:`default_db`), as
        ``arena run`` does; failed matches are stored and listed (:attr:`TournamentResult.failures`),
        not raised. ``reuse=False`` computes everything again (``arena run --fresh``); ``workers``
        worker processes side by side for the local executor (``arena run --workers``). A script
        that uses the local executor needs ``if __name__ == "__main__":``."""
        path = Path(db) if db is not None else self.default_db()
        source = str(self.source_file) if self.source_file is not None else self.plan.source
        run_id, store = run_tournament(self.plan, path, executor=executor, address=address, resume=resume,
                                       cache_dir=cache_dir, progress=progress, source=source,
                                       source_file=self.source_file, reuse=reuse, workers=workers)
        store.close()
        return TournamentResult(self.plan.name, run_id, str(path))
