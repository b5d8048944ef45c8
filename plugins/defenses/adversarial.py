"""Adversarial training with any attack plugin as the generator, FGSM adversarial training and
virtual adversarial training (seed 001 §2 and §4.1 (3)-(4); seed 002 §2 and §4).

The objective is seed 001's mix ``(1 − r)·CE(x, y) + r·CE(x_adv, y)`` with ``r = ratio``
(Goodfellow et al. 2015 use r = 0.5, Madry et al. 2018 train on adversarial examples only,
r = 1). Every sample of the batch is attacked, through the attack harness (budget projection,
eval mode during the attack, weights checked), with the attack drawn from the installed
plugins, so a third-party attack works as a generator too. The regularisers of
:mod:`arena_builtins.defenses.regularizers` reuse :class:`AdversarialGenerator` for their ``& AT``
variants (seed 002 Tables 3-4).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from arena import hookimpl
from arena.defense import TrainingConfig, TrainingDefense
from arena.plugin import PluginConfig
from arena.refs import AttackRef


class AdversarialSpec(PluginConfig):
    """Which attack crafts the adversarial part of each batch, at what budget, in what share."""

    attack: AttackRef = Field("pgd", validate_default=True,
                              description="any installed attack plugin: an id, or {id, params}")
    eps: float | None = Field(0.3, gt=0, description="budget in the attack's norm; None only for minimal attacks")
    ratio: float = Field(0.5, ge=0, le=1, description="weight r of the adversarial term (0.5 Goodfellow, 1 Madry)")

    @model_validator(mode="after")
    def _budget_fits(self) -> "AdversarialSpec":
        if self.eps is None and not self.attack.build().minimal:
            raise ValueError(f"attack '{self.attack.id}' has a fixed budget and needs eps")
        return self


class AdversarialGenerator:
    """Crafts adversarial examples for training with an attack plugin, through its harness."""

    def __init__(self, spec: AdversarialSpec) -> None:
        self.spec = spec
        self.attack = spec.attack.build()

    def examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial versions of ``x`` (detached); the harness restores the model's mode."""
        return self.attack(model, x.detach(), y, self.spec.eps).x_adv.detach()

    def mixed_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   x_adv: torch.Tensor, clean_logits: torch.Tensor | None = None) -> torch.Tensor:
        """``(1 − r)·CE(x) + r·CE(x_adv)``; clean and adversarial inputs share one forward pass
        (so batch norm sees the mixed batch) unless ``clean_logits`` are already there."""
        r, n = self.spec.ratio, x.shape[0]
        if r == 1.0:
            return F.cross_entropy(model(x_adv), y)
        if clean_logits is None:
            logits = model(torch.cat([x, x_adv]))
            clean_logits, adv_logits = logits[:n], logits[n:]
        else:
            adv_logits = model(x_adv)
        return (1 - r) * F.cross_entropy(clean_logits, y) + r * F.cross_entropy(adv_logits, y)


class AdversarialTrainingConfig(AdversarialSpec, TrainingConfig):
    pass


class AdversarialTraining(TrainingDefense):
    """Adversarial training (Goodfellow et al., ICLR 2015; Madry et al., ICLR 2018) with any
    attack plugin as the generator: each batch is trained on ``(1 − r)·CE(x) + r·CE(x_adv)``
    (seed 001 §2, the objective α J(θ, x, y) + (1 − α) J(θ, x + Δx, y) with α = 1 − r; seed 002
    §4 and Appendix F vary the share of perturbed inputs in the mini-batch). ``ratio = 0.5``
    mixes clean and adversarial halves like Goodfellow et al.; ``attack = "pgd", ratio = 1``
    is Madry et al.'s PGD training. Examples are crafted on the current model in eval mode."""

    id: ClassVar[str] = "adversarial-training"
    Config = AdversarialTrainingConfig

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.generator = AdversarialGenerator(self.config)

    def loss(self, model, x, y):
        if self.config.ratio == 0:
            return F.cross_entropy(model(x), y)
        x_adv = self.generator.examples(model, x, y)
        return self.generator.mixed_loss(model, x, y, x_adv)


class FGSMATConfig(AdversarialTrainingConfig):
    attack: AttackRef = Field("fgsm", validate_default=True, description="FGSM, with its params if any")
    eps: float = Field(0.3, gt=0, description="L∞ budget: 0.3 for MNIST-like data, 0.05 for CIFAR-10")

    @field_validator("attack")
    @classmethod
    def _fgsm_only(cls, ref: AttackRef) -> AttackRef:
        if ref.id != "fgsm":
            raise ValueError(f"fgsm-at crafts with 'fgsm', not '{ref.id}' (use adversarial-training)")
        return ref


class FGSMAdversarialTraining(AdversarialTraining):
    """FGSM adversarial training, the baseline of seed 001 §4.1 (3): examples crafted with FGSM
    (Goodfellow et al., ICLR 2015) at L∞ ε = 0.3 for MNIST and ε = 0.05 for CIFAR-10, mixed half
    and half with clean ones (``ratio = 0.5``). A preset of ``adversarial-training``."""

    id: ClassVar[str] = "fgsm-at"
    Config = FGSMATConfig


class VATConfig(TrainingConfig):
    eps: float = Field(2.1, gt=0, description="L2 radius of the virtual adversarial perturbation")
    xi: float | None = Field(None, gt=0, description="finite-difference step of the power iteration "
                             "(Miyato et al.: 1e-6); None: its exact limit ξ → 0")
    power_iterations: int = Field(1, ge=1)
    alpha: float = Field(1.0, ge=0, description="weight of the local distributional smoothness term")


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (d.dim() - 1)))


def _kl(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(p(·|x) ‖ p(·|x + r)) over the batch, p from ``clean_logits`` (held fixed)."""
    p_log = F.log_softmax(clean_logits.detach(), dim=1)
    return F.kl_div(F.log_softmax(logits, dim=1), p_log, log_target=True, reduction="batchmean")


def _curvature_product(model: nn.Module, x: torch.Tensor, clean_logits: torch.Tensor,
                       d: torch.Tensor) -> torch.Tensor:
    """H·d for H = ∇²_r KL(p(x) ‖ p(x + r)) at r = 0, which is Jᵀ(diag p − ppᵀ)J (exact)."""
    p = F.softmax(clean_logits.detach(), dim=1)
    xg = x.detach().requires_grad_(True)
    z = model(xg)
    v = torch.zeros_like(z, requires_grad=True)
    (jtv,) = torch.autograd.grad(z, xg, v, create_graph=True)    # Jᵀv, linear in v
    (jd,) = torch.autograd.grad(jtv, v, d)                        # J·d (the double-backward trick)
    w = p * jd - p * (p * jd).sum(dim=1, keepdim=True)
    (hd,) = torch.autograd.grad(z, xg, w)
    return hd


class VAT(TrainingDefense):
    """Virtual adversarial training (Miyato et al., "Distributional Smoothing with Virtual
    Adversarial Training", ICLR 2016; TPAMI 2018): CE + α·KL(p(x) ‖ p(x + r_vadv)) with
    r_vadv = ε·d/‖d‖₂, d the dominant eigenvector of the KL's curvature H = Jᵀ(diag p − ppᵀ)J
    found by ``power_iterations`` steps of the power method from a random direction. Seed 001
    §4.1 (4) uses ε = 2.1 (L2) after Miyato et al., with one iteration as theirs. Miyato et al.
    approximate H·d by the KL's gradient at r = ξd with ξ = 1e-6 (``xi = 1e-6``); in float32 that
    difference drowns in rounding (on the digits CNN the resulting direction raises the KL
    less than random noise of the same norm), so by default (``xi = None``) H·d is computed
    exactly, the ξ → 0 limit (a Jacobian-vector product by double back-propagation, then a
    vector-Jacobian product). The perturbed inputs are not clipped to [0, 1], as in the
    original."""

    id: ClassVar[str] = "vat"
    Config = VATConfig

    def virtual_adversarial(self, model: nn.Module, x: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
        """r_vadv: the direction that most changes the prediction, scaled to radius ε."""
        cfg = self.config
        x, d = x.detach(), _unit(torch.randn_like(x))
        for _ in range(cfg.power_iterations):
            if cfg.xi is None:
                d = _unit(_curvature_product(model, x, clean_logits, d))
                continue
            d = d.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_kl(clean_logits, model(x + cfg.xi * d)), d)
            d = _unit(grad)
        return cfg.eps * d.detach()

    def loss(self, model, x, y):
        logits = model(x)
        r_adv = self.virtual_adversarial(model, x, logits)
        lds = _kl(logits, model(x + r_adv))
        return F.cross_entropy(logits, y) + self.config.alpha * lds


@hookimpl
def arena_register_defenses(register):
    register(AdversarialTraining)
    register(FGSMAdversarialTraining)
    register(VAT)
