"""Square Attack: score-based black-box random search over square windows, L∞ and L2.

Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020. The model is seen only through a scores
oracle (softmax probabilities), every row counted by the harness. Each iteration sends one
candidate per sample still being attacked, in one oracle call, so a sample's queries are exactly
``1`` (the clean check) ``+ 1`` (the initial point) ``+`` its iterations, and never exceed
``max_queries``: the attack plans its iterations from the budget and never triggers
``QueryBudgetExceeded``.
"""
from __future__ import annotations

import functools
import math
from typing import ClassVar, Literal

import torch
from pydantic import Field

from arena import hookimpl
from arena.attack import FixedBudgetAttack
from arena.plugin import PluginConfig
from arena.threat import Knowledge, L2OrLinf, Norm
from arena_builtins.attacks.losses import attack_loss

#: Iterations (on the paper's 10,000-iteration scale) after which p is halved (the paper's
#: schedule for 10k iterations, as the authors' code and AutoAttack's ``p_selection`` apply it).
HALVINGS: tuple[int, ...] = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(it: int, n_iters: int, p_init: float) -> float:
    """The fraction ``p`` of pixels a square covers at iteration ``it`` (0-based) of ``n_iters``.

    The paper's schedule is defined for 10,000 iterations: ``p_init`` halves after iterations
    10, 50, 200, 500, 1,000, 2,000, 4,000, 6,000 and 8,000. For another number of iterations it
    is rescaled (``it`` is mapped to ``int(it / n_iters · 10,000)``), as the reference code does.
    """
    scaled = int(it / max(n_iters, 1) * 10_000)
    return p_init / 2 ** sum(scaled > point for point in HALVINGS)


def side_length(p: float, h: int, w: int, norm: Norm) -> int:
    """The side of the square at fraction ``p``: ``round(√(p·h·w))``, at least 1 (L∞) or 3 and
    odd (L2: the window holds two opposite 'pseudo-Gaussian' halves), at most the image side."""
    s = round(math.sqrt(p * h * w))
    if norm is Norm.L2:
        s = max(s, 3)
        s += s % 2 == 0
    return max(1, min(s, h, w))


def rectangle_bump(a: int, b: int, device: torch.device | None = None) -> torch.Tensor:
    """An ``a × b`` bump of unit L2 norm: concentric rectangles around ``(a // 2, b // 2)``, the
    k-th (Chebyshev radius k) adding 1/(k+1)², so a pixel at radius r holds Σ_{k≥r} 1/(k+1)²
    (the building block of the L2 update η, Alg. 3; the reference code's ``eta_rectangles``)."""
    if a == 0 or b == 0:
        return torch.zeros(a, b, device=device)
    k_max = max(a // 2, b // 2) + 1
    ri = (torch.arange(a, device=device) - a // 2).abs().view(a, 1)
    rj = (torch.arange(b, device=device) - b // 2).abs().view(1, b)
    radius = torch.maximum(ri, rj)
    weights = 1.0 / torch.arange(1, k_max + 1, device=device, dtype=torch.float32) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[r] = Σ_{k ≥ r} w_k
    bump = tail[radius.clamp(max=k_max - 1)]
    return bump / bump.square().sum().sqrt()


@functools.lru_cache(maxsize=64)
def eta(s: int, device: torch.device | None = None) -> torch.Tensor:
    """The L2 update of a window of side ``s``: the top half a positive bump, the bottom half a
    negative one, unit L2 norm (Alg. 3). Cached: do not modify the tensor returned."""
    out = torch.cat([rectangle_bump(s // 2, s, device), -rectangle_bump(s - s // 2, s, device)])
    return out / out.square().sum().sqrt()


def _col(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


def _signs(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1


def _windows(m: int, s: int, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly placed ``s × s`` window for each of ``m`` samples: its top rows and left columns."""
    return (torch.randint(0, h - s + 1, (m,), device=device),
            torch.randint(0, w - s + 1, (m,), device=device))


def _mask(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """The windows as a boolean mask of shape ``(m, 1, h, w)``."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + s)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + s)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _flat_window(top: torch.Tensor, left: torch.Tensor, s: int, w: int) -> torch.Tensor:
    """The flat pixel indices (into ``h·w``) of each sample's ``s × s`` window, shape ``(m, s·s)``,
    row-major within the window."""
    ar = torch.arange(s, device=top.device)
    return ((top[:, None, None] + ar.view(1, s, 1)) * w + left[:, None, None] + ar.view(1, 1, s)).flatten(1)


def _unit_l2(delta: torch.Tensor) -> torch.Tensor:
    return delta / (_col(delta.flatten(1).norm(dim=1), delta.dim()) + 1e-12)


def linf_init(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The L∞ start: vertical stripes, each column of each channel at +ε or −ε (Alg. 1's
    initialisation for L∞)."""
    n, c, _, w = x.shape
    return (x + eps * _signs((n, c, 1, w), x)).clamp(0, 1)


def linf_candidates(x: torch.Tensor, best: torch.Tensor, eps: float, s: int) -> torch.Tensor:
    """One L∞ proposal per sample (Alg. 2, the L∞ sampling distribution): a window of side ``s``
    at a uniform position set to ``x ± ε`` with one random sign per channel. As in the authors'
    code, a sign draw that would leave the window as it is (so that its query would be wasted) is
    not sent: it is replaced by one of the other sign vectors, uniformly (for one channel: the
    opposite sign)."""
    m, c, h, w = x.shape
    top, left = _windows(m, s, h, w, x.device)
    at = _flat_window(top, left, s, w).unsqueeze(1).expand(m, c, s * s)
    x_win = x.reshape(m, c, h * w).gather(2, at)
    best_flat = best.reshape(m, c, h * w)
    best_win = best_flat.gather(2, at)
    signs = _signs((m, c, 1), x)
    window = (x_win + eps * signs).clamp_(0, 1)
    stale = ((window - best_win).abs_() < 1e-7).flatten(1).all(dim=1)
    if bool(stale.any()):
        # flip a uniformly drawn non-empty subset of the channels: uniform over the other vectors
        bits = min(c, 62)
        k = torch.randint(1, 2 ** bits, (m, 1), device=x.device)
        flip = ((k >> torch.arange(bits, device=x.device)) & 1).bool()
        if c > bits:
            flip = torch.cat([flip, torch.rand(m, c - bits, device=x.device) < 0.5], dim=1)
        flip &= stale.unsqueeze(1)
        signs = torch.where(flip.unsqueeze(2), -signs, signs)
        window = (x_win + eps * signs).clamp_(0, 1)
    return best_flat.clone().scatter_(2, at, window).view_as(x)


def l2_init(x: torch.Tensor, eps: float) -> torch.Tensor:
    """The L2 start (the paper's L2 initialisation): a grid of tiles of side ``h // 5``, each
    holding the ``eta`` pattern (randomly transposed) with a random sign per channel, rescaled to
    ‖δ‖₂ = ε."""
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    delta = torch.zeros_like(x)
    base = eta(s, x.device).to(x.dtype)
    top0, left0 = max((h - 5 * s) // 2, 0), max((w - 5 * s) // 2, 0)
    for i in range(h // s):
        for j in range(w // s):
            top, left = top0 + i * s, left0 + j * s
            if top >= h or left >= w:
                continue
            flip = torch.rand(n, device=x.device) < 0.5
            tile = torch.where(flip.view(n, 1, 1, 1), base.t(), base) * _signs((n, c, 1, 1), x)
            hh, ww = min(s, h - top), min(s, w - left)
            delta[:, :, top:top + hh, left:left + ww] += tile[:, :, :hh, :ww]
    return (x + _unit_l2(delta) * eps).clamp(0, 1)


def l2_candidates(x: torch.Tensor, best: torch.Tensor, eps: float, s: int) -> torch.Tensor:
    """One L2 proposal per sample (Alg. 3, the L2 sampling distribution): two windows of side
    ``s`` at uniform positions; the perturbation's mass in both is moved into the first, as its
    old (normalised) content plus the ``eta`` pattern with a random sign per channel, scaled to
    use what is left of the budget, the second window is cleared, and the whole perturbation
    rescaled to ‖δ‖₂ = ε."""
    m, c, h, w = x.shape
    delta = (best - x).view(m, c, h * w)
    top1, left1 = _windows(m, s, h, w, x.device)
    top2, left2 = _windows(m, s, h, w, x.device)
    at1 = _flat_window(top1, left1, s, w).unsqueeze(1).expand(m, c, s * s)
    second = _mask(top2, left2, s, h, w).view(m, 1, h * w)
    union = second.clone().scatter_(2, at1[:, :1], True)
    sq = delta.square()
    norm_image2 = sq.sum(dim=(1, 2)).view(m, 1, 1)
    norm_windows2 = (sq * union).sum(dim=2, keepdim=True)  # (m, c, 1): per channel
    old = delta.gather(2, at1)
    old = old / (old.square().sum(dim=2, keepdim=True).sqrt() + 1e-12)
    base = eta(s, x.device).to(x.dtype)
    flip = (torch.rand(m, device=x.device) < 0.5).view(m, 1, 1)
    pattern = torch.where(flip, base.t().reshape(1, 1, -1), base.reshape(1, 1, -1))
    new = pattern * _signs((m, c, 1), x) + old
    new = new / (new.square().sum(dim=2, keepdim=True).sqrt() + 1e-12)
    new = new * ((eps ** 2 - norm_image2).clamp_min(0) / c + norm_windows2).sqrt()
    delta = delta.masked_fill(second, 0).scatter_(2, at1, new).view_as(x)
    return (x + _unit_l2(delta) * eps).clamp_(0, 1)


class SquareConfig(PluginConfig):
    norm: L2OrLinf = Field(Norm.LINF, description="linf or l2")
    max_queries: int = Field(5000, ge=1, description="per-sample query budget (all restarts, the "
                             "clean check and the initial point included)")
    p_init: float = Field(0.8, gt=0, le=1, description="initial fraction of pixels a square covers")
    restarts: int = Field(1, ge=1, description="runs from fresh starting points on the samples not "
                          "fooled yet, sharing the budget equally")
    loss: Literal["margin", "ce"] = Field("margin", description="margin (of log-probabilities, "
                                          "i.e. of logits) or ce; targeted runs use each one's "
                                          "targeted form")


class Square(FixedBudgetAttack):
    """Square Attack (Andriushchenko et al., "Square Attack: a query-efficient black-box
    adversarial attack via random search", ECCV 2020), score-based, L∞ and L2, untargeted or
    targeted: the random search of Algorithm 1 with the sampling distributions of Algorithm 2
    (L∞) and Algorithm 3 (L2).

    Random search: from a start (L∞: vertical stripes of ±ε; L2: a grid of ±'pseudo-Gaussian'
    tiles at ‖δ‖ = ε), each iteration proposes a change within a square window whose side covers
    a fraction p of the image (L∞: the window set to x ± ε with a random sign per channel; L2:
    mass moved between two windows) and keeps it when the loss (the margin of
    log-probabilities, which equals the logit margin, or cross-entropy) does not get worse,
    or when it fools the model. p starts at ``p_init`` and halves on the paper's schedule
    (iterations 10, 50, 200, 500, 1k, 2k, 4k, 6k, 8k of 10k, rescaled to the number of
    iterations, :func:`p_schedule`). A sample stops at its first adversarial point.

    Queries: one for the clean input (a sample it already fools is returned as is), one for the
    start, then one per iteration; ``max_queries`` bounds the total per sample. With
    ``restarts`` > 1 the samples not yet fooled restart from a fresh start with an equal share
    of what is left. Windows are placed independently per sample (the authors' code; AutoAttack
    shares one window across the batch) over all h − s + 1 rows and columns where one fits, and an
    L∞ sign draw that would change nothing is replaced by another sign vector instead of
    spending a query (the authors' code draws again). Candidates tying the best loss are
    accepted, so a saturated oracle (probabilities rounded to 0 or 1) still lets the search move.
    Defaults: 5,000 queries, ``p_init`` 0.8 and the margin loss, as in AutoAttack's Square (the
    paper tunes ``p_init`` per data set and norm).
    """

    id: ClassVar[str] = "square"
    norm: ClassVar[Norm] = Norm.LINF
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX
    oracle_output: ClassVar[str] = "scores"
    Config = SquareConfig

    def run(self, model, x, y, eps, targets):
        cfg, n = self.config, x.shape[0]
        if n == 0:
            return x.clone()
        index = torch.arange(n, device=x.device)
        clean = self._judge(model(x, index), y, targets)[1]
        best = x.clone()
        loss = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
        done = clean.clone()
        left = cfg.max_queries - 1
        runs = min(cfg.restarts, left)
        for r in range(runs):
            rows = (~done).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            share = left // (runs - r)
            left -= share
            sub = None if targets is None else targets[rows]
            adv, run_loss, fooled = self._single_run(model, x[rows], y[rows], sub, rows, eps, share)
            better = fooled | (run_loss >= loss[rows])
            best[rows[better]] = adv[better]
            loss[rows[better]] = run_loss[better]
            done[rows] = fooled
        return best

    def _judge(self, scores: torch.Tensor, y: torch.Tensor,
               targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss to maximise (on log-probabilities) and whether each row fools the model."""
        log_p = scores.log()
        loss = attack_loss(log_p, y, targets, self.config.loss)
        pred = scores.argmax(dim=1)
        return loss, (pred == targets) if targets is not None else (pred != y)

    def _single_run(self, oracle, x, y, targets, index, eps, queries):
        """One random search spending at most ``queries`` per sample (start included); returns
        the best points, their losses and whether they fool the model. The samples still being
        attacked are kept in compact working tensors, re-compacted only when some are fooled."""
        norm, (_, _, h, w) = self.threat_norm, x.shape
        best = linf_init(x, eps) if norm is Norm.LINF else l2_init(x, eps)
        loss, fooled = self._judge(oracle(best, index), y, targets)
        propose = linf_candidates if norm is Norm.LINF else l2_candidates
        iterations = queries - 1
        rows = (~fooled).nonzero().squeeze(1)  # this run's samples still being attacked
        xa, ba, la, ia, ya = x[rows], best[rows], loss[rows], index[rows], y[rows]
        ta = None if targets is None else targets[rows]
        for it in range(iterations):
            if rows.numel() == 0:
                break
            s = side_length(p_schedule(it, iterations, self.config.p_init), h, w, norm)
            cand = propose(xa, ba, eps, s)
            cand_loss, cand_fooled = self._judge(oracle(cand, ia), ya, ta)
            accept = cand_fooled | (cand_loss >= la)
            ba = torch.where(_col(accept, cand.dim()), cand, ba)
            la = torch.where(accept, cand_loss, la)
            if bool(cand_fooled.any()):
                best[rows], loss[rows], fooled[rows] = ba, la, cand_fooled
                keep = (~cand_fooled).nonzero().squeeze(1)
                rows, xa, ba, la, ia, ya = rows[keep], xa[keep], ba[keep], la[keep], ia[keep], ya[keep]
                ta = None if ta is None else ta[keep]
        best[rows], loss[rows] = ba, la
        return best, loss, fooled


@hookimpl
def arena_register_attacks(register):
    register(Square)
