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
    L2 = "l2"
    LINF = "linf"

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of ``delta`` (shape ``(N, ...)``) as a float tensor of shape ``(N,)``."""
        flat = delta.flatten(1)
        if self is Norm.L0:
            return (flat != 0).sum(dim=1).to(delta.dtype)
        if self is Norm.L2:
            return flat.norm(p=2, dim=1)
        return flat.abs().amax(dim=1)

    def project(self, delta: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
        """Project each sample's perturbation onto the ε-ball of this norm.

        ``eps`` is a scalar or a per-sample tensor of shape ``(N,)``. For L0 the ε largest
        components (by magnitude) are kept and the rest zeroed.
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
    if norm is Norm.L0:
        raise ValueError("this attack is defined in 'l2' and 'linf' only")
    return norm


L2OrLinf = Annotated[Norm, AfterValidator(_l2_or_linf)]
"""The type of a config's ``norm`` field for attacks defined in L2 and L∞ only (gradient steps,
DeepFool, HopSkipJump): ``norm: L2OrLinf = Norm.LINF``; ``l0`` is a config error."""


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
