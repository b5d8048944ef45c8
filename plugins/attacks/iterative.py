"""FGSM's relatives: the basic iterative method, Random + FGSM, and the minimal-ε FGSM search.

All three reuse the gradient machinery of :mod:`arena_builtins.attacks.gradient` (``loss_gradient``,
``steepest_step`` and, for BIM, PGD itself) instead of copying it.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from arena import hookimpl
from arena.attack import FixedBudgetAttack, MinimalAttack, RunOutput
from arena.plugin import PluginConfig
from arena.threat import L2OrLinf, Norm
from arena_builtins.attacks.gradient import PGD, loss_gradient, steepest_step
from arena_builtins.attacks.losses import Loss

# Largest number of input elements (candidates × features) evaluated in one forward pass.
_CANDIDATE_BUDGET = 1 << 22


class BIMConfig(PluginConfig):
    norm: L2OrLinf = Norm.LINF
    steps: int = Field(10, ge=1, description="iterations (seed 003 Table 5: 10)")
    step_size: float | None = Field(None, gt=0, description="absolute step α; default ε / steps")
    loss: Loss = Field("ce", description="the objective, as PGD's: ce, margin or dlr")
    early_stop: bool = Field(True, description="as PGD's: a sample stops at its first adversarial iterate")


class BIM(FixedBudgetAttack):
    """Basic Iterative Method (Kurakin, Goodfellow and Bengio, "Adversarial examples in the
    physical world", ICLR workshop 2017, §2.2): FGSM repeated with a small step α, the iterate
    clipped to the ε-ball and to [0, 1] after every step, starting at x (no random start).

    Kurakin et al. use α = 1/255 and min(255ε + 4, 1.25·255ε) iterations; the arena follows
    seed 003 (Table 5: BIM with 10 iterations) with α = ε / steps by default. L∞ (sign steps)
    or L2 (normalised gradient steps). It runs PGD's loop with ``random_start=False``.
    """

    id: ClassVar[str] = "bim"
    Config = BIMConfig

    def run(self, model, x, y, eps, targets):
        cfg = self.config
        step = cfg.step_size if cfg.step_size is not None else eps / cfg.steps
        pgd = PGD(norm=cfg.norm, steps=cfg.steps, step_size=step, random_start=False, restarts=1,
                  early_stop=cfg.early_stop, loss=cfg.loss)
        return pgd.run(model, x, y, eps, targets)


class RandFGSMConfig(PluginConfig):
    alpha: float = Field(0.05, gt=0, description="size α of the random sign step (seed 001: 0.05)")


class RandFGSM(FixedBudgetAttack):
    """Random + FGSM, L∞ (Tramèr et al., "Ensemble Adversarial Training: Attacks and Defenses",
    ICLR 2018, §4.1 eq. 7; seed 001 §4.1 (2) with α = 0.05).

    x' = clip(x + α·sign(N(0, I))), then x_adv = clip(x' + (ε − α)·sign(∇ₓ' J(x', y))): the
    random step is deducted from the FGSM budget. Seed 001 describes the first step as
    "Gaussian noise within a range of α"; we take Tramèr's α·sign(N(0, I)), which is exactly
    within range α. When ε ≤ α (where seed 001's curve is pure noise, its Figure 5 note) we fall
    back to Tramèr's own choice α = ε / 2, so small budgets still get a gradient step.
    """

    id: ClassVar[str] = "rand-fgsm"
    norm: ClassVar[Norm] = Norm.LINF
    Config = RandFGSMConfig

    def run(self, model, x, y, eps, targets):
        alpha = self.config.alpha if eps > self.config.alpha else eps / 2
        x_rand = (x + alpha * torch.randn_like(x).sign()).clamp(0, 1)
        grad = loss_gradient(model, x_rand, y, targets)
        x_adv = (x_rand + steepest_step(grad, Norm.LINF, eps - alpha)).clamp(0, 1)
        return RunOutput(x_adv, torch.ones(x.shape[0], dtype=torch.long, device=x.device))


_GRID_DEFAULTS = {Norm.LINF: (0.01, 1.0), Norm.L2: (0.05, 10.0)}


class FGSMMinimalConfig(PluginConfig):
    norm: L2OrLinf = Norm.LINF
    eps_step: float | None = Field(None, gt=0,
                                   description="grid spacing; default 0.01 (L∞), 0.05 (L2)")
    max_eps: float | None = Field(None, gt=0,
                                  description="largest ε tried; default 1 (L∞), 10 (L2)")


class FGSMMinimal(MinimalAttack):
    """Minimal-ε FGSM (seed 001 §4.4: "crafted incrementally using FGSM with small
    perturbations, and the algorithm stops when the prediction changes"; FGSM from Goodfellow
    et al., ICLR 2015).

    One gradient at x gives the FGSM direction (sign in L∞, unit gradient in L2); each sample
    gets the smallest ε = k·eps_step ≤ max_eps on that ray whose (clipped) point fools the
    model, i.e. the first grid point where the prediction changes. All grid points are
    evaluated batched, in memory-bounded chunks, and found samples leave the batch. Queries: one
    gradient plus every grid point evaluated. Seed 001's empirical robustness ρ (eq. 2) is the
    L2 norm of ``x_adv − x`` over ‖x‖₂ on these examples.
    """

    id: ClassVar[str] = "fgsm-minimal"
    Config = FGSMMinimalConfig

    def grid(self) -> torch.Tensor:
        """The budgets tried, ``eps_step, 2·eps_step, ..., ≤ max_eps`` (float64)."""
        step, top = _GRID_DEFAULTS[self.threat_norm]
        step = self.config.eps_step or step
        top = self.config.max_eps or top
        count = max(1, math.floor(top / step + 1e-9))
        return step * torch.arange(1, count + 1, dtype=torch.float64)

    def run(self, model, x, y, eps, targets):
        direction = steepest_step(loss_gradient(model, x, y, targets), self.threat_norm, 1.0)
        grid = self.grid().to(device=x.device, dtype=x.dtype)
        x_adv, queries = x.clone(), torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        active = torch.arange(x.shape[0], device=x.device)
        start = 0
        while start < grid.numel() and active.numel():
            chunk = max(1, _CANDIDATE_BUDGET // (active.numel() * x[0].numel()))
            eps_c = grid[start:start + chunk]
            start += eps_c.numel()
            goal = None if targets is None else targets[active]
            found, first, cand = _first_fooling(model, x[active], direction[active], eps_c,
                                                y[active], goal)
            queries[active] += eps_c.numel()
            x_adv[active[found]] = cand[found, first[found]]
            active = active[~found]
        return RunOutput(x_adv, queries)


def _first_fooling(model, x, direction, eps, y, targets):
    """Evaluate ``x + eps_j·direction`` for every budget in ``eps``; per sample: whether any
    fools, the index of the first that does, and the candidates ``(n, m, ...)``."""
    n, m = x.shape[0], eps.numel()
    view = (1, m) + (1,) * (x.dim() - 1)
    cand = (x.unsqueeze(1) + eps.view(view) * direction.unsqueeze(1)).clamp(0, 1)
    with torch.no_grad():
        pred = model(cand.flatten(0, 1)).argmax(dim=1).view(n, m)
    fooled = pred == targets.unsqueeze(1) if targets is not None else pred != y.unsqueeze(1)
    return fooled.any(dim=1), fooled.to(torch.uint8).argmax(dim=1), cand


@hookimpl
def arena_register_attacks(register):
    register(BIM)
    register(RandFGSM)
    register(FGSMMinimal)
