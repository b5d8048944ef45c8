"""DeepFool (Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method to
fool deep neural networks", CVPR 2016), in L2 and L∞, batched over samples and over classes.

Each iteration linearises the classifier around the current point (§3.2, Algorithm 2): for every
candidate class k, ``f_k = Z_k - Z_y`` and ``w_k = ∇f_k``; the closest linearised boundary is
``l = argmin_k |f_k| / ||w_k||_q`` (q the dual norm: 2 for L2, 1 for L∞, §3.3), and the step to
it is ``r = |f_l| / ||w_l||_2² · w_l`` (L2) or ``|f_l| / ||w_l||_1 · sign(w_l)`` (L∞). The total
perturbation is applied with the overshoot ``(1 + overshoot)`` until the label changes, as in
the reference code and foolbox.

Speed: the gradients of all candidate classes come from one forward pass and one batched
backward pass (``torch.autograd.grad(..., is_grads_batched=True)``) per iteration, and a sample
leaves the batch as soon as its current point is misclassified (checked by a cheap forward pass
without gradients, so no Jacobian is spent on a sample that is already fooled).
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from arena import hookimpl
from arena.attack import MinimalAttack, RunOutput
from arena.plugin import PluginConfig
from arena.threat import L2OrLinf, Norm

_TINY = 1e-8  # the reference's guard against a zero gradient
_STEP_PAD = 1e-4  # the reference's extra step length past the linearised boundary


class DeepFoolConfig(PluginConfig):
    norm: L2OrLinf = Field(Norm.L2, description="l2 (§3.2) or linf (§3.3, dual norm l1)")
    steps: int = Field(100, ge=1, description="maximum iterations (seed 001 §4.1: 100)")
    overshoot: float = Field(0.02, ge=0, description="the total step is (1 + overshoot)·r")
    candidates: int | None = Field(None, ge=2, description="top-k classes considered; None: all")


class DeepFool(MinimalAttack):
    """DeepFool (Moosavi-Dezfooli et al., CVPR 2016): iterated steps to the closest boundary of
    the classifier's linearisation (§3.2, Algorithm 2), in L2 or, with the dual norm, in L∞
    (§3.3), with overshoot 0.02. Seed 001 §4.1 (4) runs it with at most 100 iterations; seed 002
    uses it for ρ_adv. Batched over samples and candidate classes; untargeted only."""

    id: ClassVar[str] = "deepfool"
    norm: ClassVar[Norm] = Norm.L2
    supports_targeted: ClassVar[bool] = False
    Config = DeepFoolConfig

    def run(self, model, x, y, eps, targets):
        cfg = self.config
        n = x.shape[0]
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        with torch.no_grad():
            logits = model(x)
        classes = candidate_classes(logits, y, cfg.candidates)
        r_tot = torch.zeros_like(x)
        x_adv = x.clone()
        idx = (logits.argmax(1) == y).nonzero().squeeze(1)
        for _ in range(cfg.steps):
            if idx.numel() == 0:
                break
            f, grads = difference_jacobian(model, x_adv[idx], y[idx], classes[idx])
            r_tot[idx] += deepfool_step(f, grads, self.threat_norm)
            x_adv[idx] = (x[idx] + (1 + cfg.overshoot) * r_tot[idx]).clamp(0, 1)
            with torch.no_grad():
                still = model(x_adv[idx]).argmax(1) == y[idx]
            queries[idx] += 2
            idx = idx[still]
        return RunOutput(x_adv, queries)


def candidate_classes(logits: torch.Tensor, y: torch.Tensor, k: int | None) -> torch.Tensor:
    """The classes whose boundaries are considered, per sample, ``(N, J)``: every class but
    ``y`` (``k=None``), or the ``k - 1`` highest-scoring others of the clean input (the
    reference's ``num_classes`` top classes, the original among them)."""
    num = logits.shape[1]
    j = num - 1 if k is None else min(k, num) - 1
    others = logits.detach().scatter(1, y[:, None], float("-inf"))
    return others.topk(j, dim=1).indices


def difference_jacobian(model, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor):
    """``f = Z_k - Z_y`` ``(M, J)`` and its input gradients ``(M, J, ...)`` for the candidate
    classes, from one forward and one batched backward pass (a loop over classes if the model
    has an operation without a batching rule)."""
    x = x.detach().requires_grad_(True)
    z = model(x)
    f = z.gather(1, classes) - z.gather(1, y[:, None])
    cotangents = F.one_hot(classes, z.shape[1]) - F.one_hot(y, z.shape[1]).unsqueeze(1)
    cotangents = cotangents.to(z.dtype).transpose(0, 1)  # (J, M, K)
    try:
        (grads,) = torch.autograd.grad(z, x, cotangents, retain_graph=True, is_grads_batched=True)
    except RuntimeError:
        grads = torch.stack([torch.autograd.grad(z, x, c, retain_graph=True)[0] for c in cotangents])
    return f.detach(), grads.transpose(0, 1)


def deepfool_step(f: torch.Tensor, grads: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The step to each sample's closest linearised boundary (Algorithm 2; §3.3 for L∞).

    ``f`` is ``(M, J)``, ``grads`` ``(M, J, ...)``; distances use the dual norm of the gradient
    differences, and the step is padded by 1e-4 as in the reference code.
    """
    flat = grads.flatten(2)
    dual = flat.abs().sum(2) if norm is Norm.LINF else flat.norm(dim=2)
    dist = f.abs() / (dual + _TINY)
    best = dist.argmin(1)
    rows = torch.arange(f.shape[0], device=f.device)
    w, d = grads[rows, best], dist[rows, best]
    view = (-1,) + (1,) * (w.dim() - 1)
    if norm is Norm.LINF:
        return (d + _STEP_PAD).view(view) * w.sign()
    return (d + _STEP_PAD).view(view) * w / (dual[rows, best].view(view) + _TINY)


@hookimpl
def arena_register_attacks(register):
    register(DeepFool)
