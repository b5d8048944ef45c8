"""FAB, the Fast Adaptive Boundary attack (Croce and Hein, "Minimally distorted adversarial
examples with a fast adaptive boundary attack", ICML 2020), in L∞, L2 and L1, and FAB-T, its
targeted form that AutoAttack runs (Croce and Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020, §4).

Each iteration (Algorithm 1 of the FAB paper) linearises the classifier at the current point
``x¹``: for every candidate class ``j``, ``f_j = Z_j − Z_y`` and ``w_j = ∇f_j``; the closest
linearised boundary is ``argmin_j |f_j| / ‖w_j‖_q`` (q the dual norm: L1 for L∞, L2 for L2,
L∞ for L1, §3.1). The current point and the original ``x⁰`` are both projected onto that
hyperplane *intersected with the box* [0, 1]^d (§3.1, :func:`project_hyperplane_box`), giving
steps ``δ¹`` and ``δ⁰``, and the new point is the biased convex combination (§3.2)

    x¹ ← clip((1 − α)(x¹ + η δ¹) + α (x⁰ + η δ⁰)),  α = min(‖δ¹‖ / (‖δ¹‖ + ‖δ⁰‖), α_max),

with the extrapolation η = 1.05 and α_max = 0.1. Whenever ``x¹`` is adversarial it is
recorded if it is the closest yet and pulled back towards ``x⁰``: ``x¹ ← x⁰ + β (x¹ − x⁰)``
with β = 0.9 (the backward step, §3.2). Random restarts start at distance half the smallest
of the best distance found and ε (§3.3). After every run a final search on the segment from ``x⁰`` to the run's
best point shrinks the perturbation to the boundary (the FAB paper's code,
``linear_approximation_search``: the logit margin interpolated along the segment, here kept
inside the bracket so that it always narrows), and runs compare their final points.

FAB-T (AutoAttack §4) replaces the closest boundary by the one of a fixed target ``t``,
``f = Z_t − Z_y``, and runs once per target among the ``n_target_classes`` highest-scoring
other classes of the clean input; success stays untargeted (any class but ``y``).

The exact projection: with ``w·δ = r ≥ 0`` (flipping ``w`` if needed) and the room
``c_i ≥ 0`` each coordinate has in the useful direction ``sign(w_i)`` before leaving the box,
the minimisers are ``δ_i = sign(w_i)·min(t, c_i)`` for L∞, ``sign(w_i)·min(λ|w_i|, c_i)`` for
L2 (KKT) and, for L1, the coordinates of largest ``|w_i|`` filled to their room in turn. The
achievable ``w·δ`` is a concave, nondecreasing, piecewise-linear function of ``t`` (of ``λ``),
so Newton's method from 0 reaches the root monotonically and exactly, in three or four O(d)
passes on image gradients (a sort of the breakpoints, the exact fallback, takes over for a row
that has not converged in 30); for L1 only the largest few |w_i| are ranked (``topk``). The
reference sorts every row and bisects. If the hyperplane misses the box, the box corner
farthest along ``w`` is returned (the closest the box gets to the plane).

Speed: per iteration, one forward pass with the gradients of all candidate differences (on a
CPU one backward pass per class ``j ≠ y``, nine for ten classes where the reference runs ten;
elsewhere one batched backward pass, ``is_grads_batched``), or for FAB-T one backward pass of
``f`` alone, and one forward pass to check the new point; both projections of an iteration
are one call. The final search reuses the logits of the clean and of the best point, and a
sample already adversarial (or, given ε, already within ε) is not attacked again. On the
benchmark CNN (``benchmarks/fab_reference.py``) the model's passes take 85–90% of the time.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from arena import hookimpl
from arena.attack import MinimalAttack, RunOutput
from arena.plugin import PluginConfig
from arena.threat import Budget, L1L2OrLinf, Norm, within
from arena_builtins.attacks.deepfool import candidate_classes, difference_jacobian

_TINY_DUAL = 1e-12  # the reference's guard on the dual norm of a gradient
_TINY_STEP = 1e-8  # the reference's lower bound on the step norms in α
#: The reference's default restart radius by norm, used when no ε is given and no
#: adversarial point has been found yet.
DEFAULT_RADIUS = {Norm.LINF: 0.3, Norm.L2: 1.0, Norm.L1: 5.0}


# ------------------------------------------------------------------------ the projection

def project_hyperplane_box(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The shortest step ``δ`` (in ``norm``) from each row of ``x`` onto the hyperplane
    ``{x' : w·(x' − x) + b = 0}`` intersected with the box [0, 1]^d (FAB §3.1).

    ``x`` and ``w`` are ``(M, d)``, ``b`` is ``(M,)``; ``x`` must lie in the box. The answer is
    exact (L∞ and L2: Newton's method on a piecewise-linear function, which ends exactly; L1:
    a ranking of the largest |w_i|); where the hyperplane misses the box it is the box corner
    that goes farthest towards it, ``sign(w_i)``·room for every ``w_i ≠ 0``.
    """
    if x.dim() != 2 or w.shape != x.shape or b.shape != x.shape[:1]:
        raise ValueError("x and w must be (M, d) and b (M,)")
    r = -b  # the change w·δ must bring
    flip = torch.where(r < 0, -1.0, 1.0).to(w.dtype)
    w = w * flip.unsqueeze(1)
    r = (r * flip).unsqueeze(1)  # ≥ 0 from here on
    mag = w.abs()
    direction = torch.sign(w)
    room = torch.where(w > 0, 1 - x, torch.where(w < 0, x, torch.zeros_like(x))).clamp_min(0)
    if norm is Norm.L1:
        step = _l1_magnitudes(mag, room, r)
    elif norm in (Norm.L2, Norm.LINF):
        step = _newton_magnitudes(mag, room, r, norm)
    else:
        raise ValueError(f"FAB's projection is defined in l1, l2 and linf, not {norm.value}")
    return direction * step


_NEWTON_STEPS = 30  # then the rows still moving are solved by sorting (never needed in practice)
_NEWTON_TOL = 1e-6  # relative change of t below which a row has converged


def _newton_magnitudes(mag, room, r, norm):
    """|δ_i| = min(room_i, t·s_i) (s_i = 1 for L∞, |w_i| for L2) with the t ≥ 0 at which
    ``h(t) = Σ |w_i|·min(room_i, t·s_i)`` reaches ``r``. ``h`` is concave, nondecreasing and
    piecewise linear, so Newton's method from t = 0 increases monotonically to the root (each
    tangent lies above ``h``) and is exact once ``t`` is in the root's piece: three or four
    steps on image gradients, a few O(d) passes each instead of a sort of every row."""
    scale = mag if norm is Norm.L2 else torch.ones_like(mag)
    slope_w = mag * scale
    reachable = (mag * room).sum(1, keepdim=True)  # h(∞): the box corner
    feasible = reachable >= r
    t = torch.zeros_like(r)
    h = torch.zeros_like(r)
    moving = feasible & (r > 0)
    for _ in range(_NEWTON_STEPS):
        slope = (slope_w * (room > t * scale)).sum(1, keepdim=True)
        step = ((r - h) / slope.clamp_min(torch.finfo(mag.dtype).tiny)).clamp_min(0)
        moving = moving & (step > _NEWTON_TOL * t)
        if not bool(moving.any()):
            moving = moving.squeeze(1)
            break
        t = torch.where(moving, t + step, t)
        h = (mag * torch.minimum(room, t * scale)).sum(1, keepdim=True)
    else:
        moving = moving.squeeze(1)
    t = torch.where(feasible, t, torch.full_like(t, math.inf))
    out = torch.where(mag > 0, torch.minimum(room, t * scale), torch.zeros_like(mag))
    if bool(moving.any()):  # not converged: solve those rows exactly by sorting
        exact = _linf_magnitudes if norm is Norm.LINF else _l2_magnitudes
        out[moving] = exact(mag[moving], room[moving], r[moving])
    return out


def _excl(cum: torch.Tensor) -> torch.Tensor:
    """An inclusive cumulative sum made exclusive (a leading zero column; one column more)."""
    return torch.nn.functional.pad(cum, (1, 0))


def _from(values: torch.Tensor) -> torch.Tensor:
    """``out[:, k] = Σ_{j ≥ k} values[:, j]`` for k = 0..d (a trailing zero column)."""
    return torch.nn.functional.pad(values.flip(1).cumsum(1).flip(1), (0, 1))


def _linf_magnitudes(mag, room, r):
    """|δ_i| = min(t, room_i) with the smallest t such that Σ |w_i|·min(t, room_i) = r."""
    caps, order = room.sort(dim=1)
    weights = mag.gather(1, order)
    filled = (weights * caps).cumsum(1)  # Σ_{j ≤ k} |w_j| c_j
    rest = _from(weights)  # Σ_{j ≥ k} |w_j|
    reach = filled + caps * rest[:, 1:]  # the achievable w·δ at t = c_(k)
    k = (reach < r).sum(1, keepdim=True)  # the coordinates saturated at the optimum
    feasible = k < caps.shape[1]
    kk = k.clamp_max(caps.shape[1] - 1)
    t = (r - _excl(filled).gather(1, kk)) / rest.gather(1, kk).clamp_min(torch.finfo(mag.dtype).tiny)
    t = torch.where(feasible, t, torch.full_like(t, math.inf))
    return torch.minimum(room, t) * (mag > 0)


def _l2_magnitudes(mag, room, r):
    """|δ_i| = min(λ|w_i|, room_i) with the λ ≥ 0 such that Σ |w_i|·min(λ|w_i|, room_i) = r."""
    active = mag > 0
    breaks = torch.where(active, room / torch.where(active, mag, torch.ones_like(mag)),
                         torch.full_like(mag, math.inf))  # where coordinate i saturates
    lam_k, order = breaks.sort(dim=1)
    weights = mag.gather(1, order)
    filled = (weights * room.gather(1, order)).cumsum(1)
    rest = _from(weights * weights)  # Σ_{j ≥ k} w_j²
    reach = filled + torch.where(torch.isfinite(lam_k), lam_k * rest[:, 1:], torch.zeros_like(lam_k))
    reach = torch.where(torch.isfinite(lam_k), reach, torch.full_like(reach, math.inf))
    k = (reach < r).sum(1, keepdim=True)
    feasible = k < active.sum(1, keepdim=True)
    kk = k.clamp_max(mag.shape[1] - 1)
    lam = (r - _excl(filled).gather(1, kk)) / rest.gather(1, kk).clamp_min(torch.finfo(mag.dtype).tiny)
    lam = torch.where(feasible, lam, torch.full_like(lam, math.inf))
    return torch.where(active, torch.minimum(room, lam * mag), torch.zeros_like(mag))


def _l1_magnitudes(mag, room, r):
    """The coordinates of largest |w_i| filled to their room in turn, the last one partly. The
    solution is sparse, so the largest 32 coordinates are ranked first (``topk``), 256 for the
    rows they do not satisfy, and the full sort only for the rows still left."""
    d = mag.shape[1]
    out = torch.zeros_like(mag)
    pending = torch.arange(mag.shape[0], device=mag.device)
    k = min(d, 32)
    while pending.numel():
        m, rm, rr = mag[pending], room[pending], r[pending]
        weights, order = m.topk(k, dim=1) if k < d else m.sort(dim=1, descending=True)
        caps = rm.gather(1, order)
        filled = (weights * caps).cumsum(1)
        done = (filled[:, -1:] >= rr).squeeze(1) if k < d else torch.ones_like(pending, dtype=torch.bool)
        if bool(done.any()):
            step = _l1_fill(weights[done], caps[done], filled[done], rr[done])
            out[pending[done]] = torch.zeros_like(m[done]).scatter_(1, order[done], step)
        pending = pending[~done]
        k = d if k >= 256 else min(d, 8 * k)
    return out * (mag > 0)


def _l1_fill(weights, caps, filled, r):
    """The L1 magnitudes on the ranked coordinates (``weights`` descending, ``filled`` their
    cumulative |w|·room): the first ones to their room, the next partly, the rest zero; every
    room if even all of them fall short (the hyperplane misses the box)."""
    d = weights.shape[1]
    k = (filled < r).sum(1, keepdim=True)  # coordinates filled to their room
    kk = k.clamp_max(d - 1)
    w_k = weights.gather(1, kk)
    feasible = (k < d) & (w_k > 0)
    part = (r - _excl(filled).gather(1, kk)) / w_k.clamp_min(torch.finfo(weights.dtype).tiny)
    part = torch.minimum(part, caps.gather(1, kk))
    pos = torch.arange(d, device=weights.device).unsqueeze(0)
    step = torch.where(pos < k, caps, torch.zeros_like(caps))
    step = torch.where((pos == k) & feasible, part, step)
    return torch.where(feasible | (pos < k), step, caps)


# ------------------------------------------------------------------------ the attack

def _dual_norm(g: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The dual norm of each gradient along the last dimension."""
    if norm is Norm.LINF:
        return g.abs().sum(-1)
    if norm is Norm.L2:
        return g.norm(dim=-1)
    return g.abs().amax(-1)


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(-1, *([1] * (like.dim() - 1)))


def random_start(x: torch.Tensor, norm: Norm, radius: torch.Tensor) -> torch.Tensor:
    """A random point at distance ``radius`` (per sample) from ``x`` in ``norm``, clipped to the
    box (FAB §3.3; the reference's draw: uniform in L∞, Gaussian in L2 and L1, rescaled)."""
    t = 2 * torch.rand_like(x) - 1 if norm is Norm.LINF else torch.randn_like(x)
    t = t / _view(norm.measure(t).clamp_min(1e-12), x)
    return (x + _view(radius, x) * t).clamp(0, 1)


class FABBaseConfig(PluginConfig):
    norm: L1L2OrLinf = Field(Norm.LINF, description="linf, l2 or l1 (FAB §3.1)")
    steps: int = Field(100, ge=1, description="iterations per run (AutoAttack: 100)")
    restarts: int = Field(1, ge=1, description="runs per target; all but the first from a random start (§3.3)")
    alpha_max: float = Field(0.1, ge=0, le=1, description="the largest weight of the step from x⁰ (§3.2)")
    eta: float = Field(1.05, ge=1, description="extrapolation of the projection steps (§3.2)")
    beta: float = Field(0.9, gt=0, lt=1, description="the backward step towards x⁰ at an adversarial point")
    final_search: int = Field(6, ge=0, description="steps of the final search on the segment x⁰–best (0: off)")
    eps: Budget | None = Field(None, description="the budget of interest, as AutoAttack gives it: the restart "
                               "radius, and a sample within it is not attacked by later runs")


class FABConfig(FABBaseConfig):
    candidates: int | None = Field(None, ge=2, description="top-k classes of the clean logits whose "
                                   "boundaries are linearised (y among them); None: all, as the reference")


class FABTConfig(FABBaseConfig):
    n_target_classes: int = Field(9, ge=1, description="targets: the highest-scoring other classes of the "
                                  "clean input (AutoAttack §4: 9), capped at K − 1")


class FAB(MinimalAttack):
    """FAB, the Fast Adaptive Boundary attack (Croce and Hein, ICML 2020), in L∞, L2 or L1:
    projections onto the closest linearised boundary intersected with the box (§3.1), biased
    towards the original point (§3.2, α_max 0.1, η 1.05, backward step β 0.9), random restarts
    (§3.3) and a final search on the segment to the best point. Untargeted: the closest other
    class's boundary. Given ``targets``, it attacks them: the boundary between the target and
    its strongest rival, success when the target wins."""

    id: ClassVar[str] = "fab"
    norm: ClassVar[Norm] = Norm.LINF
    Config = FABConfig

    def run(self, model, x, y, eps, targets):
        cfg = self.config
        eps = eps if eps is not None else cfg.eps
        n = x.shape[0]
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        with torch.no_grad():
            logits = model(x)
        fooled = logits.argmax(1) != y if targets is None else logits.argmax(1) == targets
        best = x.clone()
        best_d = torch.where(fooled, torch.zeros(n, dtype=x.dtype, device=x.device),
                             torch.full((n,), math.inf, dtype=x.dtype, device=x.device))
        for goal in self._goals(logits, y, targets):
            for restart in range(cfg.restarts):
                todo = ~fooled & (~within(best_d, eps) if eps is not None else True)
                rows = todo.nonzero().squeeze(1)
                if not rows.numel():
                    break
                x0 = x[rows]
                if restart:
                    radius = best_d[rows]
                    fallback = eps if eps is not None else DEFAULT_RADIUS[self.threat_norm]
                    radius = 0.5 * torch.where(torch.isfinite(radius), radius.clamp_max(eps or math.inf),
                                               torch.full_like(radius, fallback))
                    start = random_start(x0, self.threat_norm, radius)
                else:
                    start = x0
                tt = None if targets is None else targets[rows]
                adv, dist, z_adv = self._descend(model, x0, y[rows], goal[rows], start, tt is not None)
                queries[rows] += 2 * cfg.steps
                found = torch.isfinite(dist)
                if cfg.final_search and bool(found.any()):  # each run's best: runs compare final points
                    sel = found.nonzero().squeeze(1)
                    adv[sel] = self._final_search(model, x0[sel], adv[sel], y[rows[sel]],
                                                  None if tt is None else tt[sel], logits[rows[sel]], z_adv[sel])
                    dist[sel] = self.threat_norm.measure(adv[sel] - x0[sel])
                    queries[rows[sel]] += cfg.final_search
                better = dist < best_d[rows]
                best[rows[better]] = adv[better]
                best_d[rows[better]] = dist[better]
        return RunOutput(best, queries)

    def _goals(self, logits, y, targets):
        """What each run aims at, per sample: the candidate classes (untargeted) or the target."""
        if targets is not None:
            return [targets[:, None]]
        return [candidate_classes(logits, y, self.config.candidates)]

    def _linearise(self, model, x1, y, goal, targeted):
        """``f`` ``(M, J)`` with ``f ≥ 0`` beyond the boundary, and its gradients ``(M, J, d)``."""
        if targeted:  # the target against its strongest rival (the argmax until the target leads)
            return _target_margin(model, x1, goal[:, 0], rival=None)
        return _difference_jacobian(model, x1, y, goal)

    def _fooled(self, logits, y, goal, targeted):
        pred = logits.argmax(1)
        return pred == goal[:, 0] if targeted else pred != y

    def _descend(self, model, x0, y, goal, start, targeted):
        """One FAB run (Algorithm 1) from ``start``: the closest adversarial point found per
        sample and its distance (∞ if none)."""
        cfg, norm = self.config, self.threat_norm
        m = x0.shape[0]
        rows = torch.arange(m, device=x0.device)
        x0f = x0.flatten(1)
        x1f = start.flatten(1).clone()
        best = x0f.clone()
        best_d = torch.full((m,), math.inf, dtype=x0.dtype, device=x0.device)
        best_z = None
        for _ in range(cfg.steps):
            f, g = self._linearise(model, x1f.view_as(x0), y, goal, targeted)
            if f.shape[1] > 1:
                j = (f.abs() / (_dual_norm(g, norm) + _TINY_DUAL)).argmin(1)
                f, w = f[rows, j], g[rows, j]
            else:
                f, w = f[:, 0], g[:, 0]
            f0 = f + (w * (x0f - x1f)).sum(1)  # the same hyperplane seen from x⁰
            d = project_hyperplane_box(torch.cat((x1f, x0f)), torch.cat((w, w)), torch.cat((f, f0)), norm)
            size = norm.measure(d).clamp_min(_TINY_STEP)
            alpha = (size[:m] / (size[:m] + size[m:])).clamp(0, cfg.alpha_max).unsqueeze(1)
            x1f = ((1 - alpha) * (x1f + cfg.eta * d[:m]) + alpha * (x0f + cfg.eta * d[m:])).clamp_(0, 1)
            with torch.no_grad():
                z = model(x1f.view_as(x0))
            adv = self._fooled(z, y, goal, targeted)
            dist = norm.measure(x1f - x0f)
            better = adv & (dist < best_d)
            best = torch.where(better.unsqueeze(1), x1f, best)
            best_d = torch.where(better, dist, best_d)
            best_z = z if best_z is None else torch.where(better.unsqueeze(1), z, best_z)
            x1f = torch.where(adv.unsqueeze(1), x0f + cfg.beta * (x1f - x0f), x1f)
        return best.view_as(x0), best_d, best_z

    def _final_search(self, model, x0, adv, y, targets, z0, z_adv):
        """Shrink ``adv − x0`` to the decision boundary along the segment (the reference code's
        linear approximation search): the logit margin, positive on ``x0``'s side, is
        interpolated between the last clean and the last adversarial point of the segment; the
        new point replaces the end on its side, kept within the middle 90% of the bracket so
        that it always narrows."""
        lo = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        hi = torch.ones_like(lo)
        with torch.no_grad():
            m_lo, m_hi = self._margin(z0, y, targets), self._margin(z_adv, y, targets)
            for _ in range(self.config.final_search):
                share = (m_lo / (m_lo - m_hi)).nan_to_num(0.5).clamp(0.05, 0.95)
                t = lo + share * (hi - lo)
                z = model(x0 + _view(t, x0) * (adv - x0))
                is_adv = self._fooled(z, y, None if targets is None else targets[:, None], targets is not None)
                margin = self._margin(z, y, targets)
                hi, m_hi = torch.where(is_adv, t, hi), torch.where(is_adv, margin, m_hi)
                lo, m_lo = torch.where(is_adv, lo, t), torch.where(is_adv, m_lo, margin)
        return (x0 + _view(hi, x0) * (adv - x0)).clamp(0, 1)

    @staticmethod
    def _margin(z, y, targets):
        """Positive while not adversarial: ``Z_y − max_{k≠y} Z_k``, or ``max_{k≠t} Z_k − Z_t``."""
        keep = y if targets is None else targets
        own = z.gather(1, keep[:, None]).squeeze(1)
        other = z.scatter(1, keep[:, None], float("-inf")).amax(1)
        return own - other if targets is None else other - own


class FABT(FAB):
    """FAB-T, the targeted FAB of AutoAttack (Croce and Hein, ICML 2020, §4; the FAB paper's
    Algorithm 1 with the boundary of one target class, ``Z_t − Z_y``): one run per target among
    the ``n_target_classes`` (9) highest-scoring other classes of the clean input, success when
    the label changes; a sample already fooled within ``eps`` (when given) is not attacked for
    the next targets. One backward pass per iteration. Given ``targets``, it attacks them as
    ``fab`` does."""

    id: ClassVar[str] = "fab-t"
    Config = FABTConfig

    def _goals(self, logits, y, targets):
        if targets is not None:
            return [targets[:, None]]
        k = min(self.config.n_target_classes, logits.shape[1] - 1)
        ranked = candidate_classes(logits, y, k + 1)  # the k highest-scoring other classes
        return [ranked[:, i:i + 1] for i in range(k)]

    def _linearise(self, model, x1, y, goal, targeted):
        return _target_margin(model, x1, goal[:, 0], rival=None if targeted else y)


def _difference_jacobian(model, x, y, classes):
    """``f = Z_k − Z_y`` ``(M, J)`` for the candidate classes and the flat gradients
    ``(M, J, d)``: one forward pass, then on a CPU one backward pass per class (faster there
    than the batched backward, which wins on accelerators and is used on them)."""
    if x.device.type != "cpu":
        f, g = difference_jacobian(model, x, y, classes)
        return f, g.flatten(2)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(x)
        own = z.gather(1, y[:, None])
        f = z.gather(1, classes) - own
        grads = torch.empty(x.shape[0], classes.shape[1], x[0].numel(), dtype=x.dtype, device=x.device)
        for j in range(classes.shape[1]):
            (g,) = torch.autograd.grad(f[:, j].sum(), x, retain_graph=j + 1 < classes.shape[1])
            grads[:, j] = g.flatten(1)
    return f.detach(), grads


def _target_margin(model, x, target, rival):
    """``f = Z_t − Z_r`` ``(M, 1)`` and its gradient ``(M, 1, d)`` from one forward and one
    backward pass; ``rival`` None: the strongest other class at ``x``."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = model(x)
        if rival is None:
            rival = z.detach().scatter(1, target[:, None], float("-inf")).argmax(1)
        f = z.gather(1, target[:, None]) - z.gather(1, rival[:, None])
        (g,) = torch.autograd.grad(f.sum(), x)
    return f.detach(), g.flatten(1).unsqueeze(1)


@hookimpl
def arena_register_attacks(register):
    register(FAB)
    register(FABT)
