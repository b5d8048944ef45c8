"""Adaptive attacks: C&W-L2 strengthened against a defense (seed 000's restarts and gradient
expectation, Carlini & Wagner's detector-aware loss), and the wrappers ``eot``, ``bpda`` and
``repeated`` (:mod:`arena_builtins.attacks.adaptive_wrappers`). Every attack here has knowledge
``adaptive`` and takes from the defense only what the declared hooks give: ``model.randomized``,
``model.bpda_forward`` and, as ``self.context``, the detector with its ``score`` and
``threshold``.

The C&W variants reuse :mod:`arena_builtins.attacks.cw` (objective, Adam step, binary search).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from arena import hookimpl
from arena.attack import MinimalAttack, RunOutput
from arena.defense import DetectorDefense
from arena.errors import ConfigError
from arena.threat import Knowledge, Norm
from arena_builtins.attacks.adaptive_wrappers import BPDA, EOT, Repeated
from arena_builtins.attacks.cw import _NO_BOUND, CarliniWagnerL2, CWConfig, _Best, adam_step, cw_objective, update_const
from arena_builtins.attacks.gradient import random_start


def to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    """The C&W reference's box mapping of an image into the optimisation variable ``w``."""
    return torch.atanh((2 * x - 1) * 0.999999)


def on_sphere(x: torch.Tensor, radius: float) -> torch.Tensor:
    """``x + δ`` with ``δ`` uniform in direction and of L2 norm ``radius``, clipped to [0, 1]."""
    d = torch.randn_like(x)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + radius * d).clamp(0, 1)


def binary_search(attack: CarliniWagnerL2, model, x, w0, labels, targeted: bool, best: _Best) -> None:
    """C&W's search over ``c`` (as ``CarliniWagnerL2.run``) from the start point ``w0``; ``best``
    keeps each sample's smallest successful example across calls."""
    cfg, n = attack.config, x.shape[0]
    lo, hi = torch.zeros(n, device=x.device), torch.full((n,), _NO_BOUND, device=x.device)
    const = torch.full((n,), cfg.initial_const, device=x.device)
    for step in range(cfg.binary_search_steps):
        if cfg.binary_search_steps >= 10 and step == cfg.binary_search_steps - 1:
            const = hi.clone()
        found = attack._descend(model, x, w0, labels, const, targeted, best)
        lo, hi, const = update_const(found, lo, hi, const)


def new_best(x: torch.Tensor) -> _Best:
    n = x.shape[0]
    return _Best(torch.full((n,), float("inf"), device=x.device), x.clone(),
                 torch.zeros(n, dtype=torch.long, device=x.device))


class RestartsConfig(CWConfig):
    restarts: int = Field(10, ge=1, description="C&W runs; run 0 starts at x (seed 000: up to 400)")
    restart_norm: float = Field(1.0, gt=0, description="L2 norm of the random start of runs 1, 2, ...")


class CWRestarts(CarliniWagnerL2):
    """C&W-L2 with random restarts (seed 000, Vaknin et al., §IV-4 "Adaptive attacks", "Attack
    restarts with random initialization", Table II and Fig. 1a). Run 0 is plain C&W from
    ``x``; each further run starts from ``x + δ``, ``δ`` of L2 norm ``restart_norm`` in a uniformly
    random direction (clipped to [0, 1]), with a fresh binary search over ``c``. Distances are
    always measured from ``x``, and each sample keeps its smallest successful example over all
    runs, so the result is never worse than one start."""

    id: ClassVar[str] = "cw-restarts"
    knowledge: ClassVar[Knowledge] = Knowledge.ADAPTIVE
    Config = RestartsConfig

    def run(self, model, x, y, eps, targets):
        labels, best = targets if targets is not None else y, new_best(x)
        for r in range(self.config.restarts):
            start = x if r == 0 else on_sphere(x, self.config.restart_norm)
            binary_search(self, model, x, to_tanh_space(start), labels, targets is not None, best)
        return RunOutput(best.x, best.queries)


class SmoothedGradient(nn.Module):
    """Outputs the model's logits at ``x``; its backward pass averages the logits' input
    gradient over ``samples`` points uniform in the L2 ball of ``radius`` around ``x``."""

    def __init__(self, model: nn.Module, samples: int, radius: float) -> None:
        super().__init__()
        self.model, self.samples, self.radius = model, samples, radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.model(x)
        if not (torch.is_grad_enabled() and x.requires_grad):
            return z
        rep = x.repeat(self.samples, *([1] * (x.dim() - 1)))
        points = rep + (random_start(rep.detach(), Norm.L2, self.radius) - rep).detach()
        zbar = self.model(points).view(self.samples, x.shape[0], -1).mean(0)
        return z + zbar - zbar.detach()


class GradExpConfig(CWConfig):
    eot_samples: int = Field(10, ge=1, description="points per gradient (seed 000 Table II: 10)")
    eot_radius: float = Field(0.01, gt=0, description="L2 radius of the ball (seed 000 Table II: 0.01)")


class CWGradExp(CarliniWagnerL2):
    """C&W-L2 with gradient expectation over randomness (seed 000, Vaknin et al., §IV-4
    "Gradient expectation over randomness", Table II "C&W with Grad-Exp": 1,000 steps, κ = 0,
    10 samples, radius 0.01, and Fig. 1b). Each Adam step uses the network's input gradient
    averaged over ``eot_samples`` points drawn uniformly in the L2 ball of radius ``eot_radius``
    around the current iterate (straight through the [0, 1] clip); the loss value, the success
    check and the runner-up class in C&W's margin are those of the iterate itself."""

    id: ClassVar[str] = "cw-eot"
    knowledge: ClassVar[Knowledge] = Knowledge.ADAPTIVE
    Config = GradExpConfig

    def run(self, model, x, y, eps, targets):
        cfg = self.config
        out = super().run(SmoothedGradient(model, cfg.eot_samples, cfg.eot_radius), x, y, eps, targets)
        return RunOutput(out.x_adv, out.queries * (cfg.eot_samples + 1))


class WhiteBoxConfig(CWConfig):
    detector_weight: float = Field(1.0, gt=0, description="weight of the detector term (C&W 2017: 1)")
    detector_margin: float = Field(0.0, ge=0, description="score margin to reach below the threshold")


class CWWhiteBox(MinimalAttack):
    """C&W-L2 that must also evade a detector (Carlini and Wagner, "Adversarial Examples Are Not
    Easily Detected: Bypassing Ten Detection Methods", AISec 2017, §4 and §5.2 (density
    estimation); seed 003 §4.3 and Table 3, "C&W-wb"). Minimises
    ``||x'-x||² + c·(f(x') + detector_weight·relu(score(x') - threshold + detector_margin))``
    with C&W's margin ``f``, tanh box and binary search on ``c``, where ``score`` and
    ``threshold`` are the detector's (``context``, a DetectorDefense with a differentiable
    ``score``; anything else is a ConfigError). A sample keeps its smallest example that fools
    the classifier and is not flagged; one that never evades keeps its smallest classifier-only
    adversarial example (which the detector catches)."""

    id: ClassVar[str] = "cw-wb"
    norm: ClassVar[Norm] = Norm.L2
    knowledge: ClassVar[Knowledge] = Knowledge.ADAPTIVE
    Config = WhiteBoxConfig

    def run(self, model, x, y, eps, targets):
        detector = getattr(self, "context", None)
        if not isinstance(detector, DetectorDefense):
            raise ConfigError(f"attack '{self.id}' needs a detector defense as context, got "
                              f"{type(detector).__name__}")
        cfg, n = self.config, x.shape[0]
        labels, evade, fool = targets if targets is not None else y, new_best(x), new_best(x)
        w0 = to_tanh_space(x)
        lo, hi = torch.zeros(n, device=x.device), torch.full((n,), _NO_BOUND, device=x.device)
        const = torch.full((n,), cfg.initial_const, device=x.device)
        for step in range(cfg.binary_search_steps):
            if cfg.binary_search_steps >= 10 and step == cfg.binary_search_steps - 1:
                const = hi.clone()
            found = self._descend_wb(model, detector, x, w0, labels, const, targets is not None, evade, fool)
            lo, hi, const = update_const(found, lo, hi, const)
        keep = torch.isfinite(evade.dist).view(-1, *([1] * (x.dim() - 1)))
        return RunOutput(torch.where(keep, evade.x, fool.x), evade.queries)

    def _descend_wb(self, model, detector, x, w0, labels, const, targeted, evade, fool) -> torch.Tensor:
        """Adam on the joint objective for every sample; the batch stops early when every
        sample's loss fell by less than 0.01% over ``steps // 10`` iterations."""
        cfg = self.config
        w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        prev, interval = torch.full_like(const, float("inf")), max(1, cfg.steps // 10)
        for it in range(cfg.steps):
            loss, dist, success, x_new, grad = cw_objective(model, w, x, labels, const, cfg.confidence, targeted)
            penalty, score, pgrad = self._penalty(model, detector, w, const)
            evaded = success & (score <= detector.threshold)
            _record(evade, dist, evaded, x_new)
            _record(fool, dist, success, x_new)
            found |= evaded
            evade.queries += 2
            total = loss + penalty
            if cfg.abort_early and it % interval == 0:
                if it and bool((total > prev - 1e-4 * prev.abs()).all()):
                    break
                prev = total
            w = adam_step(w, m, v, grad + pgrad, cfg.lr, it + 1)
        return found

    def _penalty(self, model, detector: DetectorDefense, w: torch.Tensor, const: torch.Tensor):
        """``c·weight·relu(score - threshold + margin)``, the score, and the term's gradient in w."""
        cfg = self.config
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            score = detector.score(model, (torch.tanh(w) + 1) / 2)
        if not score.requires_grad:
            raise ConfigError(f"attack '{self.id}': detector '{detector.id}' has no differentiable score")
        excess = torch.relu(score - detector.threshold + cfg.detector_margin)
        penalty = const * cfg.detector_weight * excess
        (grad,) = torch.autograd.grad(penalty.sum(), w)
        return penalty.detach(), score.detach(), grad


def _record(best: _Best, dist: torch.Tensor, ok: torch.Tensor, x_new: torch.Tensor) -> None:
    better = ok & (dist < best.dist)
    best.dist = torch.where(better, dist, best.dist)
    best.x = torch.where(better.view(-1, *([1] * (x_new.dim() - 1))), x_new, best.x)


ATTACKS: tuple[type, ...] = (EOT, BPDA, Repeated, CWRestarts, CWGradExp, CWWhiteBox)


@hookimpl
def arena_register_attacks(register: Any) -> None:
    for cls in ATTACKS:
        register(cls)
