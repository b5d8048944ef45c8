"""The Jacobian-based Saliency Map Attack (Papernot et al., 2016), batched over samples.

Per iteration, one forward pass and one vector–Jacobian product (two for the paper's pair map)
give every active sample's forward derivative; the features to change are picked with tensor ops
(a top-k, or for the pair map a search in memory-bounded blocks), and samples that reached their
goal (or ran out of budget) leave the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator

from arena import hookimpl
from arena.attack import MinimalAttack, RunOutput
from arena.plugin import PluginConfig
from arena.threat import Norm

# Largest number of pair scores (samples × rows × features) held at once in the pair search.
_PAIR_BLOCK = 1 << 22


class JSMAConfig(PluginConfig):
    theta: float = Field(1.0, ge=-1, le=1, description="change θ applied to a chosen feature "
                         "(+1 sets it to the maximum; negative values decrease features)")
    max_distortion: float = Field(1.0, gt=0, le=1, description="γ: largest fraction of the "
                                  "input features that may be changed (seed 001: 1)")
    single_pixel: bool = Field(False, description="change one feature per iteration (paper §3 "
                               "single-feature map; seed 002's 1-pixel JSMA) instead of a pair")
    max_iterations: int | None = Field(None, ge=1, description="iteration cap (seed 002: 80 on "
                                       "MNIST; seed 003: 100); default: as many as γ allows")
    revisit: bool = Field(False, description="keep changed features searchable until they reach "
                          "the input bound (ART's variant, which seed 001 ran with θ = 0.1)")
    saliency: Literal["softmax", "target", "pairs"] = Field(
        "softmax", description="how features are chosen: 'softmax' takes the k features whose "
        "change (θ, clipped to the input bounds) raises the goal's log-softmax most to first "
        "order; 'target' the k largest ∂Z_t/∂x (ART's SaliencyMapMethod); 'pairs' the paper's "
        "pair map α·|β| over the logits (Algorithm 3, cleverhans)")
    untargeted_goal: Literal["any", "random", "runner-up"] = Field(
        "any", description="untargeted runs: lower the true class's log-softmax ('any'; with "
        "saliency 'target' or 'pairs', steer to the runner-up), steer towards a random class ≠ y "
        "drawn once (cleverhans, ART), or towards the currently most likely class ≠ y, "
        "re-chosen every iteration")
    fallback: bool = Field(True, description="when no feature meets the saliency map's sign "
                           "conditions (no positive first-order gain; for 'pairs' α > 0, β < 0), "
                           "take the best feature(s) anyway instead of stopping")

    @field_validator("theta")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("theta must be non-zero")
        return value


class JSMA(MinimalAttack):
    """Jacobian-based Saliency Map Attack, L0 (Papernot, McDaniel, Jha, Fredrikson, Celik and
    Swami, "The Limitations of Deep Learning in Adversarial Settings", EuroS&P 2016, §III,
    Algorithms 2–3, eq. 8–10).

    Each iteration computes the forward derivative at the current point and changes by θ (clipped
    to [0, 1]) the k = 2 features (1 with ``single_pixel``) it ranks first; changed features
    leave the search domain. It stops when the goal is reached, when γ·D features would be
    exceeded, or when no feature can move. The ranking (``saliency``):

    * ``"softmax"`` (default): the first-order gain ``g_i·Δ_i`` of each feature, where ``Δ_i`` is
      the change θ can still make to it within [0, 1] and ``g = ∂Z_t/∂x − Σ_{j≠t} q_j ∂Z_j/∂x``
      with ``q`` the softmax over the other logits (the gradient of ``log softmax_t`` over
      ``1 − p_t``): the features that raise the target's probability most per changed feature.
      Untargeted (``untargeted_goal="any"``), the true class's log-softmax is lowered instead.
    * ``"target"``: the k largest ``∂Z_t/∂x`` (smallest for θ < 0), ART's ``SaliencyMapMethod``.
    * ``"pairs"``: the paper's pair map, the pair (p, q) maximising ``α·|β|`` with ``α =
      Σ_{i∈{p,q}} ∂Z_t/∂x_i > 0`` and ``β = Σ_{i∈{p,q}} Σ_{j≠t} ∂Z_j/∂x_i < 0`` over the logits
      (signs flipped for θ < 0), as cleverhans computes it.

    The paper's map (and ART's) ignore what the other logits do (ART) or add them up as if they
    were one class (the pair map: a pixel that raises Z_t but raises the runner-up more scores
    well), and neither weighs a feature by how far it can still move: on the Fashion-MNIST CNN
    of ``benchmarks/art_reference.py`` (θ = 1, γ = 0.1, targets y + 1, 100 samples) ART fools
    57% at a median of 62 changed features (failures as ∞), the pair map 43%, the default 68%
    at 42. Conventions follow cleverhans: the derivatives are those
    of the logits Z, ``theta`` is the change per feature (default +1), ``max_distortion`` is γ,
    the largest fraction of features changed (default 1, up to all of them; ART lets the last
    step go up to two features past γ·D, this attack never does). Seed 001 §4.1 (3) runs "γ =
    1, θ = 0.1" with ART's defaults, where θ is also the per-feature change but a feature may be
    changed again until it saturates: ``theta=0.1, revisit=True`` reproduces that. Seed 002 uses
    the single-feature variant (``single_pixel=True``, 80 iterations on MNIST).

    Targeted when ``targets`` are given. Untargeted, the default lowers the true class's score;
    ``untargeted_goal="random"`` steers towards a random class ≠ y (drawn with the seeded
    generator, as cleverhans and ART do when no target is given) and ``"runner-up"`` towards
    the most likely wrong class at each iteration (also what ``"any"`` means for the
    ``"target"`` and ``"pairs"`` maps); in every case it stops at the first misclassification,
    which is what the harness judges, so distances are the L0 needed to change the prediction.
    Where no feature meets the map's sign conditions (a positive gain; for the pair map α > 0
    and β < 0: Algorithm 3 is silent, cleverhans then modifies feature 0) the best-ranked
    features are taken anyway (for the pair map the pair with the largest α − β;
    ``fallback=False`` stops the sample instead). Queries: one forward pass per iteration.
    """

    id: ClassVar[str] = "jsma"
    norm: ClassVar[Norm] = Norm.L0
    Config = JSMAConfig

    def limits(self, features: int) -> tuple[int, int, int]:
        """(features changed per iteration k, feature budget ⌊γ·D⌋, iteration cap)."""
        cfg = self.config
        k = 1 if cfg.single_pixel else 2
        cap = math.floor(cfg.max_distortion * features + 1e-9)
        if cfg.max_iterations is not None:
            return k, cap, cfg.max_iterations
        repeats = math.ceil(1 / abs(cfg.theta) - 1e-9) if cfg.revisit else 1
        return k, cap, math.ceil(cap / k) * repeats

    def run(self, model, x, y, eps, targets):
        state = _State.start(x, y, targets)
        k, cap, limit = self.limits(state.x_adv.shape[1])
        for iteration in range(limit + 1):
            idx = state.active
            xa = state.x_adv[idx].detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xa.view((-1,) + x.shape[1:]))
            state.queries[idx] += 1
            goal = self._goal(state, logits.detach(), idx)
            reached = _reached(logits.detach(), state.y[idx], state.targets, idx)
            if iteration == limit:
                break
            domain = self._domain(state, idx, k, cap)
            go = ~reached & (domain.sum(dim=1) >= k)
            picks, found = self._select(logits, xa, goal, domain, go, k, self._lowers_y(state))
            go &= found
            self._apply(state, idx[go], picks[go])
            state.active = idx[go]
            if not state.active.numel():
                break
        return RunOutput(state.x_adv.view_as(x), state.queries)

    def _lowers_y(self, state: _State) -> bool:
        """Whether the run lowers the true class's score instead of raising a goal class's."""
        return (state.targets is None and self.config.untargeted_goal == "any"
                and self.config.saliency == "softmax")

    def _goal(self, state: _State, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The class each active sample is steered towards this iteration (untargeted 'any'
        with the softmax saliency: its true class, whose score is lowered)."""
        if state.targets is not None:
            return state.targets[idx]
        y = state.y[idx]
        if self._lowers_y(state):
            return y
        if self.config.untargeted_goal in ("runner-up", "any"):
            return logits.scatter(1, y.unsqueeze(1), float("-inf")).argmax(dim=1)
        if state.random_goal is None:  # first iteration: every sample is active
            shift = torch.randint(1, logits.shape[1], y.shape, device=y.device)
            state.random_goal = (y + shift) % logits.shape[1]
        return state.random_goal[idx]

    def _domain(self, state: _State, idx: torch.Tensor, k: int, cap: int) -> torch.Tensor:
        """Features each active sample may change now (the paper's search domain Γ)."""
        x, used = state.x_adv[idx], state.used[idx]
        movable = x < 1 if self.config.theta > 0 else x > 0
        fresh = (used.sum(dim=1, keepdim=True) + k) <= cap
        if self.config.revisit:
            return movable & (used | fresh)
        return movable & ~used & fresh

    def _select(self, logits, xa, goal, domain, go, k, lower):
        """The ``k`` features to change per sample and whether a choice was found."""
        if self.config.saliency == "pairs":
            return self._select_pairs(logits, xa, goal, domain, go, k)
        theta = self.config.theta
        if self.config.saliency == "softmax":
            grad = _soft_margin_gradient(logits, xa, goal, go)
            if lower:
                grad = -grad
            step = (xa.detach() + theta).clamp(0, 1) - xa.detach()  # the change θ can still make
            score = grad * step
        else:  # "target": ART's map, the goal logit's derivative in the direction of θ
            weight = torch.zeros_like(logits).scatter_(1, goal.unsqueeze(1), 1.0)
            (grad,) = torch.autograd.grad(logits, xa, weight * go.to(logits.dtype).unsqueeze(1))
            score = grad if theta > 0 else -grad
        top = score.masked_fill(~domain, float("-inf")).topk(k, dim=1)
        found = (top.values > 0).all(dim=1)
        if self.config.fallback:
            found = torch.isfinite(top.values).all(dim=1)
        return top.indices, found

    def _select_pairs(self, logits, xa, goal, domain, go, k):
        """The paper's map (eq. 8–10, Algorithm 3) over the logits, as cleverhans computes it."""
        alpha, beta = _forward_derivatives(logits, xa, goal, go)
        if self.config.theta < 0:
            alpha, beta = -alpha, -beta
        if k == 1:
            picks, found = _best_single(alpha, beta, domain)
        else:
            picks, found = _best_pairs(alpha, beta, domain)
        if self.config.fallback:
            relaxed = (alpha - beta).masked_fill(~domain, float("-inf")).topk(k, dim=1).indices
            picks = torch.where(found.unsqueeze(1), picks, relaxed)
            found = torch.ones_like(found)
        return picks, found

    def _apply(self, state: _State, rows: torch.Tensor, picks: torch.Tensor) -> None:
        """Change the picked features of ``rows`` by θ, clipped to [0, 1]."""
        rr = rows.unsqueeze(1).expand_as(picks)
        state.x_adv[rr, picks] = (state.x_adv[rr, picks] + self.config.theta).clamp(0, 1)
        state.used[rr, picks] = True


@dataclass
class _State:
    """The attack's per-sample state: flattened iterates, changed features, queries, goals."""

    x_adv: torch.Tensor
    used: torch.Tensor
    queries: torch.Tensor
    active: torch.Tensor
    y: torch.Tensor
    targets: torch.Tensor | None
    random_goal: torch.Tensor | None = None

    @classmethod
    def start(cls, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> _State:
        flat = x.detach().flatten(1).clone()
        n = x.shape[0]
        return cls(flat, torch.zeros_like(flat, dtype=torch.bool),
                   torch.zeros(n, dtype=torch.long, device=x.device),
                   torch.arange(n, device=x.device), y, targets)


def _reached(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
             idx: torch.Tensor) -> torch.Tensor:
    """Targeted: predicted as the target; untargeted: predicted as anything but y."""
    pred = logits.argmax(dim=1)
    return pred == targets[idx] if targets is not None else pred != y


def _soft_margin_gradient(logits: torch.Tensor, xa: torch.Tensor, goal: torch.Tensor,
                          rows: torch.Tensor) -> torch.Tensor:
    """``∂Z_c/∂x − Σ_{j≠c} q_j ∂Z_j/∂x`` with ``q`` the softmax of the logits other than the
    goal ``c``: the gradient of ``log softmax_c`` divided by ``1 − p_c`` (the same ranking of
    features per sample, without the underflow of ``1 − p_c`` when the model is confident),
    from one vector–Jacobian product; zero for rows not selected."""
    z = logits.detach()
    q = z.scatter(1, goal.unsqueeze(1), float("-inf")).softmax(dim=1)
    weight = (-q).scatter_(1, goal.unsqueeze(1), 1.0) * rows.to(z.dtype).unsqueeze(1)
    (grad,) = torch.autograd.grad(logits, xa, weight)
    return grad


def _forward_derivatives(logits: torch.Tensor, xa: torch.Tensor, goal: torch.Tensor,
                         rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂Z_t/∂x`` and ``Σ_{j≠t} ∂Z_j/∂x`` per sample (zero for rows not selected), from two
    vector–Jacobian products instead of all K rows of the Jacobian (eq. 8 needs only these)."""
    weight = rows.to(logits.dtype).unsqueeze(1)
    target = torch.zeros_like(logits).scatter_(1, goal.unsqueeze(1), 1.0) * weight
    (grad_t,) = torch.autograd.grad(logits, xa, target, retain_graph=True)
    (grad_all,) = torch.autograd.grad(logits, xa, weight.expand_as(logits))
    return grad_t, grad_all - grad_t


def _best_single(alpha: torch.Tensor, beta: torch.Tensor,
                 domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-feature saliency (eq. 8): ``α·|β|`` where ``α > 0`` and ``β < 0``."""
    ok = (alpha > 0) & (beta < 0) & domain
    score = torch.where(ok, -alpha * beta, torch.full_like(alpha, float("-inf")))
    best, pick = score.max(dim=1)
    return pick.unsqueeze(1), torch.isfinite(best)


def _best_pairs(alpha: torch.Tensor, beta: torch.Tensor,
               domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair saliency (Algorithm 3): the pair p ≠ q of the domain maximising ``(α_p + α_q)·(−β_p
    − β_q)`` with ``α_p + α_q > 0`` and ``β_p + β_q < 0``, found exactly among few candidates.

    For a fixed p the score grows with ``α_q`` and with ``−β_q``, so a partner q can be replaced
    by any feature that dominates it in both (ties broken by index). The best partner of p is
    therefore on the Pareto front of the domain without p, and the best pair lies within the
    first two Pareto layers of the domain (a point on the front of "domain minus z" is on the
    first layer, or dominated by z alone, which puts it on the second). Both layers come from a
    sort and two running maxima; the exhaustive pair search then runs over those candidates
    only (the largest candidate count in the batch), not over all D² pairs."""
    n, d = alpha.shape
    ninf = float("-inf")
    a = alpha.masked_fill(~domain, ninf)
    v = (-beta).masked_fill(~domain, ninf)
    # Lexicographic order: α descending, then −β descending, then index (stable sorts).
    order = v.sort(dim=1, descending=True, stable=True).indices
    order = order.gather(1, a.gather(1, order).sort(dim=1, descending=True, stable=True).indices)
    vs = v.gather(1, order)
    first = _undominated(vs)
    second = _undominated(vs.masked_fill(first, ninf)) & ~first
    keep = torch.zeros_like(domain).scatter_(1, order, first | second) & domain
    count = keep.sum(dim=1)
    m = max(2, int(count.max())) if n else 2
    cols = keep.to(torch.int8).sort(dim=1, descending=True, stable=True).indices[:, :min(m, d)]
    picks, best = _pairs_among(alpha, beta, domain, cols)
    return picks, torch.isfinite(best)


def _undominated(values: torch.Tensor) -> torch.Tensor:
    """Per row, the entries larger than every earlier finite entry (the Pareto front when rows
    are sorted by the other coordinate): an exclusive running maximum."""
    running = values.cummax(dim=1).values
    before = torch.cat([values.new_full((values.shape[0], 1), float("-inf")), running[:, :-1]], dim=1)
    return (values > before) & torch.isfinite(values)


def _pairs_among(alpha, beta, domain, cols) -> tuple[torch.Tensor, torch.Tensor]:
    """The best pair (as feature indices) among the features ``cols`` (n, m) of each sample,
    and its score (``-inf`` where no pair qualifies), in blocks of at most ``_PAIR_BLOCK``."""
    n, m = cols.shape
    a, b, dom = alpha.gather(1, cols), beta.gather(1, cols), domain.gather(1, cols)
    best = a.new_full((n,), float("-inf"))
    best_at = torch.zeros(n, dtype=torch.long, device=a.device)
    step = max(1, _PAIR_BLOCK // max(1, n * m))
    idx = torch.arange(m, device=a.device)
    for r0 in range(0, m, step):
        r = idx[r0:r0 + step]
        sa = a[:, r0:r0 + step, None] + a[:, None, :]
        sb = b[:, r0:r0 + step, None] + b[:, None, :]
        ok = (sa > 0) & (sb < 0) & dom[:, r0:r0 + step, None] & dom[:, None, :]
        ok &= (r.unsqueeze(1) != idx.unsqueeze(0)).unsqueeze(0)
        score = torch.where(ok, -sa * sb, torch.full_like(sa, float("-inf"))).flatten(1)
        value, at = score.max(dim=1)
        better = value > best
        best = torch.where(better, value, best)
        best_at = torch.where(better, at + r0 * m, best_at)
    picks = torch.stack([cols.gather(1, (best_at // m).unsqueeze(1)).squeeze(1),
                         cols.gather(1, (best_at % m).unsqueeze(1)).squeeze(1)], dim=1)
    return picks, best


@hookimpl
def arena_register_attacks(register):
    register(JSMA)
