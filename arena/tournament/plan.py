"""The resolved plan of a tournament: every entry of the file validated once, against one registry.

``load_tournament`` reads a file, validates it (:mod:`arena.tournament.config`) and resolves it
into a :class:`Plan`: each defense built once with its params over the ``[training]`` defaults,
each attack built once with ``minimal`` and its budgets (∞ added for a minimal attack) decided
here, each attack's threat view a single typed value (direct, gray-box, or transfer from a named
surrogate), and every plugin a plugin names (an attack inside adversarial training, a substitute's
architecture, a model file's backend) resolved against the same registry. The runner, the
matches and the store consume the plan and never validate again.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from arena.attack import Attack, off_target
from arena.data import DataSplits
from arena.defense import Defense
from arena.errors import ConfigError, did_you_mean
from arena.refs import ArchitectureRef, DatasetRef, PluginRef
from arena.registry import Registry
from arena.threat import Knowledge, Norm
from arena.metric import Metric, Scope
from arena.tournament.config import (AttackEntry, DefenseEntry, MetricEntry, PluginEntry, TournamentConfig,
                                     read_tournament)

UNBOUNDED = math.inf


class View(str, Enum):
    """Which model an attack crafts on: the judged model itself, its base classifier without the
    inference-time parts (gray-box, seed 003 App. D), or another entrant (transfer)."""

    DIRECT = "direct"
    GRAY_BOX = "gray-box"
    TRANSFER = "transfer"


@dataclass(frozen=True)
class ThreatView:
    """An attack's view of the defenses it faces; ``surrogate`` names the crafting entrant of a
    transfer attack."""

    kind: View = View.DIRECT
    surrogate: str | None = None

    @property
    def off_target(self) -> bool:
        """Examples are crafted on a model other than the one that judges them."""
        return self.kind is not View.DIRECT

    def knowledge(self, attack: Attack) -> str:
        """What a match row records as the attack's knowledge (a transfer attack never queries
        its target: black-box)."""
        if self.kind is View.TRANSFER:
            return Knowledge.BLACK_BOX.value
        return View.GRAY_BOX.value if self.kind is View.GRAY_BOX else attack.knowledge.value

    def threat_model(self, attack: Attack) -> str:
        """The threat model a result is shown under: its knowledge, or ``transfer``."""
        return View.TRANSFER.value if self.kind is View.TRANSFER else self.knowledge(attack)


@dataclass(frozen=True)
class AttackPlan:
    """One attack entry, resolved: the instance that crafts (built once; with ``early_stop`` off
    when it crafts off target), its budgets (∞ included for a minimal attack), view and limits."""

    label: str
    id: str
    params: dict[str, Any]
    attack: Attack
    budgets: tuple[float, ...]
    view: ThreatView
    timeout: float | None
    against: tuple[str, ...] | None
    targets: str | int | None = None  # a targeted run: "all", "random", "least-likely" or N per sample

    @property
    def minimal(self) -> bool:
        return bool(self.attack.minimal)

    def faces(self, defense: str) -> bool:
        """Whether this attack is run against the defense entry labelled ``defense``."""
        return self.against is None or defense in self.against

    def runs(self, budgets: tuple[float, ...]) -> list[tuple[float | None, tuple[float, ...]]]:
        """The attack calls that serve ``budgets``: one unbounded call for a minimal attack, one
        call per budget otherwise, each with the budgets it serves."""
        return [(None, budgets)] if self.minimal else [(b, (b,)) for b in budgets]


@dataclass(frozen=True)
class DefensePlan:
    """One defense entry, resolved: the defense built once (its params over ``[training]`` for a
    training-time defense) and the architecture it builds on."""

    label: str
    id: str
    defense: Defense
    architecture: ArchitectureRef
    on: str | None
    finetune_from: str | None

    @property
    def parents(self) -> tuple[str, ...]:
        return tuple(r for r in (self.on, self.finetune_from) if r)


@dataclass(frozen=True)
class MetricPlan:
    """One metric entry, resolved: the metric built once, its scope, and where it is measured
    (``against``: defense labels, ``attacks``: attack labels; None: every one)."""

    label: str
    id: str
    metric: Metric
    against: tuple[str, ...] | None
    attacks: tuple[str, ...] | None
    plugin: str = ""  # the distribution that provides it (provenance)

    @property
    def scope(self) -> Scope:
        return self.metric.scope

    def measures(self, defense: str, attack: str | None = None) -> bool:
        """Whether this metric is measured on ``defense`` (and, for a match metric, ``attack``)."""
        if self.against is not None and defense not in self.against:
            return False
        if self.scope is Scope.MODEL:
            return attack is None
        return attack is not None and (self.attacks is None or attack in self.attacks)


@dataclass(frozen=True)
class Plan:
    """A tournament resolved against ``registry``; defenses in dependency order."""

    config: TournamentConfig
    registry: Registry
    dataset: DatasetRef
    architecture: ArchitectureRef
    defenses: tuple[DefensePlan, ...]
    attacks: tuple[AttackPlan, ...]
    source: str = "<tournament>"
    metrics: tuple[MetricPlan, ...] = ()
    _by_label: dict[str, DefensePlan] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_label.update({d.label: d for d in self.defenses})

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def seed(self) -> int:
        return self.config.seed

    def digest(self) -> str:
        return self.config.digest()

    def defense(self, label: str) -> DefensePlan:
        return self._by_label[label]

    def metrics_for(self, defense: str, attack: str | None = None) -> tuple[MetricPlan, ...]:
        """The metrics measured on ``defense`` (model metrics) or on its match with ``attack``."""
        return tuple(mp for mp in self.metrics if mp.measures(defense, attack))

    def needed(self, todo: dict[str, list[tuple[AttackPlan, tuple[float, ...]]]],
               also: list[str] = ()) -> set[str]:
        """The entrants a run must build: those with matches in ``todo`` (per defense label, the
        attacks and budgets to run), those in ``also``, and every entrant they wrap, fine-tune
        from or (transfer attacks to run) craft on."""
        needed: set[str] = set()
        stack = list(todo) + list(also)
        while stack:
            label = stack.pop()
            if label not in needed:
                needed.add(label)
                stack += list(self.defense(label).parents)
                stack += [a.view.surrogate for a, _ in todo.get(label, []) if a.view.surrogate]
        return needed

    def levels(self) -> list[list[DefensePlan]]:
        """Defenses grouped into levels whose members do not depend on each other."""
        depth: dict[str, int] = {}
        for d in self.defenses:
            depth[d.label] = 1 + max((depth[r] for r in d.parents), default=-1)
        return [[d for d in self.defenses if depth[d.label] == k] for k in range(max(depth.values(), default=-1) + 1)]


def load_tournament(path: str | Path, registry: Registry, *, smoke: bool = False) -> Plan:
    """Read, validate and resolve a tournament file; ConfigError names the file and the field.
    ``smoke``: the file cut to toy scale first (:func:`arena.tournament.smoke.shrink`)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such tournament file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a tournament file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the tournament file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML text file (byte {exc.start} is not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    if not data:
        raise ConfigError(f"{path}: the tournament file is empty; it names a dataset, an architecture, "
                          "[[defenses]] and [[attacks]]")
    if smoke:
        from arena.tournament.smoke import shrink

        data = shrink(data, registry)
    return parse_tournament(data, registry, source=str(path))


def check_samples(plan: Plan, data: DataSplits) -> None:
    """``samples`` against the loaded test set (its size is known only once the data is loaded):
    more samples than there are is a ConfigError naming the file, never a silent cap."""
    available = len(data.test)
    if plan.config.samples > available:
        raise ConfigError(f"{plan.source}: samples: {plan.config.samples} is more than the {available} test "
                          f"samples of dataset '{plan.dataset.id}'")
    for i, attack in enumerate(plan.attacks):
        if isinstance(attack.targets, int) and attack.targets > data.num_classes - 1:
            raise ConfigError(f"{plan.source}: attacks[{i}].targets: {attack.targets} targets per sample, but "
                              f"dataset '{plan.dataset.id}' has only {data.num_classes - 1} other classes")


def check_architectures(plan: Plan, data: DataSplits) -> None:
    """Each distinct architecture the plan's defenses build on (training-time defenses, and model
    files whose backend loads weights into it), built once for the loaded dataset and run on two
    of its test inputs, before anything trains: a network that cannot be built, fails on inputs
    of the dataset's shape or returns anything but ``(2, num_classes)`` logits is a one-line
    ConfigError naming the file, the field and the architecture. The driver's random generator
    is left as it was."""
    import json

    import torch

    from arena.model import seeded

    index = {entry.label: i for i, entry in enumerate(plan.config.defenses)}
    seen: set[str] = set()
    for d in plan.defenses:
        if not _builds_architecture(d.defense):
            continue
        key = json.dumps(d.architecture.model_dump(mode="json"), sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        own = plan.config.defenses[index[d.label]].architecture is not None
        where = f"{plan.source}: {f'defenses[{index[d.label]}].architecture' if own else 'architecture'}"
        with seeded(plan.seed, torch.device("cpu")):
            _check_architecture(d.architecture, data, plan.dataset.id, where)


def _builds_architecture(defense: Defense) -> bool:
    """Whether the tournament builds ``defense``'s architecture: to train it, or as the template a
    model file's weights load into (not for a backend, such as Keras, whose file holds its network)."""
    from arena.defense import PretrainedDefense

    if getattr(defense, "trains", False):
        return True
    if not isinstance(defense, PretrainedDefense):
        return False
    backend = getattr(defense.config, "backend", None)
    return bool(getattr(getattr(backend, "cls", None), "needs_template", True))


def _check_architecture(ref: ArchitectureRef, data: DataSplits, dataset: str, where: str) -> None:
    """One architecture built for ``data`` and run on two of its inputs (see :func:`check_architectures`)."""
    import torch
    from torch import nn

    factory = ref.params.get("factory") if isinstance(ref.params, dict) else None
    name = f"architecture '{ref.id}'" + (f" ({factory})" if isinstance(factory, str) else "")
    shape, k = tuple(data.input_shape), data.num_classes

    def first_line(exc: BaseException) -> str:
        return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"

    try:
        model = ref.build().build(shape, k)
    except ConfigError as exc:  # the plugin's own one-line message
        raise ConfigError(f"{where}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{where}: {name}: building it for inputs of shape {shape} and {k} classes of "
                          f"dataset '{dataset}' raised {first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}: {name}: build returned a {type(model).__name__}, not a torch.nn.Module")
    x = data.test.x[:2] if len(data.test) >= 2 else torch.zeros(2, *shape)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # a shape mismatch inside the network, most often
        raise ConfigError(f"{where}: {name}: a forward pass on 2 inputs of shape {shape} of dataset "
                          f"'{dataset}' raised {first_line(exc)}") from None
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if got != (2, k):
        what = f"output shape {got}" if got is not None else f"a {type(out).__name__}, not a tensor"
        raise ConfigError(f"{where}: {name}: expects logits of shape (2, {k}) for 2 inputs of shape {shape}, "
                          f"got {what} for {k} classes of dataset '{dataset}'")


def parse_tournament(data: dict[str, Any], registry: Registry, source: str = "<tournament>") -> Plan:
    """Validate ``data`` (a parsed tournament file) and resolve it into a :class:`Plan`."""
    cfg = read_tournament(data, source)
    try:
        with registry.resolving():
            return _resolve(cfg, registry, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _resolve(cfg: TournamentConfig, registry: Registry, source: str) -> Plan:
    dataset = _ref(DatasetRef, registry, "dataset", cfg.dataset)
    architecture = _ref(ArchitectureRef, registry, "architecture", cfg.architecture)
    labels = [d.label for d in cfg.defenses]
    defenses = {}
    for i, entry in enumerate(cfg.defenses):
        defenses[entry.label] = _defense(f"defenses[{i}]", entry, cfg, architecture, labels, registry)
    ordered = _dependency_order([defenses[label] for label in labels])
    attacks = tuple(_attack(f"attacks[{i}]", entry, labels, registry) for i, entry in enumerate(cfg.attacks))
    metrics = tuple(_metric(f"metrics[{i}]", entry, labels, [a.label for a in attacks], registry)
                    for i, entry in enumerate(cfg.metrics))
    return Plan(cfg, registry, dataset, architecture, tuple(ordered), attacks, source, metrics=metrics)


def _metric(where: str, entry: MetricEntry, defenses: list[str], attacks: list[str],
            registry: Registry) -> MetricPlan:
    metric = _make(registry, "metrics", where, entry.id, entry.params)
    for key, known in (("against", defenses), ("attacks", attacks)):
        names = getattr(entry, key)
        if names is not None and not names:
            raise ConfigError(f"{where}.{key}: name at least one entry (or leave it out)")
        for name in names or []:
            if name not in known:
                kind = "defense" if key == "against" else "attack"
                raise ConfigError(f"{where}.{key}: no {kind} named '{name}'{did_you_mean(name, known)}")
    if entry.attacks is not None and metric.scope is Scope.MODEL:
        raise ConfigError(f"{where}.attacks: '{entry.id}' is measured per model, not per match; "
                          "leave attacks out")
    return MetricPlan(entry.label, entry.id, metric,
                      tuple(entry.against) if entry.against is not None else None,
                      tuple(entry.attacks) if entry.attacks is not None else None,
                      str(registry.owners.get(("metrics", entry.id), "")))


def _ref(kind: type[PluginRef], registry: Registry, where: str, entry: PluginEntry) -> Any:
    """``entry`` as a resolved reference; an unknown id or a bad param names ``where``."""
    _get(registry, kind.plugin_kind, where, entry.id)
    try:
        return kind(id=entry.id, params=entry.params)
    except ValidationError as exc:  # around the plugin's own one-line ConfigError
        err = exc.errors()[0]
        raise ConfigError(f"{where}.params: {err.get('ctx', {}).get('error', err['msg'])}") from None


def _get(registry: Registry, kind: str, where: str, plugin_id: str) -> type:
    try:
        return registry.get(kind, plugin_id)
    except ConfigError as exc:
        raise ConfigError(f"{where}.id: {exc}") from None


def _make(registry: Registry, kind: str, where: str, plugin_id: str, params: dict[str, Any]) -> Any:
    _get(registry, kind, where, plugin_id)
    try:
        return registry.make(kind, plugin_id, **params)
    except ConfigError as exc:
        raise ConfigError(f"{where}.params: {exc}") from None


def _defense(where: str, entry: DefenseEntry, cfg: TournamentConfig, architecture: ArchitectureRef,
             labels: list[str], registry: Registry) -> DefensePlan:
    cls = _get(registry, "defenses", where, entry.id)
    defense = _make(registry, "defenses", where, entry.id, merged_params(cls, entry.params, cfg.training))
    arch = _ref(ArchitectureRef, registry, f"{where}.architecture", entry.architecture) if entry.architecture \
        else architecture
    others = [label for label in labels if label != entry.label]
    for key in ("on", "finetune_from"):
        ref = getattr(entry, key)
        if ref is not None and ref not in others:
            raise ConfigError(f"{where}.{key}: no defense named '{ref}'{did_you_mean(ref, others)}")
    kind = defense.defense_kind.value
    if defense.wraps_model and entry.on is None:
        raise ConfigError(f"{where}.on: {kind} defense '{entry.id}' needs the name of the trained model it protects")
    if not defense.wraps_model and entry.on is not None:
        raise ConfigError(f"{where}.on: {kind} defense '{entry.id}' brings its own model; only inference-time "
                          "and detector defenses take 'on'")
    if entry.finetune_from is not None and not getattr(defense, "trains", False):
        raise ConfigError(f"{where}.finetune_from: {kind} defense '{entry.id}' trains nothing to fine-tune; only "
                          "training-time defenses take 'finetune_from'")
    if entry.architecture is not None and defense.wraps_model:
        raise ConfigError(f"{where}.architecture: {kind} defense '{entry.id}' runs on the model of '{entry.on}'; "
                          "give the architecture to that entry")
    return DefensePlan(entry.label, entry.id, defense, arch, entry.on, entry.finetune_from)


def merged_params(cls: type, params: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    """A training-time defense's params over the tournament's ``[training]`` defaults (the keys
    its config has); any other defense's params as they are. A ``preset`` the params name (a
    config's ``presets`` class attribute: a paper's hyper-parameters) wins over the defaults:
    the entry's own params first, then its preset, then ``[training]``."""
    if not getattr(cls, "trains", False):
        return dict(params)
    known = getattr(cls.Config, "model_fields", {})
    preset = getattr(cls.Config, "presets", {}).get(params.get("preset"), {})
    return {**{k: v for k, v in training.items() if k in known and k not in preset}, **params}


def _attack(where: str, entry: AttackEntry, labels: list[str], registry: Registry) -> AttackPlan:
    cls = _get(registry, "attacks", where, entry.id)
    view = _view(where, entry, cls, labels)
    attack = _make(registry, "attacks", where, entry.id, off_target(cls, entry.params) if view.off_target
                   else entry.params)
    for target in entry.against or []:
        if target not in labels:
            raise ConfigError(f"{where}.against: no defense named '{target}'{did_you_mean(target, labels)}")
    if entry.against is not None and not entry.against:
        raise ConfigError(f"{where}.against: name at least one defense (or leave it out)")
    if not attack.minimal and not entry.budgets:
        raise ConfigError(f"{where}.budgets: fixed-budget attack '{entry.id}' needs at least one budget")
    too_large = [b for b in entry.budgets if b > 1]
    if attack.threat_norm is Norm.LINF and too_large:  # pixels lie in [0, 1]: ε > 1 perturbs nothing more
        raise ConfigError(f"{where}.budgets: {too_large[0]:g} is more than 1, the whole [0, 1] pixel range, "
                          f"for L∞ attack '{entry.id}'")
    if entry.targets is not None and not attack.supports_targeted:
        raise ConfigError(f"{where}.targets: attack '{entry.id}' does not support targeted runs")
    if entry.targets is not None and view.kind is View.TRANSFER:
        raise ConfigError(f"{where}.targets: transfer attacks (surrogate) run untargeted only")
    budgets = tuple(entry.budgets) + ((UNBOUNDED,) if attack.minimal else ())
    return AttackPlan(entry.label, entry.id, dict(entry.params), attack, budgets, view, entry.timeout,
                      tuple(entry.against) if entry.against is not None else None, entry.targets)


def _view(where: str, entry: AttackEntry, attack: type[Attack], labels: list[str]) -> ThreatView:
    if entry.surrogate is not None and entry.view is not None:
        raise ConfigError(f"{where}: choose either surrogate (transfer) or view (gray-box)")
    white = attack.knowledge is Knowledge.WHITE_BOX
    if (entry.surrogate is not None or entry.view is not None) and not white:
        raise ConfigError(f"{where}: only white-box attacks can be run as transfer or gray-box attacks; "
                          f"'{entry.id}' is {attack.knowledge.value}")
    if entry.surrogate is not None:
        if entry.surrogate not in labels:
            raise ConfigError(f"{where}.surrogate: no defense named '{entry.surrogate}'"
                              f"{did_you_mean(entry.surrogate, labels)}")
        return ThreatView(View.TRANSFER, entry.surrogate)
    if entry.view == View.GRAY_BOX.value or attack.knowledge is Knowledge.GRAY_BOX:
        return ThreatView(View.GRAY_BOX)
    return ThreatView()


def _dependency_order(defenses: list[DefensePlan]) -> list[DefensePlan]:
    """Defenses ordered so that every entry comes after the one it wraps or fine-tunes."""
    done: dict[str, DefensePlan] = {}
    pending = list(defenses)
    while pending:
        ready = [d for d in pending if all(r in done for r in d.parents)]
        if not ready:
            names = ", ".join(d.label for d in pending)
            raise ConfigError(f"defenses: 'on'/'finetune_from' form a cycle among {names}")
        for d in ready:
            done[d.label] = d
            pending.remove(d)
    return list(done.values())
