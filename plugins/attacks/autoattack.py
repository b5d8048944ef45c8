"""AutoAttack (Croce & Hein, ICML 2020): an ensemble of parameter-free attacks run as a cascade."""
from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from arena import hookimpl, isolation
from arena.attack import FixedBudgetAttack, RunOutput
from arena.plugin import PluginConfig
from arena.refs import AttackRef
from arena.threat import L1L2OrLinf, Norm
from arena.training import judged

Version = Literal["standard", "plus", "rand", "custom"]


def components(version: str, norm: Norm, steps: int, iterations: int, eot_iter: int) -> list[tuple[str, str, dict]]:
    """The reference's components of ``version`` as ``(name, attack id, params)``, in cascade
    order (the reference's ``set_version``): ``standard`` APGD-CE, APGD-T (9 target classes),
    FAB-T (9), Square (5,000 iterations), one restart each (in L1: APGD-CE with 5 restarts and
    APGD-T with 5 target classes, both with the reference's large-ε schedule, then FAB-T; no
    Square); ``plus`` APGD-CE and APGD-DLR (5 restarts each),
    FAB (5 restarts), Square, APGD-T, FAB-T; ``rand`` APGD-CE and APGD-DLR with EOT over
    ``eot_iter`` draws (20), for randomised defenses."""
    n = norm.value
    apgd = {"norm": n, "steps": steps}
    # Square's budget: its clean check and start, then the reference's n_queries iterations
    square = {"norm": n, "max_queries": iterations + 2, "p_init": 0.8}
    if version == "standard":
        if norm is Norm.L1:
            return [("apgd-ce", "apgd", {**apgd, "loss": "ce", "restarts": 5, "large_eps": True}),
                    ("apgd-t", "apgd-t", {**apgd, "n_target_classes": 5, "large_eps": True}),
                    ("fab-t", "fab-t", {"norm": n, "steps": steps, "n_target_classes": 9})]
        return [("apgd-ce", "apgd", {**apgd, "loss": "ce"}),
                ("apgd-t", "apgd-t", {**apgd, "n_target_classes": 9}),
                ("fab-t", "fab-t", {"norm": n, "steps": steps, "n_target_classes": 9}),
                ("square", "square", square)]
    if version == "plus":
        out = [("apgd-ce", "apgd", {**apgd, "loss": "ce", "restarts": 5}),
               ("apgd-dlr", "apgd", {**apgd, "loss": "dlr", "restarts": 5}),
               ("fab", "fab", {"norm": n, "steps": steps, "restarts": 5})]
        if norm is not Norm.L1:
            out.append(("square", "square", square))
        return out + [("apgd-t", "apgd-t", {**apgd, "n_target_classes": 9}),
                      ("fab-t", "fab-t", {"norm": n, "steps": steps, "n_target_classes": 9})]
    if version == "rand":
        return [("apgd-ce", "apgd", {**apgd, "loss": "ce", "eot_iter": eot_iter}),
                ("apgd-dlr", "apgd", {**apgd, "loss": "dlr", "eot_iter": eot_iter})]
    raise ValueError(f"unknown version {version!r}")


class Component(PluginConfig):
    """One component of a custom cascade: a name and the attack it runs."""

    name: str = Field(min_length=1)
    attack: AttackRef


class AutoAttackConfig(PluginConfig):
    norm: L1L2OrLinf = Norm.LINF
    version: Version = Field("standard", description="the reference's versions, or 'custom' with 'attacks'")
    attacks: list[Component] = Field(default_factory=list,
                                     description="custom: the cascade's components, in order")
    steps: int = Field(100, ge=1, description="iterations of APGD and FAB (the reference: 100)")
    square_iterations: int = Field(5000, ge=1, description="Square's iterations (the reference's n_queries: "
                                   "5,000); its queries per sample are two more (a clean check, the start)")
    eot_iter: int = Field(20, ge=1, description="rand: EOT draws per APGD gradient (the reference: 20)")
    passes: int = Field(20, ge=1, description="against a randomised model, a component's example "
                        "counts as adversarial when it fools the majority of this many passes")

    @model_validator(mode="after")
    def _custom(self) -> "AutoAttackConfig":
        if (self.version == "custom") != bool(self.attacks):
            raise ValueError("'attacks' lists the components of version 'custom', and only of it")
        names = [c.name for c in self.attacks]
        if len(set(names)) != len(names):
            raise ValueError("the components' names must be distinct")
        return self


class AutoAttack(FixedBudgetAttack):
    """AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks", ICML 2020, §4 and the reference's versions): APGD-CE,
    APGD-T, FAB-T and Square (``standard``), ``plus`` (more restarts, APGD-DLR, FAB) or ``rand``
    (APGD with EOT, for randomised defenses), or a ``custom`` list of attacks.

    The components run as a cascade: each attacks only the samples that every earlier component
    left robust, and a sample keeps the first example that fools the model, so the per-example
    worst case over the components is exact and costs only the survivors' work. Each component
    runs under its own harness (a black-box one, Square, through the query oracle, its queries
    counted, in this process: the ensemble is white-box, so an attacker process would hide
    nothing from it); its output is projected onto the ε-ball (FAB-T is a minimal-perturbation attack)
    and judged here on the model — by the majority of ``passes`` passes for a model that declares
    itself randomised, so that a lucky draw does not end a sample's cascade. The match stores
    each component's breakdown (samples attacked, broken, seconds) as the attack's details."""

    id: ClassVar[str] = "autoattack"
    supports_targeted: ClassVar[bool] = False
    Config = AutoAttackConfig

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        cfg = self.config
        if cfg.version == "custom":
            self.components = [(c.name, c.attack.build()) for c in cfg.attacks]
        else:
            self.components = [(name, AttackRef(id=attack_id, params=params).build())
                               for name, attack_id, params in components(cfg.version, self.threat_norm,
                                                                         cfg.steps, cfg.square_iterations,
                                                                         cfg.eot_iter)]
        self._budgeted: dict[tuple[int, float], Any] = {}

    def run(self, model, x, y, eps, targets):
        norm, n = self.threat_norm, x.shape[0]
        robust = ~self._fooled(model, x, y)  # a sample misclassified clean is not attacked
        best = x.clone()
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        report = []
        for name, attack in self.components:
            attack = self._at_budget(attack, eps)
            rows = robust.nonzero().squeeze(1)
            entry = {"name": name, "attacked": int(rows.numel()), "broken": 0, "seconds": 0.0}
            report.append(entry)
            if not rows.numel():
                continue
            t0 = time.perf_counter()
            seed = int(torch.randint(0, 2**31 - 1, (1,)))  # from the RNG the harness seeded
            # The ensemble holds the model already (it is white-box), so a black-box component
            # (Square) gains nothing from the attacker process: it queries the oracle in process,
            # every row still counted by its harness's ledger.
            with isolation.setting(False):
                result = attack(model, x[rows], y[rows], eps, seed=seed)
            x_c = (x[rows] + norm.project(result.x_adv - x[rows], eps)).clamp(0, 1)
            fooled = self._fooled(model, x_c, y[rows])
            best[rows[fooled]] = x_c[fooled]
            robust[rows[fooled]] = False
            queries[rows] += result.queries.to(queries.device)
            entry["broken"] = int(fooled.sum())
            entry["seconds"] = round(time.perf_counter() - t0, 3)
        details: dict[str, Any] = {"components": report}
        eot = max((getattr(a.config, "eot_iter", 1) for _, a in self.components), default=1)
        if eot > 1 and getattr(model, "randomized", False):
            details["eot_draws"] = eot  # gradients averaged over draws: an adaptive (EOT) evaluation
        return RunOutput(best, queries, details)

    def _at_budget(self, attack, eps: float):
        """A minimal component that takes the budget of interest as config (FAB's ``eps``: its
        restart radius, and which samples are done) gets this call's ε."""
        if attack.minimal and "eps" in type(attack.config).model_fields and attack.config.eps != eps:
            cached = self._budgeted.get((id(attack), eps))
            if cached is None:
                cached = type(attack)(**{**attack.config.model_dump(), "eps": eps})
                self._budgeted[(id(attack), eps)] = cached
            return cached
        return attack

    def _fooled(self, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ((correct, _),) = judged(model, x, self.config.passes, y)
        return ~correct


@hookimpl
def arena_register_attacks(register):
    register(AutoAttack)
