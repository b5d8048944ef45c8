"""Gradient attacks with a fixed budget: FGSM and PGD, each in L∞ and L2."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from arena import hookimpl
from arena.attack import FixedBudgetAttack, RunOutput
from arena.plugin import PluginConfig
from arena.threat import Norm


def loss_gradient(model, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Gradient of the attacker's objective w.r.t. the input: ascend CE(y) or descend CE(target)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    if targets is None:
        loss = F.cross_entropy(logits, y, reduction="sum")
    else:
        loss = -F.cross_entropy(logits, targets, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def steepest_step(grad: torch.Tensor, norm: Norm, size: float | torch.Tensor) -> torch.Tensor:
    """The step of length ``size`` in ``norm`` that increases a linear objective the most."""
    if norm is Norm.LINF:
        return size * grad.sign()
    flat = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return size * grad / flat.view(-1, *([1] * (grad.dim() - 1)))


def random_start(x: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """A uniform random point of the ε-ball around ``x`` (clipped to [0, 1])."""
    if norm is Norm.LINF:
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        direction = torch.randn_like(x)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        radius = eps * torch.rand(x.shape[0], device=x.device) ** (1.0 / x[0].numel())
        delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
    return (x + delta).clamp(0, 1)


class FGSMConfig(PluginConfig):
    norm: Norm = Norm.LINF


class FGSM(FixedBudgetAttack):
    """Fast Gradient Sign Method (Goodfellow et al., 2015), in L∞ (sign) and L2 (normalised
    gradient). Seed 001 §4.1 (1) and seed 003 use it with ε from 0.01 to 1."""

    id: ClassVar[str] = "fgsm"
    Config = FGSMConfig

    def run(self, model, x, y, eps, targets):
        grad = loss_gradient(model, x, y, targets)
        x_adv = (x + steepest_step(grad, self.threat_norm, eps)).clamp(0, 1)
        return RunOutput(x_adv, torch.ones(x.shape[0], dtype=torch.long, device=x.device))


class PGDConfig(PluginConfig):
    norm: Norm = Norm.LINF
    steps: int = Field(40, ge=1)
    step_size: float | None = Field(None, gt=0, description="absolute step; default rel_step_size·ε")
    rel_step_size: float = Field(2.5 / 40, gt=0)
    random_start: bool = True
    restarts: int = Field(1, ge=1)


class PGD(FixedBudgetAttack):
    """Projected Gradient Descent (Madry et al., 2018) in L∞ or L2, with random start and
    restarts; a sample keeps the first restart that fools the model. Seed 000 Table II runs it
    with a random start, ε-iter 0.01 and 1,000 iterations (``steps=1000, step_size=0.01``)."""

    id: ClassVar[str] = "pgd"
    Config = PGDConfig

    def run(self, model, x, y, eps, targets):
        cfg, norm = self.config, self.threat_norm
        alpha = cfg.step_size if cfg.step_size is not None else cfg.rel_step_size * eps
        best = x
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for restart in range(cfg.restarts):
            x_adv = random_start(x, norm, eps) if cfg.random_start else x.clone()
            for _ in range(cfg.steps):
                grad = loss_gradient(model, x_adv, y, targets)
                x_adv = x_adv + steepest_step(grad, norm, alpha)
                x_adv = (x + norm.project(x_adv - x, eps)).clamp(0, 1)
            with torch.no_grad():
                pred = model(x_adv).argmax(dim=1)
            fooled = pred == targets if targets is not None else pred != y
            take = (fooled & ~found) if restart else torch.ones_like(found)
            best = torch.where(take.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
            found |= fooled
        queries = torch.full((x.shape[0],), cfg.restarts * (cfg.steps + 1), dtype=torch.long, device=x.device)
        return RunOutput(best, queries)


@hookimpl
def arena_register_attacks(register):
    register(FGSM)
    register(PGD)
