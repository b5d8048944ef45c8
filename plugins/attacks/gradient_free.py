"""Gradient-free black-box attacks with a fixed budget: SPSA and the random-noise baseline.

Both see the model through a :class:`arena.model.QueryOracle` only: SPSA through scores (softmax
probabilities; its margin is taken on log-probabilities, whose differences are the logits'),
the noise baseline through labels. Every phase sends the rows of all samples still being
attacked in as few oracle calls as memory allows (``query_batch_size`` rows at most), with
``index`` naming each row's sample, and each attack plans its work from ``max_queries`` so that
``QueryBudgetExceeded`` is never raised.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import torch
from pydantic import Field

from arena import hookimpl
from arena.attack import FixedBudgetAttack
from arena.plugin import PluginConfig
from arena.threat import Knowledge, L2OrLinf, Norm
from arena_builtins.attacks.gradient import random_start
from arena_builtins.attacks.losses import attack_loss

_CHUNK_HELP = "most rows per oracle call; default 4M input values' worth (at least 1,024 rows)"
_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8  # Adam's defaults (Kingma & Ba; cleverhans, advertorch)


def _col(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


def _chunk_rows(cfg_rows: int | None, x: torch.Tensor) -> int:
    return cfg_rows or max(1024, (1 << 22) // max(1, x[0].numel()))


def _budget_left(oracle) -> torch.Tensor:
    if oracle.budget is None:
        return torch.full_like(oracle.counts, 1 << 62)
    return oracle.budget - oracle.counts


def _project(x0: torch.Tensor, points: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """``points`` (shaped like ``x0`` or ``(n, k, *x0.shape[1:])``) projected onto the ε-ball
    around ``x0`` and the [0, 1] box."""
    base = x0 if points.dim() == x0.dim() else x0.unsqueeze(1)
    delta = points - base
    if norm is Norm.LINF:
        delta = delta.clamp(-eps, eps)
    else:
        flat = delta.flatten(points.dim() - x0.dim() + 1)
        scale = (eps / flat.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale.view(*scale.shape, *([1] * (x0.dim() - 1)))
    return (base + delta).clamp(0, 1)


def spsa_gradient(evaluate: Callable[[torch.Tensor], torch.Tensor], cur: torch.Tensor, delta: float,
                  pairs: int, project: Callable[[torch.Tensor], torch.Tensor] = lambda p: p,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPSA's estimate of the gradient of a loss at each row of ``cur`` (Spall 1992; Uesato et
    al. 2018, §3, Alg. 1): ``pairs`` Rademacher directions v per row, the loss at ``cur ± δ·v``,
    and ĝ = mean_v (f(cur + δv) − f(cur − δv)) / (2δ) · v (v⁻¹ = v for ±1 entries).

    ``evaluate`` maps the probes, shaped ``(m, 2·pairs, *cur.shape[1:])`` (the + probes first),
    to their losses ``(m, 2·pairs)``; ``project`` may move them into the feasible set first.
    Returns the estimate, the probes and their losses.
    """
    m = cur.shape[0]
    v = torch.randint(0, 2, (m, pairs, *cur.shape[1:]), device=cur.device).to(cur.dtype) * 2 - 1
    probes = project(cur.unsqueeze(1) + delta * torch.cat([v, -v], dim=1))
    losses = evaluate(probes)
    diff = (losses[:, :pairs] - losses[:, pairs:]) / (2 * delta)
    grad = (diff.view(m, pairs, *([1] * (cur.dim() - 1))) * v).mean(dim=1)
    return grad, probes, losses


class SPSAConfig(PluginConfig):
    norm: L2OrLinf = Field(Norm.LINF, description="linf or l2")
    steps: int = Field(100, ge=1, description="Adam steps (Uesato et al.: 100 on ImageNet-scale models)")
    delta: float = Field(0.01, gt=0, description="probe radius δ of the finite differences")
    lr: float = Field(0.01, gt=0, description="Adam's learning rate")
    samples: int = Field(128, ge=1, description="directions per gradient estimate; each step costs "
                         "2·samples queries per sample")
    loss: Literal["margin", "ce"] = Field("margin", description="margin (of log-probabilities, "
                                          "i.e. of logits; the paper's) or ce")
    random_start: bool = Field(False, description="start from a uniform point of the ε-ball "
                               "(cleverhans) instead of the input (advertorch)")
    early_stop: bool = Field(True, description="a sample stops at its first probe that fools the "
                             "model and keeps it (off: every sample runs all steps)")
    max_queries: int | None = Field(None, ge=1, description="per-sample query budget")
    query_batch_size: int | None = Field(None, ge=1, description=_CHUNK_HELP)


class SPSA(FixedBudgetAttack):
    """SPSA with Adam (Uesato, O'Donoghue, van den Oord and Kohli, "Adversarial Risk and the
    Dangers of Evaluating Against Weak Attacks", ICML 2018, §3 and Algorithm 1), L∞ or L2,
    scores only.

    Each step estimates the gradient of the loss (the margin of log-probabilities, equal to the
    logit margin the paper uses, or cross-entropy; their targeted forms when the harness gives
    targets) from ``samples`` Rademacher directions at radius ``delta``
    (:func:`spsa_gradient`), takes an Adam step of learning rate ``lr`` up it, and projects onto
    the ε-ball and [0, 1]. The probes themselves are projected onto the same set, so every
    probe is a feasible point: with ``early_stop`` a sample stops at the first probe that fools
    the model and returns it (cleverhans' SPSA stops once the loss shows success), at no
    extra query. A sample the clean input already fools is returned as is.

    Knowledge: black-box with scores (it never sees gradients or weights), so every query is
    counted: one clean check per sample (with ``early_stop``), then 2·``samples`` per step, e.g.
    25,601 at the defaults. With ``max_queries`` the last step uses as many directions as the
    budget still pays for, and a sample stops when it cannot pay for one pair. Defaults: δ = 0.01,
    lr = 0.01 and 128 directions (advertorch's and torchattacks' SPSA), 100 steps, Adam's
    β = (0.9, 0.999), no random start.
    """

    id: ClassVar[str] = "spsa"
    norm: ClassVar[Norm] = Norm.LINF
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX
    oracle_output: ClassVar[str] = "scores"
    Config = SPSAConfig

    def run(self, model, x, y, eps, targets):
        cfg, norm, n = self.config, self.threat_norm, x.shape[0]
        out = x.clone()
        if n == 0:
            return out
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        if cfg.early_stop:
            done = self._fooled(model(x, torch.arange(n, device=x.device)).argmax(1), y, targets)
        if cfg.random_start:
            out = random_start(x, norm, eps)
        cur = out.clone()
        m1, m2 = torch.zeros_like(x), torch.zeros_like(x)
        chunk = _chunk_rows(cfg.query_batch_size, x)
        for step in range(1, cfg.steps + 1):
            left = _budget_left(model)
            rows = (~done & (left >= 2)).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            pairs = min(cfg.samples, int(left[rows].min()) // 2)
            grad, fooled_at = self._estimate(model, x, y, targets, cur, rows, pairs, eps, chunk)
            if cfg.early_stop:
                hit = fooled_at[0] >= 0
                out[rows[hit]] = fooled_at[1][hit]
                done[rows[hit]] = True
                keep = ~hit
                rows, grad = rows[keep], grad[keep]
            m1[rows] = _BETAS[0] * m1[rows] + (1 - _BETAS[0]) * grad
            m2[rows] = _BETAS[1] * m2[rows] + (1 - _BETAS[1]) * grad.square()
            m_hat = m1[rows] / (1 - _BETAS[0] ** step)
            v_hat = m2[rows] / (1 - _BETAS[1] ** step)
            # ascent: the loss is larger the more adversarial
            moved = cur[rows] + cfg.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
            cur[rows] = _project(x[rows], moved, norm, eps)
        out[~done] = cur[~done]
        return out

    @staticmethod
    def _fooled(pred: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        return pred == targets if targets is not None else pred != y

    def _estimate(self, oracle, x, y, targets, cur, rows, pairs, eps, chunk):
        """The gradient estimate at ``cur[rows]``, one oracle call per group of samples whose
        probes fit into ``chunk`` rows, and per sample the position of its first fooling probe
        (−1: none) with that probe."""
        cfg, norm = self.config, self.threat_norm
        per = max(1, chunk // (2 * pairs))
        grads, firsts, probes_kept = [], [], []
        for start in range(0, rows.numel(), per):
            sel = rows[start:start + per]
            m = sel.numel()
            owner = sel.repeat_interleave(2 * pairs)
            found: dict[str, torch.Tensor] = {}

            def evaluate(probes, m=m, owner=owner, found=found):
                scores = oracle(probes.flatten(0, 1), owner)
                yy = y[owner]
                tt = None if targets is None else targets[owner]
                found["fooled"] = self._fooled(scores.argmax(1), yy, tt).view(m, -1)
                return attack_loss(scores.log(), yy, tt, cfg.loss).view(m, -1)

            def project(p, sel=sel):
                return _project(x[sel], p, norm, eps)

            grad, probes, _ = spsa_gradient(evaluate, cur[sel], cfg.delta, pairs, project)
            fooled = found["fooled"]
            none = torch.full((m,), -1, device=x.device)
            first = torch.where(fooled.any(1), fooled.float().argmax(1), none)
            grads.append(grad)
            firsts.append(first)
            probes_kept.append(probes[torch.arange(m, device=x.device), first.clamp_min(0)])
        return torch.cat(grads), (torch.cat(firsts), torch.cat(probes_kept))


# ------------------------------------------------------------------------ the noise baseline

def ball_noise(shape: tuple[int, ...], norm: Norm, eps: float, distribution: str = "uniform",
               device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random perturbations in the ε-ball, one per row of ``shape`` (``(n, *sample_shape)``).

    ``uniform``: L∞, every coordinate uniform in [−ε, ε] (uniform in the cube); L2, a Gaussian
    direction (uniform on the sphere) at a radius uniform in [0, ε]. ``surface``: L∞, every
    coordinate ±ε (the cube's corners); L2, a Gaussian direction at radius ε.
    """
    if distribution not in ("uniform", "surface"):
        raise ValueError(f"unknown distribution {distribution!r}; choose uniform or surface")
    if norm is Norm.LINF:
        if distribution == "uniform":
            return (torch.rand(shape, device=device, dtype=dtype) * 2 - 1) * eps
        return (torch.randint(0, 2, shape, device=device).to(dtype) * 2 - 1) * eps
    if norm is not Norm.L2:
        raise ValueError("the noise baseline is defined in 'l2' and 'linf' only")
    direction = torch.randn(shape, device=device, dtype=dtype)
    direction = direction / _col(direction.flatten(1).norm(dim=1).clamp_min(1e-12), len(shape))
    radius = eps * (torch.rand(shape[0], device=device, dtype=dtype) if distribution == "uniform"
                    else torch.ones(shape[0], device=device, dtype=dtype))
    return direction * _col(radius, len(shape))


class NoiseConfig(PluginConfig):
    norm: L2OrLinf = Field(Norm.LINF, description="linf or l2")
    draws: int = Field(100, ge=1, description="random points tried per sample (one query each)")
    distribution: Literal["uniform", "surface"] = Field(
        "uniform", description="uniform: uniform in the L∞ cube / Gaussian direction at a uniform "
        "radius in L2; surface: the cube's corners (±ε) / the L2 sphere")
    max_queries: int | None = Field(None, ge=1, description="per-sample query budget (caps draws)")


class Noise(FixedBudgetAttack):
    """Random noise in the ε-ball, labels only: the gradient-free sanity check of Carlini,
    Athalye, Papernot, Brendel, Rauber, Tsipras, Goodfellow, Madry and Kurakin ("On Evaluating
    Adversarial Robustness", arXiv:1902.06705, 2019; its checklist asks to try random noise and
    brute-force search: an attack worth the name must beat random perturbations of the same
    size, and if noise breaks about as much as a gradient attack, the evaluation is suspect).

    Up to ``draws`` points ``clip(x + δ, 0, 1)`` per sample, δ drawn by :func:`ball_noise`
    (``distribution``); a sample counts as broken at the first draw the oracle labels
    adversarially (≠ y, or = the target) and returns it; a sample never broken returns x. One
    oracle call per draw for all samples still unbroken, one query per sample per draw.
    """

    id: ClassVar[str] = "noise"
    norm: ClassVar[Norm] = Norm.LINF
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX
    oracle_output: ClassVar[str] = "labels"
    Config = NoiseConfig

    def run(self, model, x, y, eps, targets):
        cfg, norm = self.config, self.threat_norm
        out = x.clone()
        rows = torch.arange(x.shape[0], device=x.device)
        draws = cfg.draws if cfg.max_queries is None else min(cfg.draws, cfg.max_queries)
        for _ in range(draws):
            if rows.numel() == 0:
                break
            cand = (x[rows] + ball_noise((rows.numel(), *x.shape[1:]), norm, eps, cfg.distribution,
                                         x.device, x.dtype)).clamp(0, 1)
            pred = model(cand, rows)
            hit = pred == targets[rows] if targets is not None else pred != y[rows]
            out[rows[hit]] = cand[hit]
            rows = rows[~hit]
        return out


@hookimpl
def arena_register_attacks(register):
    register(SPSA)
    register(Noise)
