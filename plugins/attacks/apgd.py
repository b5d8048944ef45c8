"""Auto-PGD (Croce & Hein, ICML 2020) and its targeted form APGD-T, in L∞, L2 and L1.

APGD is PGD without a step size to tune: it starts with the step 2ε (L∞, L2), takes a heavy-ball
step (momentum α = 0.75), keeps per sample the point of highest loss, and at checkpoints fixed in
advance halves a sample's step size and restarts it from its best point when the loss rose in
fewer than ρ·(interval) of the steps since the last checkpoint, or when neither the step size
nor the best loss changed since then (Croce & Hein, 2020, §3, Algorithm 1). The L1 version is
l1-APGD (Croce & Hein, "Mind the box: l1-APGD for sparse adversarial attacks on image
classifiers", ICML 2021): steps along the signs of the k largest gradient components, projected
onto the L1 ball ∩ [0, 1] box exactly, with k adapted to the sparsity of the best point and the
step size reset to ε or divided by 1.5 at every checkpoint.

The schedule, the constants, the random starts and the losses follow the authors' reference
implementation (``autoattack/autopgd_base.py``); the code is the arena's own. Where it departs:

* checkpoints are the paper's ⌈p_j·N⌉ (the reference's integer intervals give the same ones
  for N = 100, other ones for small N), and the oscillation test is the paper's strict "fewer
  than ρ·interval" (the reference: "at most"); the first interval counts the rise from the
  start point (the reference compares the first step's loss with 0), and after a restart from
  x_max the next step is compared with f(x_max);
* a sample leaves the run at its first adversarial iterate (the reference keeps iterating and
  returns its last adversarial one: the same samples succeed, at a fraction of the cost);
* a deterministic model is called once per step whatever ``eot_iter`` says;
* APGD-T ranks the target classes once on the clean logits (the reference ranks them again on
  the survivors before each target: the same classes for a deterministic model);
* with ``large_eps`` the stage at ε keeps at least one step (the reference leaves it none
  for N = 4); the L1 projection is bisection to float32 resolution, not sorting.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field, model_validator

from arena import hookimpl
from arena.attack import FixedBudgetAttack, RunOutput
from arena.errors import ConfigError
from arena.plugin import PluginConfig
from arena.threat import L1L2OrLinf, Norm, project_l1_box
from arena_builtins.attacks.losses import Loss, attack_loss

# l1-APGD's constants (reference: alpha = 1, adasp_redstep = 1.5, adasp_minstep = 10, the
# checkpoint interval 4% of the steps, the start sparsity 20% of the features, and a sample
# whose best point lost more than 5% of its nonzero components since the last checkpoint
# restarts from it with the full step).
_L1_SHRINK, _L1_MIN_STEP, _L1_INTERVAL, _L1_START_K, _L1_SPARSER = 1.5, 10.0, 0.04, 0.2, 0.95
# The reference's ε-schedule for l1-APGD with ``use_largereps`` (AutoAttack's L1 'standard'):
# multiples of ε, over 30%, 30% and 40% of the steps (``_stage_steps``).
_LARGE_EPS = (3.0, 2.0, 1.0)


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ⌈p_j·N⌉ (0 < w_j < N) at which APGD may halve its step size, with
    p_0 = 0, p_1 = 0.22 and p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) (§3.2). Computed in
    hundredths so that no rounding moves a checkpoint; for N = 100: 22, 41, 57, 70, 80, 87, 93, 99."""
    out: list[int] = []
    prev, p = 0, 22
    while True:
        w = -(-p * steps // 100)  # ⌈p·N / 100⌉
        if w >= steps:
            return out
        if w >= 1 and (not out or w > out[-1]):
            out.append(w)
        prev, p = p, p + max(p - prev - 3, 6)


def halving(improved: torch.Tensor, interval: int, rho: float, reduced_before: torch.Tensor,
            best_before: torch.Tensor, best_now: torch.Tensor) -> torch.Tensor:
    """Which samples halve their step size at a checkpoint (§3.2): those whose loss rose in fewer
    than ``rho · interval`` of the ``interval`` steps since the last checkpoint (condition 1), or
    whose step size was not reduced at the last checkpoint and whose best loss has not risen since
    (condition 2). The reference tests ``≤`` in condition 1; the paper, as here, ``<``."""
    oscillating = improved.to(torch.float32) < rho * interval
    stalled = ~reduced_before & (best_now <= best_before)
    return oscillating | stalled


class APGDConfig(PluginConfig):
    norm: L1L2OrLinf = Norm.LINF
    loss: Loss = Field("ce", description="ce (APGD-CE), dlr (APGD-DLR, Eq. 5) or margin; "
                       "targeted forms when the harness gives targets")
    steps: int = Field(100, ge=1, description="iterations per run (AutoAttack: 100)")
    restarts: int = Field(1, ge=1, description="runs from random starts; a later one only on "
                          "the samples not fooled yet")
    rho: float = Field(0.75, gt=0, le=1, description="ρ of the oscillation test (§3.2)")
    momentum: float = Field(0.75, ge=0, le=1, description="α of the heavy-ball step (§3.1); "
                            "the L1 version takes plain steps, as the reference does")
    eot_iter: int = Field(1, ge=1, description="gradients averaged per step against a model "
                          "that declares `randomized` (AutoAttack's 'rand' version: 20)")
    early_stop: bool = Field(True, description="a sample leaves the batch at its first "
                             "adversarial iterate and keeps it (off: every sample runs every "
                             "step and restart and keeps its point of highest loss)")
    large_eps: bool = Field(False, description="L1 only: the reference's use_largereps, runs at "
                            "3ε, 2ε and ε for 30%, 30% and 40% of the steps, each from the "
                            "previous one's best point (AutoAttack's L1 'standard' sets it)")

    @model_validator(mode="after")
    def _large_eps_is_l1(self):
        if self.large_eps and self.norm is not Norm.L1:
            raise ValueError("large_eps is defined for norm 'l1' only")
        if self.large_eps and self.steps < 3:
            raise ValueError("large_eps runs three stages and needs steps >= 3")
        return self


class APGDTConfig(APGDConfig):
    loss: Loss = Field("dlr", description="the targeted objective: dlr (Eq. 6, AutoAttack's "
                       "APGD-T), ce (the reference's ce-targeted) or margin")
    n_target_classes: int = Field(9, ge=1, description="the runner-up classes of the clean "
                                  "logits attacked in turn (capped at the class count − 1)")


class APGD(FixedBudgetAttack):
    """Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble
    of diverse parameter-free attacks", ICML 2020, §3, Algorithm 1; losses of §4: ``ce`` is
    APGD-CE, ``dlr`` APGD-DLR, Eq. 5), and in L1 l1-APGD (Croce & Hein, "Mind the box", ICML
    2021). See the module docstring for the algorithm and where it departs from the reference.

    Batched: each step is one forward and one backward pass (``eot_iter`` of each against a
    model that declares ``randomized``) over the samples still attacked. With ``early_stop`` a
    sample keeps its first adversarial iterate and leaves the batch (APGD's updates are per
    sample, so the others run exactly as if it were there); a restart only runs on the samples
    not fooled yet, and the attack ends when all are (on a GPU the batch is compacted every
    eight steps, a host sync, with finished rows carried along in between; on the CPU at every
    step, so the query counts there are exact). Against a randomised model, or with
    ``early_stop`` off, nothing is judged on the way: every sample runs every step and restart
    and keeps the point of highest loss (averaged over the ``eot_iter`` draws). With targets from
    the harness the loss is the targeted one and success means reaching the target.
    """

    id: ClassVar[str] = "apgd"
    Config = APGDConfig

    def run(self, model, x, y, eps, targets):
        state = _Outcome(x, x.clone())
        rows = torch.arange(x.shape[0], device=x.device)
        self._restarts(model, x, y, targets, targets, eps, rows, state, self.id)
        return RunOutput(state.x_adv, state.queries)

    def _restarts(self, model, x, y, loss_targets, goal_targets, eps, rows, state, attack_id):
        """``restarts`` runs on the samples ``rows`` (those still robust before each run when
        judging is trusted), merged into ``state``."""
        cfg = self.config
        trust = cfg.early_stop and not getattr(model, "randomized", False)
        draws = cfg.eot_iter if getattr(model, "randomized", False) else 1
        for _ in range(cfg.restarts):
            if trust:
                rows = rows[~state.fooled[rows]]
            if not rows.numel():
                return
            lt = None if loss_targets is None else loss_targets[rows]
            gt = None if goal_targets is None else goal_targets[rows]
            if cfg.large_eps:
                stages = _stage_steps(cfg.steps)
                x_init, used = None, torch.zeros(rows.numel(), dtype=torch.long, device=x.device)
                for s, (factor, steps) in enumerate(zip(_LARGE_EPS, stages)):
                    last = s == len(stages) - 1
                    out = _run(model, x[rows], y[rows], lt, gt, eps * factor, norm=self.threat_norm,
                               steps=steps, loss=cfg.loss, rho=cfg.rho, momentum=cfg.momentum,
                               draws=draws, trust=trust and last, x_init=x_init,
                               attack_id=attack_id)
                    used += out.queries
                    x_init = out.x_adv  # untrusted stages answer their points of highest loss
                out.queries = used
            else:
                out = _run(model, x[rows], y[rows], lt, gt, eps, norm=self.threat_norm,
                           steps=cfg.steps, loss=cfg.loss, rho=cfg.rho, momentum=cfg.momentum,
                           draws=draws, trust=trust, attack_id=attack_id)
            state.merge(rows, out)


class APGDT(APGD):
    """APGD-T (Croce & Hein, ICML 2020, §5 (AutoAttack) with the targeted DLR loss of §4,
    Eq. 6): for each of the ``n_target_classes`` runner-up classes of the clean logits in turn
    (rank 2, 3, …), APGD on the targeted DLR loss towards that class, run on the samples not
    misclassified yet (one clean pass ranks the classes; a sample it already misclassifies is
    left as it is, as the reference does); success is any misclassification. AutoAttack's
    'standard' version runs 9 targets with 100 steps and 1 restart each; in L1 it also sets
    ``large_eps`` and 5 restarts. Given targets by the harness, it attacks those (one target
    per sample) and succeeds on reaching them. Otherwise as APGD, including ``early_stop`` and
    the randomised-model rules (there the point of highest targeted loss over all targets and
    restarts is kept).
    """

    id: ClassVar[str] = "apgd-t"
    Config = APGDTConfig

    def run(self, model, x, y, eps, targets):
        n = x.shape[0]
        state = _Outcome(x, x.clone())
        rows = torch.arange(n, device=x.device)
        if targets is not None:
            self._restarts(model, x, y, targets, targets, eps, rows, state, self.id)
            return RunOutput(state.x_adv, state.queries)
        with torch.no_grad():
            logits = model(x)
        state.queries += 1
        k = logits.shape[1]
        _check_classes(k, self.config.loss, True, self.id)
        if self.config.early_stop and not getattr(model, "randomized", False):
            state.fooled = logits.argmax(dim=1) != y  # misclassified already: x itself is the answer
        order = logits.argsort(dim=1, descending=True)
        for rank in range(1, min(self.config.n_target_classes, k - 1) + 1):
            self._restarts(model, x, y, order[:, rank], None, eps, rows, state, self.id)
        return RunOutput(state.x_adv, state.queries)


# ----------------------------------------------------------------------------- the machinery
class _Outcome:
    """The attack's answer over the whole batch, merged run after run: the point per sample,
    whether it is known to fool the model, its loss, and the forward passes spent."""

    def __init__(self, x: torch.Tensor, x_adv: torch.Tensor) -> None:
        n = x.shape[0]
        self.x_adv = x_adv
        self.fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.loss = torch.full((n,), float("-inf"), device=x.device)
        self.queries = torch.zeros(n, dtype=torch.long, device=x.device)

    def merge(self, rows: torch.Tensor, out: _RunResult) -> None:
        """A run's answer for ``rows``: a fooling point wins over a point of higher loss; a
        sample already fooled keeps its point (trusted runs never revisit it)."""
        old_fooled, old_loss = self.fooled[rows], self.loss[rows]
        take = (out.fooled & ~old_fooled) | (~old_fooled & ~out.fooled & (out.loss > old_loss))
        view = (-1,) + (1,) * (out.x_adv.dim() - 1)
        self.x_adv[rows] = torch.where(take.view(view), out.x_adv, self.x_adv[rows])
        self.loss[rows] = torch.where(take, out.loss, old_loss)
        self.fooled[rows] = old_fooled | out.fooled
        self.queries[rows] += out.queries


class _RunResult:
    """One run's answer for its rows: the point, whether it fooled the model (trusted runs
    only), its loss, and the forward passes spent."""

    def __init__(self, x_adv, fooled, loss, queries) -> None:
        self.x_adv, self.fooled, self.loss, self.queries = x_adv, fooled, loss, queries


def _check_classes(k: int, loss: str, targeted: bool, attack_id: str) -> None:
    need = 3 + int(targeted)
    if loss == "dlr" and k < need:
        kind = "targeted DLR loss (Eq. 6)" if targeted else "DLR loss (Eq. 5)"
        raise ConfigError(f"attack '{attack_id}': the {kind} needs at least {need} classes, the "
                          f"model has {k}; use loss 'ce' or 'margin'")


def _stage_steps(steps: int) -> list[int]:
    """The reference's split of the steps over the large-ε stages: ⌈0.3N⌉, ⌈0.3N⌉, the rest,
    except that the last stage (the one at ε) keeps at least one step (the reference leaves it
    none for N = 4)."""
    first = [min(-(-3 * steps // 10), (steps - 1) // 2)] * 2
    return first + [steps - sum(first)]


def _evaluate(model, x, y, targets, loss, draws, check: str | None = None):
    """Logits (of the last draw), per-sample loss and input gradient, averaged over ``draws``;
    ``check``: the attack's id, to refuse a DLR loss the model has too few classes for."""
    total_v = total_g = None
    for _ in range(draws):
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr)
            if check is not None:
                _check_classes(logits.shape[1], loss, targets is not None, check)
            value = attack_loss(logits, y, targets, loss)
            (grad,) = torch.autograd.grad(value.sum(), xr)
        value = value.detach()
        total_v = value if total_v is None else total_v + value
        total_g = grad if total_g is None else total_g + grad
    if draws > 1:
        total_v, total_g = total_v / draws, total_g / draws
    return logits.detach(), total_v, total_g


def _start(x0: torch.Tensor, norm: Norm, eps: float) -> torch.Tensor:
    """The reference's random start: L∞ a uniform direction scaled to ‖·‖∞ = ε, L2 a Gaussian one
    on the sphere of radius ε, L1 a Gaussian projected onto the L1 ball ∩ box; then [0, 1]."""
    view = (-1,) + (1,) * (x0.dim() - 1)
    if norm is Norm.L1:
        flat = x0.flatten(1)
        return (flat + project_l1_box(torch.randn_like(flat), flat, eps)).view_as(x0).clamp(0, 1)
    if norm is Norm.LINF:
        t = torch.rand_like(x0).mul_(2).sub_(1)
        scale = t.flatten(1).abs().amax(1)
    else:
        t = torch.randn_like(x0)
        scale = t.flatten(1).norm(dim=1)
    return (x0 + t * (eps / (scale + 1e-12)).view(view)).clamp(0, 1)


def _run(model, x0, y, lt, gt, eps, *, norm, steps, loss, rho, momentum, draws, trust,
         attack_id, x_init=None) -> _RunResult:
    """One APGD run on a batch (Algorithm 1). ``lt``: the targets of the loss (None:
    untargeted); ``gt``: the targets of success (None: any misclassification). ``trust``: judge
    the iterates and let a fooled sample leave with its first adversarial point."""
    n, dev = x0.shape[0], x0.device
    view = (-1,) + (1,) * (x0.dim() - 1)
    feats = x0[0].numel()
    compact_every = 8 if _avoid_syncs(dev) else 1
    x_out = torch.empty_like(x0)
    fooled_out = torch.zeros(n, dtype=torch.bool, device=dev)
    loss_out = torch.empty(n, device=dev)
    used = torch.zeros(n, dtype=torch.long, device=dev)

    if x_init is None:
        cur = _start(x0, norm, eps)
    elif norm is Norm.L1:  # a large-ε stage's answer, brought into this stage's ball
        flat = x0.flatten(1)
        cur = (flat + project_l1_box(x_init.flatten(1) - flat, flat, eps)).view_as(x0)
    else:
        cur = x_init.clone()
    logits, value, grad = _evaluate(model, cur, y, lt, loss, draws, check=attack_id)
    used += draws

    st = {"x0": x0, "y": y, "cur": cur, "grad": grad, "bx": cur, "bl": value, "bg": grad}
    if lt is not None:
        st["lt"] = lt
    if gt is not None:
        st["gt"] = gt
    if norm is Norm.LINF:
        st["lo"], st["hi"] = (x0 - eps).clamp_(min=0), (x0 + eps).clamp_(max=1)
    if norm is Norm.L1:
        step0 = 1.0 * eps
        if x_init is None:
            st["topk"] = torch.full((n,), _L1_START_K, device=dev)
            st["sp"] = torch.full((n,), float(feats), device=dev)
        else:
            sp = (cur != x0).flatten(1).sum(1).to(value.dtype)
            st["topk"], st["sp"] = sp / feats / _L1_SHRINK, sp
        interval = max(int(_L1_INTERVAL * steps), 1)
        marks = set(range(interval, steps, interval))
    else:
        step0 = 2.0 * eps
        st["prev"] = cur
        st["pl"] = value  # the loss of the previous iterate
        st["imp"] = torch.zeros(n, dtype=torch.long, device=dev)
        st["red"] = torch.ones(n, dtype=torch.bool, device=dev)  # no condition 2 at w_1
        st["blc"] = value  # the best loss at the last checkpoint
        marks = set(checkpoints(steps))
    st["step"] = torch.full((n,), step0, device=dev, dtype=value.dtype)
    last_mark = 0
    rows = torch.arange(n, device=dev)
    if trust:
        st["done"] = _fooled(logits, y, gt)
        st["first"] = cur

    for i in range(steps + 1):
        if trust and (i % compact_every == 0 or i == steps) and bool(st["done"].any()):
            d = st["done"]
            hit = rows[d]
            x_out[hit], fooled_out[hit], loss_out[hit] = st["first"][d], True, st["bl"][d]
            keep = (~d).nonzero().squeeze(1)
            rows = rows[keep]
            st = {k: v[keep] for k, v in st.items()}
            if not rows.numel():
                break
        if i == steps:
            break
        cur, grad, step = st["cur"], st["grad"], st["step"]
        x0 = st["x0"]
        with torch.no_grad():
            if norm is Norm.L1:
                new = _l1_step(cur, x0, grad, step, st["topk"], eps, feats)
            else:
                a = 1.0 if i == 0 else momentum
                if norm is Norm.LINF:
                    z = torch.clamp(cur + step.view(view) * grad.sign(), st["lo"], st["hi"])
                    new = z if a == 1.0 else torch.clamp(
                        cur + a * (z - cur) + (1 - a) * (cur - st["prev"]), st["lo"], st["hi"])
                else:
                    gnorm = grad.flatten(1).norm(dim=1).add_(1e-12)
                    z = _l2_project(cur + grad * (step / gnorm).view(view), x0, eps, view)
                    new = z if a == 1.0 else _l2_project(
                        cur + a * (z - cur) + (1 - a) * (cur - st["prev"]), x0, eps, view)
                st["prev"] = cur
        logits, value, grad = _evaluate(model, new, st["y"], st.get("lt"), loss, draws)
        used[rows] += draws
        better = value > st["bl"]
        bview = better.view(view)
        st["cur"], st["grad"] = new, grad
        st["bx"] = torch.where(bview, new, st["bx"])
        st["bg"] = torch.where(bview, grad, st["bg"])
        st["bl"] = torch.where(better, value, st["bl"])
        if norm is not Norm.L1:
            st["imp"] = st["imp"] + (value > st["pl"])
            st["pl"] = value
        if trust:
            now = _fooled(logits, st["y"], st.get("gt"))
            st["first"] = torch.where((now & ~st["done"]).view(view), new, st["first"])
            st["done"] = st["done"] | now
        if i + 1 in marks:
            if norm is Norm.L1:
                _l1_checkpoint(st, eps * 1.0, feats, view)
            else:
                w = i + 1
                cut = halving(st["imp"], w - last_mark, rho, st["red"], st["blc"], st["bl"])
                cview = cut.view(view)
                st["step"] = torch.where(cut, st["step"] / 2, st["step"])
                st["cur"] = torch.where(cview, st["bx"], st["cur"])
                st["grad"] = torch.where(cview, st["bg"], st["grad"])
                st["pl"] = torch.where(cut, st["bl"], st["pl"])  # x^(w_j) is now x_max
                st["imp"] = torch.zeros_like(st["imp"])
                st["red"], st["blc"] = cut, st["bl"]
                last_mark = w
    if rows.numel():
        x_out[rows], loss_out[rows] = st["bx"], st["bl"]
    return _RunResult(x_out, fooled_out, loss_out, used)


def _avoid_syncs(device: torch.device) -> bool:
    """Whether to spare host syncs on ``device`` (every one but the CPU's): compact the batch
    every eight steps only, and find l1-APGD's thresholds by sorting."""
    return device.type != "cpu"


def _fooled(logits: torch.Tensor, y: torch.Tensor, gt: torch.Tensor | None) -> torch.Tensor:
    pred = logits.argmax(dim=1)
    return pred == gt if gt is not None else pred != y


def _l2_project(p: torch.Tensor, x0: torch.Tensor, eps: float, view) -> torch.Tensor:
    """Onto the L2 ball around ``x0``, then into [0, 1] (the reference's projection)."""
    d = p - x0
    norms = d.flatten(1).norm(dim=1)
    factor = (eps / norms.clamp_min(1e-12)).clamp_(max=1.0)
    return (x0 + d * factor.view(view)).clamp_(0, 1)


def _l1_step(cur, x0, grad, step, topk, eps, feats):
    """l1-APGD's step: ``step`` spread evenly over the signs of the gradient's components of
    magnitude at least its ⌈topk·d⌉-th largest, then the exact projection onto the L1 ball ∩ box.

    The per-sample threshold comes from one ``topk`` of the largest count any sample needs on
    the CPU (a few times faster than the reference's full sort), from a sort on other devices
    (where the count would cost a host sync)."""
    n = cur.shape[0]
    flat_g, flat_x = grad.flatten(1), x0.flatten(1)
    mag = flat_g.abs()
    idx = ((1.0 - topk) * feats).clamp(0, feats - 1).long()  # ascending rank of the threshold
    if not _avoid_syncs(mag.device):
        need = feats - idx  # components at or above it
        top = mag.topk(int(need.max()), dim=1).values
        thr = top.gather(1, (need - 1).unsqueeze(1))
    else:
        thr = mag.sort(dim=1).values.gather(1, idx.unsqueeze(1))
    sign = flat_g.sign() * (mag >= thr)
    count = sign.abs().sum(dim=1, keepdim=True).add_(1e-10)
    moved = cur.flatten(1) + sign * (step.unsqueeze(1) / count)
    delta = project_l1_box(moved - flat_x, flat_x, eps)
    return (flat_x + delta).view(n, *cur.shape[1:])


def _l1_checkpoint(st: dict, eps: float, feats: int, view) -> None:
    """l1-APGD's checkpoint: k follows the sparsity of the best point; a sample whose best
    point became sparser by more than 5% restarts from it with the full step ε, the others
    divide their step by 1.5 (never below ε/10)."""
    sp = (st["bx"] != st["x0"]).flatten(1).sum(1).to(st["step"].dtype)
    sparser = sp < _L1_SPARSER * st["sp"]
    st["topk"] = sp / feats / _L1_SHRINK
    st["step"] = torch.where(sparser, torch.full_like(st["step"], eps),
                             st["step"] / _L1_SHRINK).clamp(eps / _L1_MIN_STEP, eps)
    st["sp"] = sp
    sv = sparser.view(view)
    st["cur"] = torch.where(sv, st["bx"], st["cur"])
    st["grad"] = torch.where(sv, st["bg"], st["grad"])


@hookimpl
def arena_register_attacks(register):
    register(APGD)
    register(APGDT)
