"""Threat models: which norm bounds the perturbation, how large it may be, what the attacker sees.

The norm is data, not prose (foolbox 3): each :class:`Norm` measures per-sample distances and
projects perturbations onto its ε-ball, and the attack harness uses exactly these two methods.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Annotated

import torch
from pydantic import AfterValidator


class Norm(str, Enum):
    """Perturbation norms, measured in [0, 1] pixel space over all input features."""

    L0 = "l0"
    L1 = "l1"
    L2 = "l2"
    LINF = "linf"

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of ``delta`` (shape ``(N, ...)``) as a float tensor of shape ``(N,)``."""
        flat = delta.flatten(1)
        if self is Norm.L0:
            return (flat != 0).sum(dim=1).to(delta.dtype)
        if self is Norm.L1:
            return flat.abs().sum(dim=1)
        if self is Norm.L2:
            return flat.norm(p=2, dim=1)
        return flat.abs().amax(dim=1)

    def project(self, delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """Project each sample's perturbation onto the ε-ball of this norm.

        ``eps`` is a scalar or a per-sample tensor of shape ``(N,)``. For L0 the ε largest
        components (by magnitude) are kept and the rest zeroed; for L1 the projection is the exact
        Euclidean one (soft thresholding, :func:`project_l1`).
        """
        n = delta.shape[0]
        eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device).expand(n)
        view = (n,) + (1,) * (delta.dim() - 1)
        if self is Norm.LINF:
            bound = eps_t.view(view)
            return torch.maximum(torch.minimum(delta, bound), -bound)
        if self is Norm.L2:
            norms = self.measure(delta)
            factor = torch.where(norms > eps_t, eps_t / norms.clamp_min(1e-12), torch.ones_like(norms))
            return delta * factor.view(view)
        if self is Norm.L1:
            return project_l1(delta, eps_t)
        return _project_l0(delta, eps_t)


def check_budget(eps: float) -> float:
    """The one check of a budget, wherever one enters (a tournament file, an attack call, a
    plugin's config): a finite number above zero. ValueError otherwise."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"a budget must be a finite number above 0, got {eps!r}")
    return float(eps)


Budget = Annotated[float, AfterValidator(check_budget)]
"""The type of a budget field in a config: ``eps: Budget = 0.3``."""

# A distance counts as within budget ε up to float32 rounding of the projection that put it there.
REL_TOLERANCE, ABS_TOLERANCE = 1e-5, 1e-7


def within(distance: torch.Tensor, eps: float) -> torch.Tensor:
    """Which per-sample distances lie within budget ``eps`` (∞: all), the one tolerance used to
    judge a result at a budget."""
    if math.isinf(eps):
        return torch.ones_like(distance, dtype=torch.bool)
    return distance <= eps * (1 + REL_TOLERANCE) + ABS_TOLERANCE


def _l2_or_linf(norm: Norm) -> Norm:
    if norm not in (Norm.L2, Norm.LINF):
        raise ValueError("this attack is defined in 'l2' and 'linf' only")
    return norm


def _lp(norm: Norm) -> Norm:
    if norm is Norm.L0:
        raise ValueError("this attack is defined in 'l1', 'l2' and 'linf' only")
    return norm


L1L2OrLinf = Annotated[Norm, AfterValidator(_lp)]
"""The type of a config's ``norm`` field for attacks defined in L1, L2 and L∞ (APGD, FAB)."""


def project_l1(delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """The Euclidean projection of each sample's ``delta`` onto the L1 ball of radius ``eps``
    (scalar or ``(N,)``): soft thresholding at the one τ ≥ 0 with ‖max(|δ| − τ, 0)‖₁ = ε
    (Duchi et al., 2008, by sorting); samples already inside are returned unchanged."""
    n = delta.shape[0]
    flat = delta.flatten(1)
    eps_t = torch.as_tensor(eps, dtype=flat.dtype, device=flat.device).expand(n)
    mag = flat.abs()
    outside = mag.sum(dim=1) > eps_t
    if not bool(outside.any()):
        return delta.clone()
    srt = mag[outside].sort(dim=1, descending=True).values
    cums = srt.cumsum(dim=1) - eps_t[outside].unsqueeze(1)
    ks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    cond = srt - cums / ks > 0
    rho = cond.to(torch.long).cumsum(dim=1).argmax(dim=1)  # the last index where cond holds
    tau = (cums.gather(1, rho.unsqueeze(1)) / (rho + 1).to(flat.dtype).unsqueeze(1)).clamp_min(0)
    out = flat.clone()
    out[outside] = flat[outside].sign() * (mag[outside] - tau).clamp_min(0)
    return out.view_as(delta)


def project_l1_box(delta: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor,
                   iterations: int = 25) -> torch.Tensor:
    """The Euclidean projection of ``delta`` onto {δ : ‖δ‖₁ ≤ ε, 0 ≤ x + δ ≤ 1}, exactly up to
    bisection on the threshold: the minimiser is sign(δ)·min(max(|δ| − τ, 0), room) — room being
    the box's room in δ's direction — with the smallest τ ≥ 0 that brings its L1 norm within ε,
    because the box and the soft threshold act coordinate-wise (KKT of the joint problem).
    ``iterations`` halvings of [0, max|δ|] (25 reach float32 resolution); τ is the bracket's
    upper end, so the result is always within ε."""
    n = delta.shape[0]
    flat, base = delta.flatten(1), x.flatten(1)
    eps_t = torch.as_tensor(eps, dtype=flat.dtype, device=flat.device).expand(n).unsqueeze(1)
    mag = flat.abs()
    room = torch.where(flat > 0, 1 - base, base)
    lo = torch.zeros(n, 1, dtype=flat.dtype, device=flat.device)
    hi = mag.amax(dim=1, keepdim=True)
    inside = torch.minimum(mag, room).sum(dim=1, keepdim=True) <= eps_t
    for _ in range(iterations):
        mid = (lo + hi) * 0.5
        over = (mag - mid).clamp_(min=0).clamp_(max=room).sum(dim=1, keepdim=True) > eps_t
        lo, hi = torch.where(over, mid, lo), torch.where(over, hi, mid)
    tau = torch.where(inside, torch.zeros_like(hi), hi)
    return (mag - tau).clamp_(min=0).clamp_(max=room).mul_(flat.sign()).view_as(delta)


L2OrLinf = Annotated[Norm, AfterValidator(_l2_or_linf)]
"""The type of a config's ``norm`` field for attacks defined in L2 and L∞ only (gradient steps,
DeepFool, HopSkipJump): ``norm: L2OrLinf = Norm.LINF``; ``l0`` and ``l1`` are config errors."""


def _project_l0(delta: torch.Tensor, eps_t: torch.Tensor) -> torch.Tensor:
    flat = delta.flatten(1)
    k = eps_t.floor().long().clamp(0, flat.shape[1])
    order = flat.abs().argsort(dim=1, descending=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=delta.device).expand_as(order))
    keep = ranks < k.unsqueeze(1)
    return (flat * keep).view_as(delta)


class Knowledge(str, Enum):
    """What an attack may see of the defended model (seed 003, Appendix D)."""

    WHITE_BOX = "white-box"  # the whole defended model, gradients included
    GRAY_BOX = "gray-box"  # the base classifier without the defense's inference-time parts
    BLACK_BOX = "black-box"  # labels or scores through a counting QueryOracle only
    ADAPTIVE = "adaptive"  # white-box plus the defense object and its adaptive hooks


@dataclass(frozen=True)
class ThreatModel:
    """A norm, a budget (None for minimal-perturbation attacks), knowledge, targeting, queries."""

    norm: Norm
    eps: float | None = None
    knowledge: Knowledge = Knowledge.WHITE_BOX
    targeted: bool = False
    max_queries: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", Norm(self.norm))
        object.__setattr__(self, "knowledge", Knowledge(self.knowledge))
        if self.eps is not None:
            object.__setattr__(self, "eps", check_budget(self.eps))

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project ``x_adv`` onto the ε-ball around ``x`` (if bounded) and the [0, 1] box."""
        delta = x_adv - x
        if self.eps is not None:
            delta = self.norm.project(delta, self.eps)
        return (x + delta).clamp_(0.0, 1.0)
