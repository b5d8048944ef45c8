"""Input-gradient regularisers: Jacobian (seed 002 eq. 4), input gradient (eq. 5) and
cross-Lipschitz (eq. 6), each optionally combined with adversarial training.

Each loss is ``CE + λ·R`` with R computed by double back-propagation (the gradient w.r.t. the
input is built with ``create_graph=True`` and differentiated again w.r.t. the weights). R is
averaged over the batch, so λ does not depend on the batch size. Seed 002 applies them as
post-processing of a trained model (Adam, lr 1e-4): in a tournament, ``finetune_from`` an
entry's model.

``adversarial = {attack = "pgd", eps = 0.3, ratio = 0.5}`` adds adversarial training (seed 002's
"& Adversarial Training" rows): the cross-entropy becomes ``(1 − r)·CE(x) + r·CE(x_adv)``
while R stays on the clean inputs, where seed 002 §5 found it works best.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from arena import hookimpl
from arena.defense import TrainingConfig, TrainingDefense
from arena.metrics import logit_jacobian
from arena_builtins.defenses.adversarial import AdversarialGenerator, AdversarialSpec


def jacobian_sq_norm(logits: torch.Tensor, x: torch.Tensor, projections: int | None = None) -> torch.Tensor:
    """Per-sample ‖J(xᵢ)‖²_F of ``logits`` w.r.t. ``x``, differentiable (double backprop).

    ``projections=None``: exact, K vector-Jacobian products in one batched call.
    ``projections=n``: the unbiased estimator of Hoffman et al. ("Robust Learning with Jacobian
    Regularization", 2019): ‖J‖²_F = K·E_v ‖vᵀJ‖² for v uniform on the unit sphere of R^K,
    averaged over n random v per sample (one backward pass each).
    """
    n, k = logits.shape
    if projections is None:
        return logit_jacobian(logits, x, create_graph=True).flatten(1).pow(2).sum(dim=1)
    v = torch.randn(projections, n, k, device=logits.device, dtype=logits.dtype)
    v = v / v.norm(dim=2, keepdim=True)
    if projections == 1:
        (g,) = torch.autograd.grad(logits, x, v[0], create_graph=True)
        return k * g.flatten(1).pow(2).sum(dim=1)
    (g,) = torch.autograd.grad(logits, x, v, is_grads_batched=True, create_graph=True)
    return k * g.flatten(2).pow(2).sum(dim=2).mean(dim=0)


def jacobian_penalty(logits: torch.Tensor, x: torch.Tensor, projections: int | None = None,
                     form: str = "hoffman") -> torch.Tensor:
    """The Jacobian regulariser on a batch of N samples, in one of three forms with different λ:

    * ``form="hoffman"`` (default): ½·(1/N) Σᵢ ‖J(xᵢ)‖²_F, the ``JacobianReg`` criterion of
      Hoffman et al.'s implementation (facebookresearch/jacobian_regularizer, "computes (1/2)
      tr |dy/dx|^2": R = ½·Σ_proj K‖vᵀJ‖² / (n_proj·N), added to the batch-mean cross-entropy as
      ``loss = CE + lambda_JR * R``). Seed 000 takes its Jacobian term "as implemented in [14]"
      (§III-C), so its Table I λ (0.01 / 0.1) weighs this ½.
    * ``form="eq4"``: seed 002 eq. 4's √(Σᵢ ‖J(xᵢ)‖²_F) divided by N (eq. 4 adds λ·√(Σ ‖J‖²_F)
      to a cross-entropy summed over the samples; dividing both by N puts it next to the mean
      one), with seed 002's λ (0.1 / 0.5). Eq. 4 sums over the training examples and §4 trains
      on mini-batches (500 / 128), so the sum is taken over the batch. Had the authors averaged
      the cross-entropy instead (as the TensorFlow tutorial their MNIST network comes from
      does) while keeping the square root of the batch sum, their λ would weigh √N times more
      than here; the paper's equation is followed.
    * ``form="eq4-mean"``: that other reading, √(Σᵢ ‖J(xᵢ)‖²_F) over the batch, not divided by N,
      next to the batch-mean cross-entropy (√N times the eq4 form at the same λ). With eq. 4 as
      printed, λ = 0.1 at batches of 500 leaves ‖J‖_F where training alone puts it on
      Fashion-MNIST, where seed 002's Table 1 reports a 4.4-fold drop (docs/reproductions.md)."""
    sq = jacobian_sq_norm(logits, x, projections)
    if form == "eq4":
        return sq.sum().clamp_min(1e-24).sqrt() / sq.shape[0]
    if form == "eq4-mean":
        return sq.sum().clamp_min(1e-24).sqrt()
    if form != "hoffman":
        raise ValueError(f"unknown Jacobian penalty form {form!r}: 'hoffman', 'eq4' or 'eq4-mean'")
    return 0.5 * sq.mean()


def input_gradient_penalty(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Seed 002 eq. 5 (Ross & Doshi-Velez 2018): mean over the batch of ‖∇ₓ CE(xᵢ, yᵢ)‖²₂."""
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, create_graph=True)
    return g.flatten(1).pow(2).sum(dim=1).mean()


def cross_lipschitz_penalty(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Seed 002 eq. 6 (Hein & Andriushchenko 2017): (1/(N K²)) Σᵢ Σ_{k,j} ‖∇z_k − ∇z_j‖²,
    computed as 2K·Σ_k ‖∇z_k‖² − 2‖Σ_k ∇z_k‖² from the exact Jacobian."""
    k = logits.shape[1]
    jac = logit_jacobian(logits, x, create_graph=True).flatten(2)
    pairs = 2 * k * jac.pow(2).sum(dim=(1, 2)) - 2 * jac.sum(dim=1).pow(2).sum(dim=1)
    return pairs.mean() / k**2


class PresetConfig(TrainingConfig):
    """A config whose ``preset`` fills in a paper's settings; fields given explicitly win."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in cls.presets:
            return {**cls.presets[data["preset"]], **data}
        return data


class RegularizerConfig(PresetConfig):
    lam: float = Field(0.1, ge=0, description="weight λ of the regulariser")
    adversarial: AdversarialSpec | None = Field(None, description="add adversarial training (seed 002 '& AT')")


class GradientRegularizer(TrainingDefense):
    """Shared loop of the three regularisers: CE (or the adversarial mix) + λ·penalty."""

    Config = RegularizerConfig

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        spec = self.config.adversarial
        self.generator = AdversarialGenerator(spec) if spec is not None and spec.ratio > 0 else None

    def penalty(self, logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self.generator.examples(model, x, y) if self.generator is not None else None
        x = x.detach().requires_grad_(True)
        logits = model(x)
        reg = self.penalty(logits, x, y) if self.config.lam > 0 else logits.new_zeros(())
        if x_adv is None:
            ce = F.cross_entropy(logits, y)
        else:
            ce = self.generator.mixed_loss(model, x, y, x_adv, clean_logits=logits)
        return ce + self.config.lam * reg


class JacobianConfig(RegularizerConfig):
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "seed002-mnist": {"lam": 0.1, "form": "eq4", "batch_size": 500},
        "seed002-cifar10": {"lam": 0.5, "form": "eq4", "batch_size": 128, "optimizer": "rmsprop"},
        "seed000-mnist": {"lam": 0.01, "form": "hoffman", "finetune_epochs": 20, "finetune_lr": 1e-4},
        "seed000-cifar10": {"lam": 0.1, "form": "hoffman", "finetune_epochs": 100, "finetune_lr": 1e-4},
    }
    preset: Literal["seed002-mnist", "seed002-cifar10", "seed000-mnist", "seed000-cifar10"] | None = None
    projections: int | None = Field(None, ge=1,
                                    description="None: exact; n: Hoffman et al.'s n random projections")
    form: Literal["hoffman", "eq4", "eq4-mean"] = Field("hoffman", description=(
        "λ·½·mean ‖J‖²_F (Hoffman et al.'s JacobianReg, seed 000), seed 002 eq. 4's λ·√Σ‖J‖²_F / N, "
        "or eq4-mean: λ·√Σ‖J‖²_F over the batch next to the mean cross-entropy (eq. 4 with the CE averaged)"))


class JacobianRegularization(GradientRegularizer):
    """Jacobian regularisation of the logits w.r.t. the input, in the two forms the papers use
    (λ means something different in each, see :func:`jacobian_penalty`):

    * ``form = "hoffman"`` (the default): CE + λ·½·(1/N) Σᵢ ‖J(xᵢ)‖²_F, exactly the criterion of
      Hoffman, Roberts and Yaida's implementation ("Robust Learning with Jacobian
      Regularization", 2019; ``JacobianReg`` returns ½ tr(JᵀJ) averaged over the batch), which
      seed 000 uses ("jacobian reg - The Jacobian regularization loss as implemented in [14]",
      §III-C). Seed 000 writes no equation of its own, so its Table I λ is Hoffman's λ_JR:
      with the ½, λ = 0.01 here is λ_JR = 0.01 there (without it, λ would weigh twice as much).
    * ``form = "eq4"``: seed 002 (Jakubovitz & Giryes, ECCV 2018) §2 eq. 4,
      λ·√(Σᵢ ‖J(xᵢ)‖²_F) next to a summed cross-entropy, both divided by the batch size.

    Exact with K backward passes, or the random-projection estimator of Hoffman et al. with
    ``projections = n``. Presets: ``seed002-mnist`` / ``-cifar10`` (eq. 4, λ = 0.1 / 0.5,
    batches of 500 / 128, §4) and ``seed000-mnist`` / ``-cifar10`` (Hoffman's form; Table I:
    λ = 0.01 / 0.1, 20 / 100 fine-tuning epochs at lr 1e-4). ``adversarial`` adds adversarial
    training (seed 002's "Jacobian regularization & Adversarial Training")."""

    id: ClassVar[str] = "jacobian-reg"
    Config = JacobianConfig

    def penalty(self, logits, x, y):
        return jacobian_penalty(logits, x, self.config.projections, self.config.form)


class InputGradientConfig(RegularizerConfig):
    lam: float = Field(1.0, ge=0, description="weight λ of ‖∇ₓ CE‖²")


class InputGradientRegularization(GradientRegularizer):
    """Input gradient regularisation (Ross & Doshi-Velez, AAAI 2018), the comparison of seed 002
    §2 eq. 5: CE + λ·‖∇ₓ CE(x, y)‖²₂ averaged over the batch. ``adversarial`` adds adversarial
    training (seed 002 Tables 3-4, "Input Gradient regularization & Adversarial Training")."""

    id: ClassVar[str] = "input-gradient-reg"
    Config = InputGradientConfig

    def penalty(self, logits, x, y):
        return input_gradient_penalty(logits, x, y)


class CrossLipschitzConfig(RegularizerConfig):
    lam: float = Field(0.5, ge=0, description="weight λ of the mean pairwise gradient distance")


class CrossLipschitzRegularization(GradientRegularizer):
    """Cross-Lipschitz regularisation (Hein & Andriushchenko, NeurIPS 2017), the comparison of
    seed 002 §2 eq. 6: CE + λ/(N K²) Σᵢ Σ_{k,j} ‖∇ₓz_k(xᵢ) − ∇ₓz_j(xᵢ)‖²₂ on the logits,
    computed from the exact Jacobian. ``adversarial`` adds adversarial training."""

    id: ClassVar[str] = "cross-lipschitz-reg"
    Config = CrossLipschitzConfig

    def penalty(self, logits, x, y):
        return cross_lipschitz_penalty(logits, x)


@hookimpl
def arena_register_defenses(register):
    register(JacobianRegularization)
    register(InputGradientRegularization)
    register(CrossLipschitzRegularization)
