"""Decision-based black-box attacks, batched over samples: HopSkipJump and the Boundary attack.

Both see the model only through a labels-only :class:`arena.model.QueryOracle`. Every phase sends
the rows of all still-running samples together, in oracle calls of up to ``query_batch_size``
rows (HopSkipJump's gradient probes of all samples as one stream of full calls), with ``index``
naming the sample each row belongs to, so the oracle's per-sample counts are exact. Black-box
attacks run in an attacker process by default (:mod:`arena.isolation`), where every call is a
pipe round trip, so the calls are kept few. Before each phase a sample checks
what its budget (``max_queries``) still allows: a binary search or a step-size search stops
early, a gradient estimate uses fewer probes, and a sample that cannot pay for a useful
iteration leaves the batch with the best verified adversarial point it has. The oracle is
therefore never asked past the budget and ``QueryBudgetExceeded`` is never raised.

Every point kept as a result was answered "adversarial" by the oracle itself.
"""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field

from arena import hookimpl
from arena.attack import MinimalAttack
from arena.model import QueryOracle
from arena.plugin import PluginConfig
from arena.threat import Knowledge, L2OrLinf, Norm

_UNLIMITED = 1 << 62
_INIT_TOLERANCE = 1e-3  # blend bisection of the starting point (Chen et al.'s code and ART)
_CHUNK_HELP = "most rows per oracle call; default 512 on a CPU, 16,384 on a GPU"
_HSJ_CHUNK_HELP = ("most rows per oracle call; default on a CPU 256, fewer for inputs above 1,024 "
                   "features (about 1 MiB of input per call, at least 16 rows), on a GPU 16,384")
_CPU_CALL_FLOATS = 1 << 18  # input floats per oracle call on a CPU when sized by the input
_MAX_HALVINGS = 25  # geometric step search: stop after ξ has shrunk by 2**-25 (the paper: never)


def _col(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A per-row value ``t`` of shape ``(n,)`` viewed to broadcast against ``ref`` ``(n, ...)``."""
    return t.view(-1, *([1] * (ref.dim() - 1)))


def default_chunk(device: torch.device, features: int | None = None) -> int:
    """Rows per oracle call: 16,384 on a GPU; on a CPU 512, or with ``features`` (the input's
    size) the power of two nearest below ``2**18 / features`` rows, within [16, 256].

    The oracle runs each call as one forward pass. On a CPU a batch buys nothing past a few
    dozen rows (one thread; both CNNs of the benchmarks cost the same per row from 32 to 256
    rows), while big batches' activation buffers can be handed back to the OS by the allocator
    after a call and faulted in afresh at the next, depending on the heap's state: at 512 rows
    the Fashion-MNIST CNN of ``benchmarks/art_reference.py`` took up to 1.9 M minor faults in
    one 30-sample HopSkipJump run, 40% of its time in the kernel and twice the time of 256-row
    calls; the 8×8 digits CNN 3,000 faults per call and 1.9× the time per row. ART's
    HopSkipJump predicts in 64-row batches and never paid this. 256 rows (fewer for inputs
    above 1,024 features, about 1 MiB of input per call) stayed clear of it and keeps the calls,
    each a pipe round trip to an isolated attacker, few."""
    if device.type == "cuda":
        return 16_384
    if features is None:
        return 512
    rows = max(1, _CPU_CALL_FLOATS // max(1, features))
    return min(256, max(16, 1 << (rows.bit_length() - 1)))


class Decider:
    """The adversarial criterion as a labels-only oracle answers it, within per-sample budgets.

    ``decide(rows, index)`` queries ``rows`` (row ``k`` belonging to sample ``index[k]``) in chunks
    of at most ``chunk`` rows and says which are adversarial: label ≠ y (untargeted) or label = the
    sample's target. ``left()`` is each sample's remaining budget.
    """

    def __init__(self, oracle: QueryOracle, y: torch.Tensor, targets: torch.Tensor | None,
                 chunk: int | None, features: int | None = None) -> None:
        self.oracle, self.targets = oracle, targets
        self.chunk = chunk or default_chunk(oracle.counts.device, features)
        self.goal = (targets if targets is not None else y).to(oracle.counts.device)

    def left(self) -> torch.Tensor:
        if self.oracle.budget is None:
            return torch.full_like(self.oracle.counts, _UNLIMITED)
        return self.oracle.budget - self.oracle.counts

    def __call__(self, rows: torch.Tensor, index: torch.Tensor, clamped: bool = False) -> torch.Tensor:
        """Which ``rows`` are adversarial (``clamped``: the caller already clipped them to [0, 1])."""
        if not clamped:
            rows = rows.clamp(0, 1)
        labels = torch.cat([self.oracle(rows[i:i + self.chunk], index[i:i + self.chunk])
                            for i in range(0, rows.shape[0], self.chunk)])
        goal = self.goal[index]
        return labels == goal if self.targets is not None else labels != goal


def _toward(x0: torch.Tensor, adv: torch.Tensor, alpha: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The point at parameter ``alpha`` on the path from ``x0`` (0) to ``adv``: a blend for L2, the
    L∞ box of radius ``alpha`` around ``x0`` for L∞ (Chen et al. 2020, Algorithm 2 / eq. 12)."""
    a = _col(alpha, x0)
    if norm is Norm.LINF:
        return torch.minimum(torch.maximum(adv, x0 - a), x0 + a)
    return x0 + a * (adv - x0)


def boundary_search(decide: Decider, x0: torch.Tensor, adv: torch.Tensor, index: torch.Tensor,
                    norm: Norm, hi: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Bisection between ``x0`` and the adversarial ``adv`` along ``_toward`` until the bracket is
    narrower than ``tol`` (or the sample's budget is spent); returns the adversarial end
    (Chen et al. 2020, §3.2 and Algorithm 2 "binary search"). One oracle call per halving."""
    hi, lo = hi.clone(), torch.zeros_like(hi)
    while True:
        need = ((hi - lo) > tol) & (decide.left()[index] >= 1)
        sel = need.nonzero().squeeze(1)
        if sel.numel() == 0:
            return _toward(x0, adv, hi, norm)
        mid = (lo[sel] + hi[sel]) / 2
        ok = decide(_toward(x0[sel], adv[sel], mid, norm), index[sel])
        hi[sel] = torch.where(ok, mid, hi[sel])
        lo[sel] = torch.where(ok, lo[sel], mid)


def _from_batch(decide: Decider, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                start: torch.Tensor, found: torch.Tensor) -> None:
    """Fallback starting points taken from the attacked batch itself: another input labelled the
    target (targeted) or another class (untargeted), verified by one query each. The attacker
    holds these inputs and their labels, so this stays within the black-box threat model."""
    same = y.unsqueeze(0) == (targets if targets is not None else y).unsqueeze(1)
    match = same if targets is not None else ~same  # match[i, j]: x_j may start sample i
    match.fill_diagonal_(False)
    rows = (match.any(1) & ~found & (decide.left() >= 1)).nonzero().squeeze(1)
    if rows.numel() == 0:
        return
    pick = (torch.rand(match.shape, device=x.device) * match)[rows].argmax(1)
    ok = decide(x[pick], rows)
    start[rows[ok]] = x[pick[ok]]
    found[rows[ok]] = True


def start_points(decide: Decider, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                 trials: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial adversarial points (Chen et al. 2020, §3.2 / their code's ``initialize``; ART):
    up to ``trials`` rounds of uniform noise, one query per unfinished sample and round, then the
    batch fallback of :func:`_from_batch`, then a blend bisection towards ``x`` (tolerance 1e-3)."""
    start, found = x.clone(), torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(trials):
        rows = (~found & (decide.left() >= 1)).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        noise = torch.rand_like(x[rows])
        ok = decide(noise, rows)
        start[rows[ok]], found[rows[ok]] = noise[ok], True
    _from_batch(decide, x, y, targets, start, found)
    rows = found.nonzero().squeeze(1)
    ones = torch.ones(rows.numel(), dtype=x.dtype, device=x.device)
    start[rows] = boundary_search(decide, x[rows], start[rows], rows, Norm.L2, ones, ones * _INIT_TOLERANCE)
    return start, found


class Best:
    """The closest verified adversarial point of every sample so far (``x`` itself if none)."""

    def __init__(self, x: torch.Tensor, norm: Norm) -> None:
        self.x0, self.norm, self.x = x, norm, x.clone()
        self.dist = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)

    def offer(self, index: torch.Tensor, points: torch.Tensor) -> None:
        dist = self.norm.measure(points - self.x0[index])
        better = dist < self.dist[index]
        self.x[index[better]] = points[better]
        self.dist[index[better]] = dist[better]


def estimate_directions(decide: Decider, cur: torch.Tensor, index: torch.Tensor,
                        evals: torch.Tensor, delta: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Monte-Carlo estimate of the boundary's normal at ``cur`` from ``evals[i]`` probes of radius
    ``delta[i]`` (Chen et al. 2020, §4.1 eq. 9 with the baseline of eq. 16; Gaussian probes for L2,
    uniform for L∞, as in their code): unit L2 direction for L2, its sign for L∞ (§4.2).

    The probes of all samples form one stream of rows, sent in oracle calls of ``decide.chunk``
    rows each (a call may hold the probes of several samples, a sample's probes may span calls),
    so every call but the last is full and the pipe round trips to an isolated attacker's oracle
    are as few as the chunk size allows. Only per-sample sums are kept (``Σ f·u``, ``Σ u``,
    ``Σ f``; the baseline-corrected sum is ``Σ f·u − mean(f)·Σ u``), so memory is one chunk of
    probes whatever the probe count."""
    n, shape = cur.shape[0], cur.shape[1:]
    flat = cur.flatten(1)
    owner = torch.repeat_interleave(torch.arange(n, device=cur.device), evals)
    s_fu, s_u = torch.zeros_like(flat), torch.zeros_like(flat)
    s_f = torch.zeros(n, dtype=cur.dtype, device=cur.device)
    for r0 in range(0, owner.numel(), decide.chunk):
        own = owner[r0:r0 + decide.chunk]
        if norm is Norm.L2:
            noise = torch.randn(own.numel(), flat.shape[1], dtype=cur.dtype, device=cur.device)
        else:
            noise = torch.rand(own.numel(), flat.shape[1], dtype=cur.dtype, device=cur.device).mul_(2).sub_(1)
        rad = delta[own].unsqueeze(1)
        base = flat[own]
        probes = noise.div_(noise.norm(dim=1, keepdim=True)).mul_(rad).add_(base).clamp_(0, 1)
        fval = decide(probes.view(-1, *shape), index[own], clamped=True).to(cur.dtype).mul_(2).sub_(1)
        unit = probes.sub_(base).div_(rad)  # the probe direction after clipping, as in their code
        s_fu.index_add_(0, own, unit * fval.unsqueeze(1))
        s_u.index_add_(0, own, unit)
        s_f.index_add_(0, own, fval)
    mean = (s_f / evals.to(cur.dtype)).unsqueeze(1)
    grad = torch.where(mean.abs() == 1, s_fu, s_fu - mean * s_u).view_as(cur)
    if norm is Norm.LINF:
        return grad.sign()
    return grad / _col(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def step_search(decide: Decider, x0: torch.Tensor, cur: torch.Tensor, update: torch.Tensor,
                index: torch.Tensor, t: int, norm: Norm) -> torch.Tensor:
    """Geometric step-size search (Chen et al. 2020, §4.2): ξ = ‖x_t − x*‖ / √t, halved until
    ``x_t + ξ·v`` is adversarial. A sample that runs out of budget keeps ``cur``."""
    size = norm.measure(cur - x0) / math.sqrt(t)
    out, pending = cur.clone(), torch.ones(cur.shape[0], dtype=torch.bool, device=cur.device)
    for _ in range(_MAX_HALVINGS):
        sel = (pending & (decide.left()[index] >= 1)).nonzero().squeeze(1)
        if sel.numel() == 0:
            break
        cand = (cur[sel] + _col(size[sel], cur) * update[sel]).clamp(0, 1)
        ok = decide(cand, index[sel])
        out[sel[ok]] = cand[ok]
        pending[sel[ok]] = False
        size[sel] = torch.where(ok, size[sel], size[sel] / 2)
    return out


class HopSkipJumpConfig(PluginConfig):
    norm: L2OrLinf = Field(Norm.L2, description="l2 or linf")
    max_iterations: int = Field(50, ge=0, description="iterations (seed 000 Table II: 50)")
    init_evals: int = Field(100, ge=1, description="probes of the first gradient estimate (Table II: 100)")
    max_evals: int = Field(10_000, ge=1, description="cap of the √t-growing probe count")
    init_size: int = Field(1000, ge=0, description="noise trials for a start (Table II: 1,000; ART: 100)")
    gamma: float = Field(1.0, gt=0, description="θ = γ / d^1.5 (L2) or γ / d² (L∞)")
    max_queries: int | None = Field(None, ge=1, description="per-sample query budget")
    query_batch_size: int | None = Field(None, ge=1, description=_HSJ_CHUNK_HELP)


class HopSkipJump(MinimalAttack):
    """HopSkipJump, labels only (Chen, Jordan and Wainwright, "HopSkipJumpAttack: A
    Query-Efficient Decision-Based Attack", IEEE S&P 2020; Algorithm 2), L2 or L∞.

    Start from uniform noise that the oracle labels adversarially (then from another input of the
    batch), bisect to the boundary, and iterate: estimate the boundary's normal from
    ``init_evals·√t`` probes of radius δ_t = √d·θ·‖x_t − x*‖ (L2; d·θ·‖·‖∞ for L∞, 0.1 at
    t = 1; eq. 16 and §5 "δ_t"), step ξ_t = ‖x_t − x*‖/√t along it (its sign for L∞), halving ξ
    until adversarial (§4.2, geometric progression), and bisect back to the boundary with
    tolerance θ = γ/d^{3/2} (L2) or γ/d² (L∞). Defaults follow seed 000 Table II (ART: init eval
    100, init size 1,000, max iter 50). Targeted runs start from noise of the target class or
    another input of the batch labelled the target; a sample with no start is returned
    unchanged. All samples advance together; the best verified point is kept.
    """

    id: ClassVar[str] = "hopskipjump"
    norm: ClassVar[Norm] = Norm.L2
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX
    Config = HopSkipJumpConfig

    def run(self, model, x, y, eps, targets):
        cfg, norm = self.config, self.threat_norm
        decide = Decider(model, y, targets, cfg.query_batch_size, features=x[0].numel())
        start, found = start_points(decide, x, y, targets, cfg.init_size)
        best, active = Best(x, norm), found.nonzero().squeeze(1)
        cur, d = start[active], x[0].numel()
        best.offer(active, cur)
        theta = cfg.gamma / (d ** 1.5 if norm is Norm.L2 else d ** 2)
        scale = (math.sqrt(d) if norm is Norm.L2 else d) * theta
        reserve = math.ceil(math.log2(1 / theta)) + 2  # a bisection and a step after the probes
        for t in range(1, cfg.max_iterations + 1):
            dist = norm.measure(cur - x[active])
            delta = scale * dist if t > 1 else torch.full_like(dist, 0.1)  # δ_1 = 0.1·(max − min)
            cur = self._to_boundary(decide, x[active], cur, active, theta)
            best.offer(active, cur)
            schedule = min(int(cfg.init_evals * math.sqrt(t)), cfg.max_evals)
            evals = (decide.left()[active] - reserve).clamp(max=schedule)
            keep = evals >= min(cfg.init_evals, 10)  # too few probes left: stop at the boundary
            active, cur, evals, delta = active[keep], cur[keep], evals[keep], delta[keep]
            if active.numel() == 0:
                break
            update = estimate_directions(decide, cur, active, evals, delta, norm)
            cur = step_search(decide, x[active], cur, update, active, t, norm)
        if active.numel():
            best.offer(active, self._to_boundary(decide, x[active], cur, active, theta))
        return best.x

    def _to_boundary(self, decide, x0, cur, index, theta):
        """Bisect back to the boundary with the paper's tolerance (θ; θ·‖·‖∞ capped at θ for L∞)."""
        if self.threat_norm is Norm.L2:
            ones = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
            return boundary_search(decide, x0, cur, index, Norm.L2, ones, ones * theta)
        hi = Norm.LINF.measure(cur - x0)
        return boundary_search(decide, x0, cur, index, Norm.LINF, hi, (hi * theta).clamp(max=theta))


class BoundaryConfig(PluginConfig):
    steps: int = Field(5000, ge=1, description="iterations per sample (foolbox: 25,000)")
    spherical_step: float = Field(0.01, gt=0, description="orthogonal step, relative to the distance")
    source_step: float = Field(0.01, gt=0, description="step towards the input, relative to the distance")
    step_adaptation: float = Field(1.5, gt=1, description="factor of the step-size adaptation")
    convergence: float = Field(1e-7, gt=0, description="a sample stops when source_step falls below")
    init_size: int = Field(1000, ge=0, description="noise trials for a start")
    max_queries: int | None = Field(None, ge=2, description="per-sample query budget")
    query_batch_size: int | None = Field(None, ge=1, description=_CHUNK_HELP)


class _Queue:
    """Per-sample ring of the last ``size`` outcomes (foolbox 3's ``ArrayQueue``), NaN = empty."""

    def __init__(self, n: int, size: int, device: torch.device) -> None:
        self.buf = torch.full((n, size), math.nan, device=device)

    def push(self, index: torch.Tensor, value: torch.Tensor) -> None:
        self.buf[index] = torch.cat([self.buf[index, 1:], value.float().unsqueeze(1)], 1)

    def rates(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether each sample's ring is full, and its mean outcome."""
        rows = self.buf[index]
        return ~rows[:, 0].isnan(), rows.nanmean(1)

    def clear(self, index: torch.Tensor) -> None:
        self.buf[index] = math.nan


def proposals(x0: torch.Tensor, adv: torch.Tensor, spherical: torch.Tensor,
              source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One orthogonal step on the sphere around ``x0`` and one step towards it (Brendel et al.
    2018, §3.2 and Fig. 2; foolbox 3's ``draw_proposals``): returns (candidate, spherical)."""
    o, p = x0.flatten(1), adv.flatten(1)
    diff = o - p
    dist = diff.norm(dim=1, keepdim=True)
    unit = diff / dist
    eta = torch.randn_like(p)
    eta = eta - (eta * unit).sum(1, keepdim=True) * unit
    eta = eta * (spherical.unsqueeze(1) * dist / eta.norm(dim=1, keepdim=True))
    sph = (o + (eta - diff) / (spherical.square() + 1).sqrt().unsqueeze(1)).clamp(0, 1)
    towards = o - sph
    tnorm = towards.norm(dim=1, keepdim=True)
    length = (source.unsqueeze(1) * dist + tnorm - dist).clamp_min(0) / tnorm
    cand = (sph + length * towards).clamp(0, 1)
    return cand.view_as(adv), sph.view_as(adv)


class Boundary(MinimalAttack):
    """The Boundary attack, L2, labels only (Brendel, Rauber and Bethge, "Decision-Based
    Adversarial Attacks: Reliable Attacks Against Black-Box Machine Learning Models", ICLR 2018,
    §3), batched as in foolbox 3.

    From an adversarial start (uniform noise, else another input of the batch, bisected towards
    the input), each step draws a random orthogonal step of relative size ``spherical_step`` on
    the sphere around the input and a step of relative size ``source_step`` towards it (§3.2),
    and keeps the candidate when adversarial and closer. Every 10th step also checks the
    spherical candidate; over the last 100 (spherical) and 30 (full) checks, success rates
    above 50% / 25% grow the steps by ``step_adaptation`` and rates below 20% / 10% shrink
    them (§3.3, "Hyperparameter adjustment"; foolbox's rules). Queries: one per step, two on
    every 10th.
    """

    id: ClassVar[str] = "boundary"
    norm: ClassVar[Norm] = Norm.L2
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX
    Config = BoundaryConfig

    def run(self, model, x, y, eps, targets):
        cfg, n = self.config, x.shape[0]
        decide = Decider(model, y, targets, cfg.query_batch_size)
        best, alive = start_points(decide, x, y, targets, cfg.init_size)
        steps = torch.tensor([[cfg.spherical_step], [cfg.source_step]], device=x.device).repeat(1, n)
        queues = (_Queue(n, 100, x.device), _Queue(n, 30, x.device))
        for step in range(1, cfg.steps + 1):
            check = step % 10 == 0
            alive &= (steps[1] >= cfg.convergence) & (decide.left() >= 1 + check)
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            cand, sph = proposals(x[idx], best[idx], steps[0, idx], steps[1, idx])
            rows, index = (torch.cat([cand, sph]), idx.repeat(2)) if check else (cand, idx)
            answers = decide(rows, index)
            is_adv = answers[:idx.numel()]
            closer = Norm.L2.measure(cand - x[idx]) < Norm.L2.measure(best[idx] - x[idx])
            take = is_adv & closer
            best[idx[take]] = cand[take]
            if check:
                self._adapt(steps, queues, idx, answers[idx.numel():], is_adv)
        return best

    def _adapt(self, steps, queues, idx, sph_adv, is_adv) -> None:
        """foolbox 3's step-size adaptation from the spherical and full success rates."""
        a = self.config.step_adaptation
        queues[0].push(idx, sph_adv)
        queues[1].push(idx, is_adv)
        # spherical success adapts both steps; full-step success adapts the source step only
        rules = ((queues[0], (0.5, 0.2), slice(None)), (queues[1], (0.25, 0.1), slice(1, 2)))
        for q, (hi, lo), which in rules:
            full, rate = q.rates(idx)
            up, down = full & (rate > hi), full & (rate < lo)
            factor = torch.where(up, a, torch.where(down, 1 / a, 1.0))
            steps[which, idx] *= factor
            q.clear(idx[up | down])


@hookimpl
def arena_register_attacks(register):
    register(HopSkipJump)
    register(Boundary)
