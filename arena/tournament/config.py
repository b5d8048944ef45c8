"""The tournament file's schema (TOML validated by pydantic); :mod:`arena.tournament.plan` turns a
validated file into the resolved :class:`~arena.tournament.plan.Plan` that the runner consumes.

Every error names the file, the field path and, for unknown ids or keys, the closest valid one::

    quickstart.toml: attacks[1].params: attack 'pgd': stpes: unknown key (did you mean 'steps'?)
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from arena.defense import TrainingConfig
from arena.errors import describe_validation_error, did_you_mean
from arena.threat import Budget


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _shown(v: Any) -> str:
    """A value as the TOML file spells it (``true``, ``"100"``), for error messages."""
    if isinstance(v, (bool, str)):
        return json.dumps(v)
    return repr(v)


def _whole(v: Any) -> Any:
    """A TOML integer, as it is: no ``"100"`` string, no ``100.0`` float, no ``true``."""
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected a whole number, got {_shown(v)}")
    return v


def _number(v: Any) -> Any:
    """A TOML integer or float: no ``"0.1"`` string, no ``true``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"expected a number, got {_shown(v)}")
    return v


def _finite(v: Any) -> Any:
    """A TOML integer or float, and no ``nan`` or ``inf``."""
    if not math.isfinite(_number(v)):
        raise ValueError(f"expected a finite number, got {v!r}")
    return v


def _flag(v: Any) -> Any:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {_shown(v)}")
    return v


def _targets(v: Any) -> Any:
    """``"all"``, ``"random"``, ``"least-likely"`` or a whole number of random targets per sample."""
    if isinstance(v, str):
        if v not in TARGET_MODES:
            raise ValueError(f"expected one of {', '.join(map(json.dumps, TARGET_MODES))} or a whole "
                             f"number of targets per sample, got {_shown(v)}")
        return v
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"expected one of {', '.join(map(json.dumps, TARGET_MODES))} or a whole "
                         f"number (at least 1) of targets per sample, got {_shown(v)}")
    return v


def _rank_by(v: Any) -> Any:
    """``"mean"`` (the mean worst case over each norm's budgets) or a table of one primary
    budget per norm (``{ linf = 0.1, l2 = 1.0 }``: the worst case at that budget, RobustBench
    style), each a positive finite number."""
    usage = 'expected "mean" or one primary budget per norm (rank_by = { linf = 0.1 })'
    if isinstance(v, str):
        if v != RANK_MEAN:
            raise ValueError(f"{usage}, got {_shown(v)}{did_you_mean(v, [RANK_MEAN])}")
        return v
    if not isinstance(v, dict):
        raise ValueError(f"{usage}, got {_shown(v)}")
    if not v:
        raise ValueError(f"{usage}, got an empty table")
    out = {}
    for norm, budget in v.items():
        if norm not in RANK_NORMS:
            raise ValueError(f"{norm}: unknown norm{did_you_mean(norm, RANK_NORMS)}; norms: {', '.join(RANK_NORMS)}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) \
                or budget <= 0:
            raise ValueError(f"{norm}: expected a budget (a number above 0, not inf), got {_shown(budget)}")
        out[norm] = float(budget)
    return out


def _batch_size(v: Any) -> Any:
    """A whole number of samples (at least 1) per attack call, or ``"auto"``: the largest batch
    that fits in memory, found by halving on out-of-memory errors."""
    if v == AUTO:
        return v
    if isinstance(v, str):
        raise ValueError(f'expected a whole number or "auto", got {_shown(v)}{did_you_mean(v, [AUTO])}')
    _whole(v)
    if v < 1:
        raise ValueError("Input should be greater than or equal to 1")
    return v


def _shards(v: Any) -> Any:
    """``"auto"`` (from each match's expected cost and the executor's parallelism) or a whole
    number (at least 1) of shards per attack call."""
    if v == AUTO:
        return v
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f'expected "auto" or a whole number (at least 1) of shards per attack call, got '
                         f'{_shown(v)}' + (did_you_mean(v, [AUTO]) if isinstance(v, str) else ""))
    return v


TARGET_MODES = ("all", "random", "least-likely")
AUTO = "auto"
RANK_MEAN = "mean"
RANK_NORMS = ("l0", "l1", "l2", "linf")
WholeNumber = Annotated[int, BeforeValidator(_whole)]
Number = Annotated[float, BeforeValidator(_finite)]
Flag = Annotated[bool, BeforeValidator(_flag)]
StrictBudget = Annotated[Budget, BeforeValidator(_number)]  # nan, inf, 0: threat.check_budget's to refuse


class PluginEntry(Strict):
    """A plugin by id with its parameters, as the file gives it (checked against the registry
    by the plan); a bare string ``"digits"`` means ``{id = "digits"}``."""

    id: str
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, v: Any) -> Any:
        return {"id": v} if isinstance(v, str) else v


class DefenseEntry(PluginEntry):
    """A defended model entering the tournament.

    ``architecture`` overrides the tournament's architecture for this entry (a transfer
    surrogate of another architecture, such as seed 001's ResNet).

    ``on`` names the entry whose trained model an inference-time or detector defense wraps;
    ``finetune_from`` names the entry whose model a training-time defense fine-tunes
    (post-processing, seeds 000 and 002) instead of training from scratch.
    """

    name: str | None = Field(None, min_length=1)
    on: str | None = None
    finetune_from: str | None = None
    architecture: PluginEntry | None = None
    paper: str | None = Field(
        None, min_length=1, description="a link to (or citation of) the paper the entry reproduces; "
        "shown on its site page and in its JSON export, not part of any result's key")

    @property
    def label(self) -> str:
        return self.name or self.id

    @property
    def parents(self) -> tuple[str, ...]:
        """The entries this one is built from."""
        return tuple(r for r in (self.on, self.finetune_from) if r)


class AttackEntry(PluginEntry):
    """An attack with the budgets it is evaluated at (in its norm, [0, 1] pixel space)."""

    name: str | None = Field(None, min_length=1)
    budgets: list[StrictBudget] = Field(default_factory=list)
    view: Literal["gray-box"] | None = Field(
        None, description="run a white-box attack against the base classifier only (seed 003 App. D)")
    surrogate: str | None = Field(
        None, description="transfer: craft on this defense entry's model, evaluate on every defense")
    timeout: Number | None = Field(None, gt=0, description="seconds per attack run; default match_timeout")
    against: list[str] | None = Field(
        None, description="the defense entries this attack is run against (default: every one); "
        "for attacks made for one kind of defense, such as cw-wb against detectors")
    targets: Annotated[str | int, BeforeValidator(_targets)] | None = Field(
        None, description="a targeted run: 'all' other classes, one 'random' other class, the "
        "'least-likely' class of the clean prediction, or N distinct random other classes per "
        "sample (seed 000: 113 samples × 9 targets is samples = 113, targets = 'all')")

    @property
    def label(self) -> str:
        return self.name or self.id

    @field_validator("budgets")
    @classmethod
    def _sorted(cls, v: list[float]) -> list[float]:
        """Sorted; a budget given twice is an error (a typo for another budget, most likely)."""
        twice = sorted({b for b in v if v.count(b) > 1})
        if twice:
            raise ValueError(f"{twice[0]:g} is given twice")
        return sorted(v)


class MetricEntry(PluginEntry):
    """A metric the tournament measures (a metric plugin by id with its params): per entrant for a
    model metric, per match for a match metric; ``against`` and ``attacks`` narrow where."""

    name: str | None = Field(None, min_length=1)
    against: list[str] | None = Field(None, description="the defense entries measured (default: every one)")
    attacks: list[str] | None = Field(
        None, description="match metrics: the attack entries whose matches are measured (default: every one)")

    @property
    def label(self) -> str:
        return self.name or self.id


class TaskResources(Strict):
    """What the tasks of one attack entry ask a Ray cluster for, over ``[resources]``'s defaults
    (a key left out keeps the default)."""

    num_cpus: Number | None = Field(None, gt=0, description="CPUs per task of this attack (fractions allowed)")
    num_gpus: Number | None = Field(None, ge=0, description="GPUs per task of this attack (0.25: four share a GPU)")


def _per_attack(value: Any) -> Any:
    """``[resources.attacks]``: a table of ``name = { num_cpus, num_gpus }``, each checked as
    :class:`TaskResources` checks it (so a typo names the key it meant)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of attack entry names, each {{ num_cpus, num_gpus }}, got {_shown(value)}")
    for name, own in value.items():
        if not isinstance(own, dict):
            raise ValueError(f"{name}: expected a table {{ num_cpus, num_gpus }}, got {_shown(own)}")
        try:
            TaskResources(**own)
        except ValidationError as exc:
            raise ValueError(f"{name}: {describe_validation_error(exc, TaskResources)}") from None
    return value


class Resources(Strict):
    """What each Ray task asks the cluster for; ``attacks``: per attack entry (by name), what its
    match tasks (and a transfer attack's crafting) ask for instead."""

    num_cpus: Number = Field(1.0, gt=0)
    num_gpus: Number = Field(0.0, ge=0)
    attacks: Annotated[dict[str, TaskResources], BeforeValidator(_per_attack)] = Field(
        default_factory=dict, description="per attack entry name: { num_cpus, num_gpus } of its match tasks")

    def for_attack(self, label: str) -> dict[str, float]:
        """The Ray options of a task of attack entry ``label`` that differ from the defaults."""
        own = self.attacks.get(label)
        if own is None:
            return {}
        return {k: float(v) for k, v in own.model_dump().items() if v is not None}


def _autocast(v: Any) -> Any:
    """``"off"`` or ``"bf16"``: float16 is refused (its range makes small input gradients underflow to
    zero, which would weaken gradient attacks without a sign)."""
    if v in AUTOCAST_MODES and isinstance(v, str):
        return v
    hint = " (float16 gradients underflow; use \"bf16\")" if v in ("fp16", "float16", "half") else \
        (did_you_mean(v, list(AUTOCAST_MODES)) if isinstance(v, str) else "")
    raise ValueError(f"expected {' or '.join(map(json.dumps, AUTOCAST_MODES))}, got {_shown(v)}{hint}")


AUTOCAST_MODES = ("off", "bf16")


class Speed(Strict):
    """``[speed]``: how every entrant's model runs once built (after training, the model cache or
    its file), all off by default and recorded in each model row's provenance when on; see
    :class:`arena.model.SpeedSettings` for where each applies."""

    channels_last: Flag = Field(False, description="4-D weights and inputs in channels-last (NHWC) memory format")
    compile: Flag = Field(False, description="torch.compile the forward pass (in the worker that runs it; "
                          "eager, recorded, where compilation fails)")
    autocast: Annotated[str, BeforeValidator(_autocast)] = Field(
        "off", description='"bf16": forward passes under autocast to bfloat16 (attacks, judging and clean '
        'accuracy alike; logits in float32)')

    def settings(self) -> Any:
        """The :class:`arena.model.SpeedSettings` these stand for (None: every one is off)."""
        from arena.model import SpeedSettings

        out = SpeedSettings(self.channels_last, self.compile, None if self.autocast == "off" else self.autocast)
        return out if out.active else None


def _training_defaults(value: dict[str, Any]) -> dict[str, Any]:
    """``[training]``: keys of the shared training config only (a typo is an error, not a silent
    default), validated as that config validates them; only the keys given are kept."""
    try:
        TrainingConfig(**value)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, TrainingConfig)) from None
    return dict(value)


class TournamentConfig(Strict):
    """A whole tournament file: data, architecture, seed, samples, defenses and attacks."""

    name: str = "tournament"
    dataset: PluginEntry
    architecture: PluginEntry
    seed: WholeNumber = Field(42, ge=0, le=2**32 - 1, description="seeds data splits, training and attacks")
    samples: WholeNumber = Field(100, ge=1, description="test samples attacked (at most the test set's size)")
    batch_size: Annotated[int | str, BeforeValidator(_batch_size)] = Field(
        256, description='samples per attack call, or "auto": the largest batch that fits (halved on out of memory)')
    shards: Annotated[int | str, BeforeValidator(_shards)] = Field(
        AUTO, description='shards per attack call (contiguous ranges of its batches run as separate tasks), or '
        '"auto": from each match\'s expected cost against the others\' and the executor\'s parallelism')
    training: dict[str, Any] = Field(default_factory=dict, description="defaults for training-time defenses")
    match_timeout: Number | None = Field(None, gt=0, description="seconds per attack run (None: no limit)")
    save_examples: Flag = Field(False, description="keep adversarial examples next to the database")
    cascade: Flag = Field(
        False, description="worst case as a cascade: each attack (in file order) attacks only the samples "
        "that every earlier attack of its norm left robust at its budget or a smaller one; per-attack "
        "columns are then conditional on the earlier ones (default: every attack on every sample)")
    judge_passes: WholeNumber = Field(
        20, ge=1, description="passes that judge an example against a model that declares itself "
        "randomised: it is broken when it fools the majority of them (clean accuracy likewise)")
    resources: Resources = Field(default_factory=lambda: Resources())
    defenses: list[DefenseEntry] = Field(min_length=1)
    attacks: list[AttackEntry] = Field(min_length=1)
    metrics: list[MetricEntry] = Field(
        default_factory=list, description="measurements stored per model or per match (metric plugins)")
    rank_by: Annotated[str | dict[str, float], BeforeValidator(_rank_by)] = Field(
        RANK_MEAN, description="how the leaderboard ranks each norm's defenses: \"mean\" worst case over the "
        "norm's budgets, or the worst case at one primary budget per norm ({ linf = 0.1, l2 = 1.0 }; a norm "
        "it does not name is ranked by the mean)")
    speed: Speed = Field(default_factory=lambda: Speed(),
                         description="optional speed settings of every model: channels_last, compile, autocast")

    @field_validator("training")
    @classmethod
    def _training(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _training_defaults(v)

    @field_validator("defenses", "attacks", "metrics")
    @classmethod
    def _unique_names(cls, entries: list[Any]) -> list[Any]:
        seen: dict[str, int] = {}
        for i, e in enumerate(entries):
            if e.label in seen:
                raise ValueError(f"[{seen[e.label]}] and [{i}] have the same name '{e.label}'; "
                                 "give one a distinct 'name'")
            seen[e.label] = i
        return entries

    @model_validator(mode="after")
    def _resource_names(self) -> TournamentConfig:
        """``[resources.attacks]`` names attack entries: an unknown name is an error at its key."""
        labels = [a.label for a in self.attacks]
        for name in self.resources.attacks:
            if name not in labels:
                message = f"no attack entry named '{name}'{did_you_mean(name, labels)}; attack entries: " + \
                    ", ".join(labels)
                raise ValidationError.from_exception_data("TournamentConfig", [InitErrorDetails(
                    type=PydanticCustomError("value_error", message.replace("{", "{{").replace("}", "}}")),
                    loc=("resources", "attacks", name), input=name)])
        return self

    @field_validator("rank_by")
    @classmethod
    def _rank_budgets(cls, v: Any, info: ValidationInfo) -> Any:
        """A primary budget must be one that an attack of its norm lists: no attack lists it at
        all, or every attack that does names another norm in its params, is an error here (an
        attack whose norm only its plugin knows is checked by the leaderboard, which notes it)."""
        attacks = info.data.get("attacks")
        if not isinstance(v, dict) or not attacks:
            return v
        for norm, budget in v.items():
            listing = [a for a in attacks if any(math.isclose(b, budget, rel_tol=1e-9) for b in a.budgets)]
            if not listing:
                listed = ", ".join(f"{b:g}" for b in sorted({b for a in attacks for b in a.budgets})) or "none"
                raise ValueError(f"{norm}: no attack lists the budget {budget:g} (budgets listed: {listed})")
            norms = {a.label: a.params.get("norm") for a in listing}
            if all(isinstance(n, str) for n in norms.values()) and norm not in norms.values():
                named = ", ".join(f"{label} ({n})" for label, n in norms.items())
                raise ValueError(f"{norm}: no {norm} attack lists the budget {budget:g} (it is listed by {named})")
        return v

    def digest(self) -> str:
        """A content hash of the validated configuration (provenance, resume); a file without
        metrics hashes as it did before metrics existed, and one that keeps the default
        ``rank_by`` as it did before ``rank_by`` existed (likewise defenses without ``paper``),
        so their older runs still resume. ``shards`` is never part of it (sharded and unsharded
        runs store the same rows, so a run resumes under another setting), and
        ``resources.attacks`` only where it is set."""
        data = self.model_dump(mode="json")
        del data["shards"]
        if not data["resources"]["attacks"]:
            del data["resources"]["attacks"]
        if not data["metrics"]:
            del data["metrics"]
        if data["rank_by"] == RANK_MEAN:
            del data["rank_by"]
        if data.get("speed") == Speed().model_dump(mode="json"):  # [speed] left out or all off
            del data["speed"]
        for entry in data["defenses"]:
            if entry.get("paper") is None:
                entry.pop("paper", None)
        text = json.dumps(data, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_tournament(data: dict[str, Any], source: str) -> TournamentConfig:
    """The file's contents validated against the schema; ConfigError names file and field."""
    from arena.errors import ConfigError

    try:
        return TournamentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, TournamentConfig)}") from None
