"""The papers' measurements as metric plugins, each a thin layer over :mod:`arena.metrics`.

Per model (on the evaluated clean samples): the mean Frobenius norm of the logits' Jacobian
(seed 002), the local loss sensitivity (seed 001) and the Davies–Bouldin index of the embedding
(seed 003). Per match (on its adversarial examples): the empirical robustness ρ (seed 001 eq. 2,
seed 002's ρ_adv), the Jacobian norm at the examples (seed 002), the distance to the training
set (seed 001), a detector's ROC-AUC (seed 003 Table 2), the per-pixel distortion (seed 003
Table 3) and 1 − P(exploitable space) (seed 004 §2).
"""
from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from arena import hookimpl
from arena import metrics as m
from arena.metric import MatchInputs, Metric, ModelInputs, NotApplicable, Scope
from arena.model import frozen
from arena.plugin import PluginConfig


class OnConfig(PluginConfig):
    on: Literal["model", "base"] = Field("model", description="the defended model (what attacks face) or its "
                                         "base classifier without inference-time parts")
    samples: int | None = Field(None, ge=1, description="measure on the first N samples only (None: all)")


def _subject(metric: Metric, inputs: ModelInputs):
    return inputs.model if metric.config.on == "model" else inputs.base


def _first(t: torch.Tensor, n: int | None) -> torch.Tensor:
    return t if n is None else t[:n]


def _broken(inputs: MatchInputs, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean inputs and examples of the rows that broke the model; NotApplicable if none."""
    ok = inputs.broken.bool()
    if not bool(ok.any()):
        raise NotApplicable(f"{inputs.attack} broke no sample of '{inputs.defense}' at this budget: no {what}")
    return inputs.x_rows[ok], inputs.x_adv[ok]


# ------------------------------------------------------------------------ per model

class JacobianNorm(Metric):
    """Mean Frobenius norm of the logits' Jacobian, (1/N) Σᵢ ‖∂z/∂x (xᵢ)‖_F, on the evaluated
    clean samples (seed 002, Table 1, the ‖J‖_F column; exact, K backward passes)."""

    id: ClassVar[str] = "jacobian-norm"
    scope: ClassVar[Scope] = Scope.MODEL
    better: ClassVar[str | None] = "lower"
    Config = OnConfig

    def measure(self, inputs: ModelInputs) -> float:
        x = _first(inputs.x, self.config.samples).to(inputs.device)
        return m.mean_jacobian_frobenius(_subject(self, inputs), x)


class LossSensitivity(Metric):
    """Local loss sensitivity, the mean ‖∇ₓ CE(θ, xᵢ, yᵢ)‖₂ over the evaluated clean samples
    (seed 001, §4 and Table 3)."""

    id: ClassVar[str] = "loss-sensitivity"
    scope: ClassVar[Scope] = Scope.MODEL
    better: ClassVar[str | None] = "lower"
    Config = OnConfig

    def measure(self, inputs: ModelInputs) -> float:
        n = self.config.samples
        x, y = _first(inputs.x, n).to(inputs.device), _first(inputs.y, n).to(inputs.device)
        return m.loss_sensitivity(_subject(self, inputs), x, y)


class DaviesBouldinConfig(PluginConfig):
    samples: int | None = Field(None, ge=2, description="measure on the first N samples only (None: all)")


class DaviesBouldin(Metric):
    """Davies–Bouldin index of the embedding layer (``model.features``) of the evaluated clean
    samples grouped by their labels: lower means tighter, better separated classes (seed 003,
    §3.4, Figure 2: PDM's combined loss gives the lowest, 0.23)."""

    id: ClassVar[str] = "davies-bouldin"
    scope: ClassVar[Scope] = Scope.MODEL
    needs: ClassVar[frozenset[str]] = frozenset({"features"})
    better: ClassVar[str | None] = "lower"
    Config = DaviesBouldinConfig

    def measure(self, inputs: ModelInputs) -> float:
        n = self.config.samples
        x, y = _first(inputs.x, n).to(inputs.device), _first(inputs.y, n)
        classes = len(set(y.tolist()))
        if classes < 2:
            raise NotApplicable("the Davies–Bouldin index needs samples of at least two classes")
        if classes >= len(y):
            raise NotApplicable(f"the Davies–Bouldin index needs more samples than classes ({len(y)} samples "
                                f"of {classes} classes)")
        with frozen(inputs.base) as base, torch.no_grad():
            z = torch.cat([base.features(x[i:i + 256]).flatten(1).cpu() for i in range(0, len(x), 256)])
        return m.davies_bouldin(z, y)


# ------------------------------------------------------------------------ per match

class NoConfig(PluginConfig):
    pass


class EmpiricalRobustness(Metric):
    """Empirical robustness ρ = mean over the broken samples of ‖x_adv − x‖₂ / ‖x‖₂ (seed 001
    eq. 2; seed 002's ρ_adv with DeepFool's minimal perturbations): enter it on a minimal attack
    at budget ∞, where the examples are the attack's own. Always the L2 norm, as both papers."""

    id: ClassVar[str] = "empirical-robustness"
    scope: ClassVar[Scope] = Scope.MATCH
    better: ClassVar[str | None] = "higher"
    Config = NoConfig

    def measure(self, inputs: MatchInputs) -> float:
        x, x_adv = _broken(inputs, "perturbation to measure")
        return m.empirical_robustness(x, x_adv, torch.ones(len(x), dtype=torch.bool))


class JacobianNormAdversarial(Metric):
    """Mean Frobenius norm of the logits' Jacobian at the match's adversarial examples (seed 002,
    Table 1, ‖J‖_F measured on the perturbed inputs), over the examples that broke the model."""

    id: ClassVar[str] = "jacobian-norm-adv"
    scope: ClassVar[Scope] = Scope.MATCH
    better: ClassVar[str | None] = "lower"
    Config = OnConfig

    def measure(self, inputs: MatchInputs) -> float:
        _, x_adv = _broken(inputs, "example to measure at")
        return m.mean_jacobian_frobenius(_subject(self, inputs), _first(x_adv, self.config.samples).to(inputs.device))


class TrainingSetDistance(Metric):
    """Mean L2 distance from each adversarial example that broke the model to its nearest
    training sample (seed 001, Table 2: examples against a robust model lie farther from the
    data)."""

    id: ClassVar[str] = "training-set-distance"
    scope: ClassVar[Scope] = Scope.MATCH
    needs: ClassVar[frozenset[str]] = frozenset({"train"})
    better: ClassVar[str | None] = "higher"
    Config = NoConfig

    def measure(self, inputs: MatchInputs) -> float:
        _, x_adv = _broken(inputs, "example to measure from")
        return m.training_set_distance(x_adv, inputs.train.x)


class DetectionAUC(Metric):
    """ROC-AUC of the entrant's detector separating the match's adversarial examples from their
    clean originals (seed 003, Table 2; equally sized groups, as §4.2): the examples are those
    that fool the classifier, whether or not the detector flags them; 1 is perfect detection,
    0.5 chance. Needs a detector entrant."""

    id: ClassVar[str] = "detection-auc"
    scope: ClassVar[Scope] = Scope.MATCH
    needs: ClassVar[frozenset[str]] = frozenset({"detector"})
    better: ClassVar[str | None] = "higher"
    Config = NoConfig

    def measure(self, inputs: MatchInputs) -> float:
        model, dev = inputs.model, inputs.device
        with torch.no_grad():
            pred = model(inputs.x_adv.to(dev)).argmax(1).cpu()
        goal = inputs.targets.cpu() if inputs.targets is not None else None
        fools = (pred == goal) if goal is not None else (pred != inputs.y_rows.cpu())
        if not bool(fools.any()):
            raise NotApplicable(f"no example of {inputs.attack} fools the classifier of '{inputs.defense}'")
        clean, adv = inputs.x_rows[fools].to(dev), inputs.x_adv[fools].to(dev)
        with torch.no_grad():
            return m.detection_auc(inputs.detector.score(model, clean), inputs.detector.score(model, adv))


class Distortion(Metric):
    """Mean per-pixel distortion of the examples that broke the model, (1/M) Σᵢ ‖δᵢ‖₂ / √n with n
    the number of input values (seed 003, Table 3, "scaled to [0, 1]"; the C&W-wb distortion a
    detector forces)."""

    id: ClassVar[str] = "distortion"
    scope: ClassVar[Scope] = Scope.MATCH
    better: ClassVar[str | None] = "higher"
    Config = NoConfig

    def measure(self, inputs: MatchInputs) -> float:
        x, x_adv = _broken(inputs, "distortion to measure")
        return float(((x_adv - x).flatten(1).norm(dim=1) / math.sqrt(x[0].numel())).mean())


class ExploitableRobustness(Metric):
    """1 − P(exploitable space) at the match's budget (seed 004 §2): the share of evaluated
    samples neither misclassified clean nor broken by the attack (an upper bound, since the
    attack finds only part of the exploitable space; it equals the robust accuracy)."""

    id: ClassVar[str] = "exploitable-robustness"
    scope: ClassVar[Scope] = Scope.MATCH
    better: ClassVar[str | None] = "higher"
    Config = NoConfig

    def measure(self, inputs: MatchInputs) -> float:
        broken = torch.zeros(len(inputs.clean_correct), dtype=torch.bool)
        broken[inputs.row_sample[inputs.broken.bool()]] = True
        return m.exploitable_robustness(broken, inputs.clean_correct)


@hookimpl
def arena_register_metrics(register):
    for cls in (JacobianNorm, LossSensitivity, DaviesBouldin, EmpiricalRobustness, JacobianNormAdversarial,
                TrainingSetDistance, DetectionAUC, Distortion, ExploitableRobustness):
        register(cls)
