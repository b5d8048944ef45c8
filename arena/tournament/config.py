"""The tournament file: TOML validated by pydantic, then checked against the plugin registry.

Every error names the file, the field path and, for unknown ids or keys, the closest valid one::

    quickstart.toml: attacks[1].params: attack 'pgd': stpes: unknown key (did you mean 'steps'?)
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from arena.defense import DefenseKind
from arena.errors import ConfigError, describe_validation_error, did_you_mean
from arena.registry import Registry


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PluginRef(Strict):
    """A plugin by id with its parameters; a bare string ``"digits"`` means ``{id = "digits"}``."""

    id: str
    params: dict[str, Any] = Field(default_factory=dict)


class DefenseEntry(PluginRef):
    """A defended model entering the tournament.

    ``architecture`` overrides the tournament's architecture for this entry (a transfer
    surrogate of another architecture, such as seed 001's ResNet).

    ``on`` names the entry whose trained model an inference-time or detector defense wraps;
    ``finetune_from`` names the entry whose model a training-time defense fine-tunes
    (post-processing, seeds 000 and 002) instead of training from scratch.
    """

    name: str | None = None
    on: str | None = None
    finetune_from: str | None = None
    architecture: PluginRef | None = None

    @field_validator("architecture", mode="before")
    @classmethod
    def _bare_arch(cls, v: Any) -> Any:
        return {"id": v} if isinstance(v, str) else v

    @property
    def label(self) -> str:
        return self.name or self.id


class AttackEntry(PluginRef):
    """An attack with the budgets it is evaluated at (in its norm, [0, 1] pixel space)."""

    name: str | None = None
    budgets: list[float] = Field(default_factory=list)
    view: Literal["gray-box"] | None = Field(
        None, description="run a white-box attack against the base classifier only (seed 003 App. D)")
    surrogate: str | None = Field(
        None, description="transfer: craft on this defense entry's model, evaluate on every defense")
    timeout: float | None = Field(None, gt=0, description="seconds per attack run; default match_timeout")
    against: list[str] | None = Field(
        None, description="the defense entries this attack is run against (default: every one); "
        "for attacks made for one kind of defense, such as cw-wb against detectors")

    @property
    def label(self) -> str:
        return self.name or self.id

    def faces(self, defense: str) -> bool:
        """Whether this attack is run against the defense entry labelled ``defense``."""
        return self.against is None or defense in self.against

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(b <= 0 for b in v):
            raise ValueError("budgets must be positive")
        return sorted(set(v))


class Resources(Strict):
    """What each Ray task asks the cluster for."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class TournamentConfig(Strict):
    """A whole tournament: data, architecture, seed, samples, defenses and attacks."""

    name: str = "tournament"
    dataset: PluginRef
    architecture: PluginRef
    seed: int = 42
    samples: int = Field(100, ge=1, description="test samples attacked")
    batch_size: int = Field(256, ge=1, description="samples per attack call")
    training: dict[str, Any] = Field(default_factory=dict, description="defaults for training-time defenses")
    match_timeout: float | None = Field(None, gt=0, description="seconds per attack run (None: no limit)")
    save_examples: bool = Field(False, description="keep adversarial examples next to the database")
    resources: Resources = Field(default_factory=lambda: Resources())
    defenses: list[DefenseEntry] = Field(min_length=1)
    attacks: list[AttackEntry] = Field(min_length=1)

    @field_validator("dataset", "architecture", mode="before")
    @classmethod
    def _bare_id(cls, v: Any) -> Any:
        return {"id": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _unique_names(self) -> "TournamentConfig":
        for field, entries in (("defenses", self.defenses), ("attacks", self.attacks)):
            seen: set[str] = set()
            for i, e in enumerate(entries):
                if e.label in seen:
                    raise ValueError(f"{field}[{i}]: duplicate name '{e.label}'; give it a distinct 'name'")
                seen.add(e.label)
        return self

    def digest(self) -> str:
        """A content hash of the validated configuration (provenance, resume)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def defense(self, label: str) -> DefenseEntry:
        return next(d for d in self.defenses if d.label == label)


def load_tournament(path: str | Path, registry: Registry) -> TournamentConfig:
    """Read, validate and cross-check a tournament file; ConfigError names file and field."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such tournament file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_tournament(data, registry, source=str(path))


def parse_tournament(data: dict[str, Any], registry: Registry, source: str = "<tournament>") -> TournamentConfig:
    try:
        cfg = TournamentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc, TournamentConfig)}") from None
    try:
        _check_plugins(cfg, registry)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return cfg


def _check_plugins(cfg: TournamentConfig, registry: Registry) -> None:
    _check_ref("dataset", cfg.dataset, "datasets", registry)
    _check_ref("architecture", cfg.architecture, "architectures", registry)
    labels = [d.label for d in cfg.defenses]
    for i, entry in enumerate(cfg.defenses):
        cls = _check_ref(f"defenses[{i}]", entry, "defenses", registry, cfg.training)
        if entry.architecture is not None:
            _check_ref(f"defenses[{i}].architecture", entry.architecture, "architectures", registry)
        training = cls.defense_kind in (DefenseKind.TRAINING, DefenseKind.PRETRAINED)
        for key in ("on", "finetune_from"):
            ref = getattr(entry, key)
            if ref is not None and ref not in labels[:i] + labels[i + 1:]:
                raise ConfigError(f"defenses[{i}].{key}: no defense named '{ref}'{did_you_mean(ref, labels)}")
        if not training and entry.on is None:
            raise ConfigError(f"defenses[{i}].on: {cls.defense_kind.value} defense '{entry.id}' needs the "
                              "name of the trained model it protects")
        if training and entry.on is not None:
            raise ConfigError(f"defenses[{i}].on: {cls.defense_kind.value} defense '{entry.id}' brings its own "
                              "model; only inference-time and detector defenses take 'on'")
    defense_order(cfg)
    for i, entry in enumerate(cfg.attacks):
        cls = _check_ref(f"attacks[{i}]", entry, "attacks", registry)
        white = cls.knowledge.value == "white-box"
        if entry.surrogate is not None and entry.surrogate not in labels:
            raise ConfigError(f"attacks[{i}].surrogate: no defense named '{entry.surrogate}'"
                              f"{did_you_mean(entry.surrogate, labels)}")
        if (entry.surrogate is not None or entry.view is not None) and not white:
            raise ConfigError(f"attacks[{i}]: only white-box attacks can be run as transfer or gray-box attacks; "
                              f"'{entry.id}' is {cls.knowledge.value}")
        if entry.surrogate is not None and entry.view is not None:
            raise ConfigError(f"attacks[{i}]: choose either surrogate (transfer) or view (gray-box)")
        for target in entry.against or []:
            if target not in labels:
                raise ConfigError(f"attacks[{i}].against: no defense named '{target}'{did_you_mean(target, labels)}")
        if entry.against is not None and not entry.against:
            raise ConfigError(f"attacks[{i}].against: name at least one defense (or leave it out)")
        if not attack_minimal(cls, entry.params) and not entry.budgets:
            raise ConfigError(f"attacks[{i}].budgets: fixed-budget attack '{entry.id}' needs at least one budget")


def _check_ref(where: str, ref: PluginRef, kind: str, registry: Registry,
               defaults: dict[str, Any] | None = None) -> type:
    try:
        cls = registry.get(kind, ref.id)
    except ConfigError as exc:
        raise ConfigError(f"{where}.id: {exc}") from None
    try:
        cls.parse_config(merged_params(cls, ref.params, defaults))
    except ConfigError as exc:
        raise ConfigError(f"{where}.params: {exc}") from None
    return cls


def attack_minimal(cls: type, params: dict[str, Any]) -> bool:
    """Whether the attack configured with ``params`` is a minimal-perturbation attack. Asked of
    an instance: a wrapper (``eot``, ``bpda``, ``repeated``) is minimal exactly when its inner
    attack is, whatever its class attribute says."""
    return bool(cls(**params).minimal)


def merged_params(cls: type, params: dict[str, Any], defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The entry's params over the tournament's training defaults (only keys the plugin knows)."""
    known = getattr(cls.Config, "model_fields", {})
    base = {k: v for k, v in (defaults or {}).items() if k in known}
    return {**base, **params}


def defense_order(cfg: TournamentConfig) -> list[DefenseEntry]:
    """Defenses ordered so that every entry comes after the one it wraps or fine-tunes."""
    done: dict[str, DefenseEntry] = {}
    pending = list(cfg.defenses)
    while pending:
        ready = [d for d in pending if all(r is None or r in done for r in (d.on, d.finetune_from))]
        if not ready:
            names = ", ".join(d.label for d in pending)
            raise ConfigError(f"defenses: 'on'/'finetune_from' form a cycle among {names}")
        for d in ready:
            done[d.label] = d
            pending.remove(d)
    return list(done.values())
