"""Papernot et al.'s practical black-box attack: distil the oracle into a substitute, then transfer.

The substitute is trained on labels the oracle gives for a small seed set that Jacobian-based
dataset augmentation grows round by round; any white-box attack plugin then crafts adversarial
examples against the substitute, and the harness judges them on the real model. The oracle is
asked exactly once for every labelled point and never for anything else.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from arena import hookimpl
from arena.attack import Attack, FixedBudgetAttack, off_target
from arena.data import Split
from arena.errors import ConfigError
from arena.model import QueryOracle
from arena.plugin import PluginConfig
from arena.refs import ArchitectureRef, AttackRef
from arena.threat import Knowledge, Norm
from arena.training import fit


class SubstituteConfig(PluginConfig):
    norm: Norm = Field(Norm.LINF, description="the budget's norm, passed to the inner attack")
    seed_size: int = Field(150, ge=1, description="initial points drawn from the attacked batch (paper: 150)")
    rounds: int = Field(6, ge=1, description="substitute training rounds ρ (paper, MNIST: 6)")
    lam: float = Field(0.1, gt=0, description="augmentation step λ (paper: 0.1)")
    tau: int | None = Field(None, ge=1, description="flip λ's sign every τ rounds (§6: 3); None: never")
    reservoir: int | None = Field(None, ge=1, description="κ: from round σ on, augment κ points (§6)")
    reservoir_after: int = Field(3, ge=1, description="σ: rounds of full augmentation first")
    architecture: ArchitectureRef = Field("digits-cnn", validate_default=True,
                                          description="substitute architecture: an id, or {id, params}")
    num_classes: int = Field(10, ge=2, description="K: a labels-only oracle does not reveal it")
    epochs: int = Field(10, ge=1, description="training epochs per round (paper: 10)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    inner: AttackRef = Field("pgd", validate_default=True,
                             description="white-box attack crafted against the substitute: an id, or {id, params}")
    max_queries: int | None = Field(None, ge=1, description="per-sample query budget")

    @model_validator(mode="after")
    def _inner_norm(self) -> "SubstituteConfig":
        attack = inner_attack(self)
        if attack.threat_norm is not self.norm:
            raise ValueError(f"inner attack '{self.inner.id}' works in {attack.threat_norm.value}, "
                             f"not the substitute's norm {self.norm.value}")
        return self


def inner_attack(cfg: SubstituteConfig) -> Attack:
    """The inner attack, with the substitute's norm unless its params name one."""
    params = dict(cfg.inner.params)
    if "norm" in cfg.inner.cls.Config.model_fields:
        params.setdefault("norm", cfg.norm)
    return cfg.inner.build(**off_target(cfg.inner.cls, params))


def within_budget(owner: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Which rows fit: each sample's first ``left[s]`` rows (in order) among those it owns."""
    order = torch.argsort(owner, stable=True)
    per = torch.bincount(owner, minlength=left.shape[0])
    first = torch.cumsum(per, 0) - per
    rank = torch.empty_like(owner)
    rank[order] = torch.arange(owner.shape[0], device=owner.device) - first[owner[order]]
    return rank < left[owner]


def jacobian_step(sub: nn.Module, x: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """Jacobian-based dataset augmentation (Papernot et al. 2017, §4.2 eq. 4):
    ``clip(x + λ·sign(J_F(x)[Õ(x)]))``, the gradient of the substitute's logit of the oracle label."""
    sub.eval()
    with torch.enable_grad():
        xin = x.detach().requires_grad_(True)
        picked = sub(xin).gather(1, labels.unsqueeze(1)).sum()
        (grad,) = torch.autograd.grad(picked, xin)
    return (x + lam * grad.sign()).clamp(0, 1)


class Substitute(FixedBudgetAttack):
    """Practical black-box attack by substitute training (Papernot, McDaniel, Goodfellow, Jha,
    Celik and Swami, "Practical Black-Box Attacks against Machine Learning", AsiaCCS 2017).

    Algorithm 1 (§4): label the seed set S₀ with the oracle, train the substitute F, grow
    S_{ρ+1} = S_ρ ∪ {clip(x + λ_ρ·sign(J_F(x)[Õ(x)])) : x ∈ S_ρ} (§4.2, eq. 4), for ``rounds``
    rounds; then craft with ``inner`` (any white-box attack plugin, default PGD) against F at the
    harness' ε (§5: transfer). §6 options: periodic step size λ_ρ = λ·(−1)^⌊ρ/τ⌋ (``tau``) and
    reservoir sampling (from round σ = ``reservoir_after`` on, only κ = ``reservoir`` randomly
    chosen points are augmented per round). Paper defaults: 150 seed points, ρ = 6, λ = 0.1,
    10 epochs per round.

    Arena choices: the seed set is drawn from the attacked batch (``seed_size`` of its inputs,
    at random), the only inputs the harness gives the attacker; the substitute keeps training
    across rounds (Papernot's cleverhans tutorial); a labels-only oracle does not reveal the
    number of classes, hence ``num_classes``. Each point is labelled once, and its query is
    counted for the attacked sample it descends from; with ``max_queries`` a sample's lineage
    stops growing when its budget is spent.
    """

    id: ClassVar[str] = "substitute"
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX
    Config = SubstituteConfig

    def run(self, model, x, y, eps, targets):
        cfg = self.config
        self._check_labels(y, "y")
        owner = torch.randperm(x.shape[0], device=x.device)[:cfg.seed_size]
        points, labels, owner = self._label(model, x[owner], owner)
        sub = self._build(x)
        for rnd in range(cfg.rounds):
            self._train(sub, points, labels)
            if rnd == cfg.rounds - 1:
                break
            new, new_owner = self._augment(sub, points, labels, owner, rnd)
            new, new_labels, new_owner = self._label(model, new, new_owner)
            points, labels = torch.cat([points, new]), torch.cat([labels, new_labels])
            owner = torch.cat([owner, new_owner])
        return inner_attack(cfg)(sub.eval(), x, y, eps, targets).x_adv

    def _label(self, oracle: QueryOracle, points: torch.Tensor, owner: torch.Tensor):
        """Oracle labels of the affordable ``points``; each query counted for its owner."""
        if oracle.budget is not None:
            keep = within_budget(owner, oracle.budget - oracle.counts)
            points, owner = points[keep], owner[keep]
        labels = oracle(points, owner) if points.shape[0] else owner.new_empty(0)
        self._check_labels(labels, "the oracle's labels")
        return points, labels, owner

    def _augment(self, sub, points, labels, owner, rnd):
        """One round of Jacobian augmentation, of every point or of a reservoir sample (§6)."""
        cfg = self.config
        if cfg.reservoir is not None and rnd >= cfg.reservoir_after:
            pick = torch.randperm(points.shape[0], device=points.device)[:cfg.reservoir]
            points, labels, owner = points[pick], labels[pick], owner[pick]
        sign = -1.0 if cfg.tau is not None and (rnd // cfg.tau) % 2 else 1.0
        return jacobian_step(sub, points, labels, sign * cfg.lam), owner

    def _build(self, x: torch.Tensor) -> nn.Module:
        cfg = self.config
        arch = cfg.architecture.build()
        return arch.build(tuple(x.shape[1:]), cfg.num_classes).to(x.device)

    def _train(self, sub: nn.Module, points: torch.Tensor, labels: torch.Tensor) -> None:
        cfg = self.config
        seed = int(torch.randint(0, 2**31 - 1, ()))
        loss = lambda m, xb, yb: nn.functional.cross_entropy(m(xb), yb)  # noqa: E731
        fit(sub, Split(points, labels), loss, epochs=cfg.epochs, batch_size=cfg.batch_size,
            lr=cfg.lr, seed=seed)

    def _check_labels(self, labels: torch.Tensor, what: str) -> None:
        if labels.numel() and int(labels.max()) >= self.config.num_classes:
            raise ConfigError(f"attack '{self.id}': {what} reach class {int(labels.max())}; "
                              f"set num_classes above it (now {self.config.num_classes})")


@hookimpl
def arena_register_attacks(register):
    register(Substitute)
