"""Attack base classes and the harness that enforces the threat model (foolbox 3 style).

A plugin implements :meth:`Attack.run`; callers use ``attack(model, x, y, eps, targets)``, whose
``__call__`` is final: it validates inputs, hides the model behind a :class:`QueryOracle` for
black-box attacks, puts the model in eval mode without parameter gradients, runs the plugin,
projects the result onto the ε-ball and [0, 1], checks that the model's weights did not change,
and measures success and distance itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from arena.data import check_images
from arena.errors import AttackError, ConfigError
from arena.model import Model, QueryOracle, frozen, seeded
from arena.plugin import Plugin
from arena.threat import Knowledge, Norm, ThreatModel, within


@dataclass
class AttackResult:
    """What an attack produced for each of the N samples.

    ``success`` is judged by the harness on the returned ``x_adv``; ``distance`` is the
    per-sample norm of the perturbation in the attack's norm; ``queries`` counts model queries.
    For minimal-perturbation attacks, a failed sample's distance is ``inf``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    queries: torch.Tensor
    norm: Norm
    eps: float | None = None

    def success_at(self, eps: float) -> torch.Tensor:
        """Success within budget ``eps``: what one run of a minimal attack says of every budget."""
        if self.eps is not None and not bool(within(torch.tensor(eps), self.eps)):
            raise ValueError(f"this result was produced at eps={self.eps}; cannot judge eps={eps}")
        return self.success & within(self.distance, eps)


@dataclass
class RunOutput:
    """Optional richer return value of :meth:`Attack.run`: adversarial inputs and query counts."""

    x_adv: torch.Tensor
    queries: torch.Tensor | None = None


class Attack(Plugin):
    """Base class of attack plugins.

    Class attributes describe the attack: ``norm`` (the default; a ``norm`` config field
    overrides it), ``knowledge``, ``minimal`` (a minimal-perturbation attack that ignores
    ``eps`` and reports distances) and ``supports_targeted``.
    """

    kind: ClassVar[str] = "attack"
    norm: ClassVar[Norm] = Norm.LINF
    knowledge: ClassVar[Knowledge] = Knowledge.WHITE_BOX
    minimal: ClassVar[bool] = False
    supports_targeted: ClassVar[bool] = True
    oracle_output: ClassVar[str] = "labels"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must not override Attack.__call__; implement run()")

    @property
    def threat_norm(self) -> Norm:
        """The norm this instance attacks in (its ``norm`` config field, else the class's)."""
        return Norm(getattr(self.config, "norm", self.norm))

    @property
    def max_queries(self) -> int | None:
        return getattr(self.config, "max_queries", None)

    def threat_model(self, eps: float | None = None, targeted: bool = False) -> ThreatModel:
        return ThreatModel(self.threat_norm, None if self.minimal else eps, self.knowledge,
                           targeted, self.max_queries)

    def run(self, model: Any, x: torch.Tensor, y: torch.Tensor, eps: float | None,
            targets: torch.Tensor | None) -> torch.Tensor | RunOutput:
        """Craft adversarial examples. ``model`` is a QueryOracle for black-box attacks."""
        raise NotImplementedError

    def __call__(self, model: Model, x: torch.Tensor, y: torch.Tensor, eps: float | None = None,
                 targets: torch.Tensor | None = None, *, seed: int | None = None,
                 context: Any = None) -> AttackResult:
        """Run the attack under the harness; see the module docstring. Final."""
        if isinstance(model, QueryOracle):
            raise AttackError(f"attack '{self.id}' must be given the model; the harness builds the oracle")
        if not callable(model):
            raise AttackError(f"attack '{self.id}': model must be callable, got {type(model).__name__}")
        threat = self._validate(x, y, eps, targets)
        self.context = context  # the defense object, for adaptive attacks (declared hooks only)
        with frozen(model), seeded(seed, x.device):
            fingerprint = _fingerprint(model)
            if x.shape[0]:
                num_classes = _logits(model, x[:1]).shape[1]  # one sample tells the class count
                _check_labels(y, targets, num_classes, self.id)
            target = self._target(model, x.shape[0], x.device)
            out = self.run(target, x, y, threat.eps, targets)
            x_adv, queries = _unpack(out, target, x.shape[0], x.device)
            _check_output(x_adv, x, self.id)
            x_adv = threat.project(x_adv.detach().to(x.dtype), x)
            if fingerprint != _fingerprint(model):
                raise AttackError(f"attack '{self.id}' modified the model's weights")
            adv_pred = _logits(model, x_adv).argmax(dim=1)
        return self._result(x, y, x_adv, adv_pred, targets, queries, threat)

    def _validate(self, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                  targets: torch.Tensor | None) -> ThreatModel:
        try:
            check_images(x, "x")
        except ValueError as exc:
            raise ConfigError(f"attack '{self.id}': {exc}") from None
        if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ConfigError(f"attack '{self.id}': y must be int64 of shape ({x.shape[0]},)")
        if targets is not None:
            if not self.supports_targeted:
                raise ConfigError(f"attack '{self.id}' does not support targeted attacks")
            if targets.dtype != torch.int64 or targets.shape != y.shape:
                raise ConfigError(f"attack '{self.id}': targets must be int64 shaped like y")
        if not self.minimal and eps is None:
            raise ConfigError(f"attack '{self.id}' is a fixed-budget attack and needs eps")
        try:
            return self.threat_model(eps, targets is not None)
        except ValueError as exc:
            raise ConfigError(f"attack '{self.id}': eps: {exc}") from None

    def _target(self, model: Model, n: int, device: torch.device) -> Any:
        if self.knowledge is Knowledge.BLACK_BOX:
            return QueryOracle(model, n, output=self.oracle_output, budget=self.max_queries, device=device)
        return model

    def _result(self, x, y, x_adv, adv_pred, targets, queries, threat) -> AttackResult:
        success = adv_pred == targets if targets is not None else adv_pred != y
        distance = threat.norm.measure(x_adv - x)
        if self.minimal:
            distance = torch.where(success, distance, torch.full_like(distance, float("inf")))
        return AttackResult(x_adv, success, distance, queries, threat.norm, threat.eps)


def _unpack(out: Any, target: Any, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x_adv, queries = (out.x_adv, out.queries) if isinstance(out, RunOutput) else (out, None)
    if isinstance(target, QueryOracle):
        queries = target.counts.clone()
    if queries is None:
        queries = torch.zeros(n, dtype=torch.long, device=device)
    return x_adv, queries.to(device=device, dtype=torch.long)


def _check_output(x_adv: Any, x: torch.Tensor, attack_id: str) -> None:
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        shape = tuple(getattr(x_adv, "shape", ()))
        raise AttackError(f"attack '{attack_id}' returned shape {shape}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackError(f"attack '{attack_id}' returned NaN or infinite values")


def _check_labels(y: torch.Tensor, targets: torch.Tensor | None, k: int, attack_id: str) -> None:
    for name, t in (("y", y), ("targets", targets)):
        if t is not None and t.numel() and (t.min() < 0 or t.max() >= k):
            raise ConfigError(f"attack '{attack_id}': {name} must lie in [0, {k})")


def _logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _fingerprint(model: Any) -> tuple:
    """Identity, in-place version counter and checksum of every parameter and buffer."""
    if not isinstance(model, nn.Module):
        return ()
    items = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        items.append((name, id(t), t._version, float(t.detach().double().sum())))
    return tuple(items)


def off_target(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` for crafting on a model other than the one that judges the result (a transfer
    surrogate, a substitute, the base classifier of a gray-box view). An attack that can stop a
    sample at its first adversarial point (an ``early_stop`` config field) runs every step
    instead, unless the configuration sets it: a point just across the crafting model's boundary
    rarely fools the judged model."""
    if "early_stop" in getattr(getattr(cls, "Config", None), "model_fields", {}) and "early_stop" not in params:
        return {**params, "early_stop": False}
    return dict(params)


class FixedBudgetAttack(Attack):
    """An attack that searches within a given ε-ball (``eps`` required)."""


class MinimalAttack(Attack):
    """A minimal-perturbation attack: ignores ``eps``, reports distances for every budget."""

    minimal: ClassVar[bool] = True
