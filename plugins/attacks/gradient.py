"""Gradient attacks with a fixed budget: FGSM and PGD, each in L∞ and L2."""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from arena import hookimpl
from arena.attack import FixedBudgetAttack, RunOutput
from arena.plugin import PluginConfig
from arena.threat import L2OrLinf, Norm
from arena_builtins.attacks.losses import Loss, attack_loss


def loss_gradient(model, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Gradient of the attacker's objective w.r.t. the input: ascend CE(y) or descend CE(target)."""
    return logits_and_gradient(model, x, y, targets)[1]


def logits_and_gradient(model, x: torch.Tensor, y: torch.Tensor,
                        targets: torch.Tensor | None, loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits at ``x`` (detached) and the gradient of the attacker's objective
    (``loss``: ce, margin or dlr; :mod:`arena_builtins.attacks.losses`)."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    if loss == "ce":  # the common case, without the per-sample detour
        value = (F.cross_entropy(logits, y, reduction="sum") if targets is None
                 else -F.cross_entropy(logits, targets, reduction="sum"))
    else:
        value = attack_loss(logits, y, targets, loss).sum()
    (grad,) = torch.autograd.grad(value, x)
    return logits.detach(), grad


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
    norm: L2OrLinf = Norm.LINF


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
    norm: L2OrLinf = Field(Norm.LINF, description="the threat norm: linf or l2")
    steps: int = Field(40, ge=1, description="gradient steps per restart")
    step_size: float | None = Field(None, gt=0, description="absolute step; default rel_step_size·ε")
    rel_step_size: float = Field(2.5 / 40, gt=0, description="step as a fraction of ε when "
                                 "step_size is not given (2.5/40: Madry et al.'s 2.5·ε/steps "
                                 "at 40 steps)")
    random_start: bool = Field(True, description="start each restart at a uniform random point "
                               "of the ε-ball (off: every restart starts at the clean input)")
    restarts: int = Field(1, ge=1, description="independent runs; later ones attack only the "
                          "samples not fooled yet")
    loss: Loss = Field("ce", description="the objective: ce (cross-entropy), margin (C&W's "
                       "logit margin) or dlr (Croce & Hein's scale-invariant logit ratio); "
                       "targeted runs use each one's targeted form")
    early_stop: bool = Field(True, description="a sample leaves the batch at its first "
                             "adversarial iterate and keeps it (off: every sample runs all steps)")


class PGD(FixedBudgetAttack):
    """Projected Gradient Descent (Madry et al., 2018) in L∞ or L2, with random start and
    restarts; a sample keeps the first restart that fools the model, and later restarts only
    run on the samples not fooled yet. Seed 000 Table II runs it with a random start, ε-iter
    0.01 and 1,000 iterations (``steps=1000, step_size=0.01``). ``loss`` picks the objective:
    cross-entropy (Madry et al.), the C&W margin (Carlini & Wagner, 2017, §V, f6 on logits) or
    DLR (Croce & Hein, 2020, Eq. 5, and Eq. 6 when targeted); each has a targeted form, used
    when the caller gives targets.

    Speed: each step is one forward and one backward pass over the samples still being
    attacked. The forward pass that feeds the gradient also tells which iterates already fool
    the model; with ``early_stop`` (the default) those samples keep that iterate and leave the
    batch, so the work shrinks as the attack succeeds. Early stopping is skipped against a model
    that declares ``randomized`` (one call's answer is not the judge's), and the tournament turns
    it off when crafting on another model than the judged one (transfer, gray-box, substitute:
    ``arena.attack.off_target``). On a GPU the batch is compacted every
    eight steps (a host sync), with frozen rows masked in between; on the CPU at every step.
    """

    id: ClassVar[str] = "pgd"
    Config = PGDConfig

    def run(self, model, x, y, eps, targets):
        cfg = self.config
        n = x.shape[0]
        best = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        queries = torch.zeros(n, dtype=torch.long, device=x.device)
        for restart in range(cfg.restarts):
            rows = (~found).nonzero().squeeze(1) if restart else torch.arange(n, device=x.device)
            if not rows.numel():
                break
            last = restart == cfg.restarts - 1
            x_adv, fooled, used = self._descend(model, x[rows], y[rows],
                                                None if targets is None else targets[rows],
                                                eps, judge_end=not last)
            best[rows] = x_adv
            found[rows] = fooled
            queries[rows] += used
        return RunOutput(best, queries)

    def _descend(self, model, x, y, targets, eps, judge_end: bool):
        """One PGD run from a (random) start: the final or first adversarial iterate per sample,
        whether it is known to fool the model, and the forward passes each sample used."""
        cfg, norm = self.config, self.threat_norm
        alpha = cfg.step_size if cfg.step_size is not None else cfg.rel_step_size * eps
        compact_every = 1 if x.device.type == "cpu" else 8
        # A randomised model's answer at one call says little about the judge's call.
        early_stop = cfg.early_stop and not getattr(model, "randomized", False)
        out = random_start(x, norm, eps) if cfg.random_start else x.clone()
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        used = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        rows = torch.arange(x.shape[0], device=x.device)  # the samples still in the batch
        x0, yy, tt = x, y, targets
        cur, done = out, torch.zeros_like(fooled)
        for step in range(cfg.steps + int(judge_end)):
            if step == cfg.steps:  # a non-final restart judges its last iterates
                with torch.no_grad():
                    logits = model(cur)
            else:
                logits, grad = logits_and_gradient(model, cur, yy, tt, cfg.loss)
            used[rows] += 1
            if early_stop or step == cfg.steps:
                pred = logits.argmax(dim=1)
                done = done | (pred == tt if tt is not None else pred != yy)
            if step == cfg.steps:
                break
            if early_stop:  # without it no row is ever done before the end: nothing to freeze
                grad = grad.masked_fill(done.view(-1, *([1] * (x.dim() - 1))), 0)
            moved = cur + steepest_step(grad, norm, alpha)
            moved = (x0 + norm.project(moved - x0, eps)).clamp(0, 1)
            cur = torch.where(done.view(-1, *([1] * (x.dim() - 1))), cur, moved) if early_stop else moved
            if early_stop and (step + 1) % compact_every == 0 and bool(done.any()):
                out[rows], fooled[rows] = cur, done  # write back, then drop the finished rows
                keep = (~done).nonzero().squeeze(1)
                rows, cur, x0, yy = rows[keep], cur[keep], x0[keep], yy[keep]
                tt = None if tt is None else tt[keep]
                done = done[keep]
                if not rows.numel():
                    break
        out[rows], fooled[rows] = cur, done
        return out, fooled, used


@hookimpl
def arena_register_attacks(register):
    register(FGSM)
    register(PGD)
