"""FAB and FAB-T (Croce and Hein, ICML 2020): the exact projection onto a hyperplane within the
box (FAB §3.1), the distances FAB must find on affine classifiers (where the linearisation is
the model: the closest boundary at |w·x + b| / ‖w‖_dual), and its behaviour on the small digits
CNN. Contract rows: tests/test_contracts.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from arena import testing
from arena.errors import ConfigError
from arena.threat import Norm
from arena_builtins.attacks import fab
from arena_builtins.attacks.fab import project_hyperplane_box

NORMS = [Norm.LINF, Norm.L2, Norm.L1]
DUAL = {Norm.LINF: 1, Norm.L2: 2, Norm.L1: float("inf")}


# ------------------------------------------------------------------- the projection

def problems(m: int = 24, d: int = 20, seed: int = 0):
    """Points in the box (some coordinates on its faces), hyperplanes (some weights zero), and
    offsets from on-the-plane to far beyond the box's reach."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(m, d, generator=g, dtype=torch.float64)
    x[:, :4] = (x[:, :4] > 0.5).double()
    w = torch.randn(m, d, generator=g, dtype=torch.float64)
    w[:, 4:6] = 0
    b = torch.randn(m, generator=g, dtype=torch.float64) * torch.linspace(0, 6, m, dtype=torch.float64)
    return x, w, b


def optimum(x: torch.Tensor, w: torch.Tensor, b: float, norm: Norm) -> float | None:
    """The minimal ‖δ‖ with w·δ = −b and x + δ in the box, by an independent solver (a linear
    program for L1 and L∞, bisection on the KKT multiplier for L2); None: no such δ."""
    x, w, d = x.numpy(), w.numpy(), x.numel()
    if norm is Norm.L2:
        if np.sum(np.where(w * np.sign(-b) > 0, 1 - x, x) * np.abs(w)) < abs(b):
            return None
        lo, hi, s = 0.0, 1e6, np.sign(-b)
        for _ in range(200):
            lam = (lo + hi) / 2
            lo, hi = (lam, hi) if s * (w @ np.clip(s * lam * w, -x, 1 - x)) < abs(b) else (lo, lam)
        return float(np.linalg.norm(np.clip(s * hi * w, -x, 1 - x)))
    if norm is Norm.L1:  # δ = p − q, p, q ≥ 0
        res = linprog(np.ones(2 * d), A_eq=np.concatenate([w, -w])[None], b_eq=[-b],
                      bounds=[(0, 1 - v) for v in x] + [(0, v) for v in x], method="highs")
    else:  # min τ with |δ_i| ≤ τ
        ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        res = linprog(np.eye(d + 1)[-1], A_ub=ub, b_ub=np.zeros(2 * d), A_eq=np.append(w, 0)[None], b_eq=[-b],
                      bounds=[(-v, 1 - v) for v in x] + [(0, None)], method="highs")
    return float(res.fun) if res.status == 0 else None


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.value)
def test_projection_is_on_the_plane_in_the_box_and_minimal(norm):
    x, w, b = problems()
    delta = project_hyperplane_box(x, w, b, norm)
    assert bool(((x + delta) >= -1e-12).all() and ((x + delta) <= 1 + 1e-12).all())
    assert bool((delta[:, 4:6] == 0).all())  # no movement where the plane does not care
    feasible = 0
    for i in range(x.shape[0]):
        best = optimum(x[i], w[i], float(b[i]), norm)
        if best is None:  # the box misses the plane: the corner that goes farthest towards it
            corner = torch.where(w[i] * -b[i].sign() > 0, 1 - x[i], -x[i]) * (w[i] != 0)
            assert torch.allclose(delta[i], corner)
            continue
        feasible += 1
        assert abs(float(w[i] @ delta[i] + b[i])) < 1e-9
        assert float(norm.measure(delta[i:i + 1])) == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert feasible >= 18  # most rows have a solution; b[0] = 0 is solved by δ = 0
    assert float(delta[0].abs().max()) == 0.0


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.value)
def test_projection_beats_every_other_point_of_plane_and_box(norm):
    """Feasible points built without the solver: a random box point moved along w onto the
    plane (kept when still in the box), and mixtures of two such points (the feasible set is
    convex). None is closer than the projection."""
    x, w, b = problems(m=8, d=12, seed=1)
    b = b * 0.3
    delta = project_hyperplane_box(x, w, b, norm)
    mine = norm.measure(delta)
    g = torch.Generator().manual_seed(2)
    checked = 0
    for i in range(x.shape[0]):
        points = []
        for _ in range(400):
            z = torch.rand(12, generator=g, dtype=torch.float64)
            z = z - ((w[i] @ (z - x[i]) + b[i]) / (w[i] @ w[i])) * w[i]
            if bool(((z >= 0) & (z <= 1)).all()):
                points.append(z)
        for k in range(1, len(points)):
            lam = float(torch.rand(1, generator=g))
            points.append(lam * points[k] + (1 - lam) * points[k - 1])
        if points:
            other = norm.measure(torch.stack(points) - x[i])
            assert float(other.min()) >= float(mine[i]) - 1e-12
            checked += len(points)
    assert checked > 200


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.value)
def test_fast_paths_agree_with_sorting(norm):
    """The L∞/L2 Newton iteration and the L1 top-k ranking against the full sort, on image-like
    rows (many pixels on the box faces) and offsets that need hundreds of coordinates."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 784, generator=g)
    x[:, :400] = 0
    x[:, 400:450] = 1
    w = torch.randn(64, 784, generator=g)
    mag, room = w.abs(), torch.where(w > 0, 1 - x, x)
    # offsets that the k largest |w_i| just reach, k spread over every count of coordinates
    ranked = mag.sort(dim=1, descending=True)
    filled = (ranked.values * room.gather(1, ranked.indices)).cumsum(1)
    k = torch.linspace(0, 783, 64).long().unsqueeze(1)
    r = filled.gather(1, k) * (0.5 + 0.5 * torch.rand(64, 1, generator=g))
    r[::9] *= 0.01
    r[-3:] = 1.5 * filled[-3:, -1:]  # beyond the box's reach
    if norm is Norm.L1:
        fast = fab._l1_magnitudes(mag, room, r)
        slow = torch.zeros_like(mag).scatter_(1, ranked.indices, fab._l1_fill(
            ranked.values, room.gather(1, ranked.indices), filled, r))
        paths = ((filled[:, 31:32] < r).sum(), (filled[:, 255:256] < r).sum())
        assert 64 > paths[0] > paths[1] > 5  # all three paths: top 32, top 256, the full sort
    else:
        fast = fab._newton_magnitudes(mag, room, r, norm)
        slow = (fab._linf_magnitudes if norm is Norm.LINF else fab._l2_magnitudes)(mag, room, r)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-6)
    reach = (mag * fast).sum(1, keepdim=True)
    feasible = (mag * room).sum(1, keepdim=True) >= r
    assert torch.allclose(reach[feasible], r[feasible], rtol=1e-4)


# ------------------------------------------------------------------- affine classifiers

class Affine(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)

    def forward(self, x):
        return self.linear(x.flatten(1))


def affine_case(classes: int, seed: int):
    """An affine classifier on 8×8 inputs around 0.5, its labels, and the exact minimal distance
    per norm: min over k ≠ y of |f_k| / ‖w_k − w_y‖_dual, checked to be reachable inside the box
    (the closest point moves no coordinate by more than 0.4)."""
    g = torch.Generator().manual_seed(seed)
    # rows from dense to sparse, so that the closest boundary depends on the norm
    density = torch.linspace(1.0, 0.08, classes).unsqueeze(1)
    weight = torch.randn(classes, 64, generator=g) * (torch.rand(classes, 64, generator=g) < density) / density.sqrt()
    bias = -weight.sum(1) * 0.5 + 0.3 * torch.randn(classes, generator=g)
    x = (0.45 + 0.1 * torch.rand(16, 1, 8, 8, generator=g))
    model = Affine(weight, bias).eval()
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    dw = weight.unsqueeze(0) - weight[y].unsqueeze(1)  # (N, K, 64)
    f = (z - z.gather(1, y[:, None])).abs()
    exact = {}
    for norm in NORMS:
        dual = dw.norm(p=DUAL[norm], dim=2)
        dist = torch.where(dual > 0, f / dual.clamp_min(1e-30), torch.full_like(f, float("inf")))
        exact[norm] = dist.min(1).values
    # the largest coordinate change of each closest point stays within the box
    assert float(exact[Norm.LINF].max()) < 0.4 and float(exact[Norm.L1].max()) < 0.4
    assert float(exact[Norm.L2].max()) < 0.4
    return model, x, y, exact


@pytest.mark.parametrize("classes", [2, 5], ids=["2-class", "5-class"])
@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.value)
def test_fab_finds_the_analytic_distance_of_an_affine_model(registry, norm, classes):
    model, x, y, exact = affine_case(classes, seed=classes)
    result = registry.make_attack("fab", norm=norm.value, steps=20)(model, x, y, seed=0)
    assert bool(result.success.all())
    assert torch.allclose(result.distance, exact[norm], rtol=2e-3, atol=1e-5)
    # No shortcut through the final search: FAB's iterates alone come within 5% (§3.2).
    plain = registry.make_attack("fab", norm=norm.value, steps=20, final_search=0)(model, x, y, seed=0)
    assert bool(plain.success.all()) and bool((plain.distance <= 1.05 * exact[norm] + 1e-6).all())


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.value)
def test_first_step_lands_eta_times_beyond_the_boundary(registry, norm):
    """From x⁰ the two projections coincide, so the first iterate is x⁰ + η·δ whatever α is
    (§3.2): on an affine model exactly η times the minimal distance, and adversarial."""
    model, x, y, exact = affine_case(2, seed=2)
    for eta in (1.05, 1.3):
        one = registry.make_attack("fab", norm=norm.value, steps=1, eta=eta, final_search=0)(model, x, y, seed=0)
        assert bool(one.success.all())
        assert torch.allclose(one.distance, eta * exact[norm], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS, ids=lambda n: n.value)
def test_fab_t_on_an_affine_model_reaches_the_closest_target(registry, norm):
    model, x, y, exact = affine_case(5, seed=7)
    result = registry.make_attack("fab-t", norm=norm.value, steps=20, n_target_classes=4)(model, x, y, seed=0)
    assert bool(result.success.all())
    assert torch.allclose(result.distance, exact[norm], rtol=2e-3, atol=1e-5)


# ------------------------------------------------------------------- the digits CNN

def test_fab_l2_is_at_least_as_close_as_deepfool(registry, model):
    x, y = testing.attack_batch(48)
    deepfool = registry.make_attack("deepfool", norm="l2")(model, x, y)
    result = registry.make_attack("fab", norm="l2", steps=50)(model, x, y, seed=0)
    assert bool(result.success.all())
    closer = result.distance <= deepfool.distance * (1 + 1e-4)
    assert float(closer.float().mean()) >= 0.9
    assert float(result.distance.median()) < 0.97 * float(deepfool.distance.median())


def test_fab_t_fools_every_sample_and_aims_at_the_top_classes(registry, model):
    x, y = testing.attack_batch(48)
    with torch.no_grad():
        runner_up = model(x).scatter(1, y[:, None], float("-inf")).argmax(1)
    result = registry.make_attack("fab-t", norm="linf", steps=30, n_target_classes=1)(model, x, y, seed=0)
    assert bool(result.success.all())
    with torch.no_grad():
        landed = model(result.x_adv).argmax(1)
    assert float((landed == runner_up).float().mean()) >= 0.9  # the one target: the runner-up
    queries_one = result.queries
    full = registry.make_attack("fab-t", norm="linf", steps=30)(model, x, y, seed=0)
    assert bool(full.success.all())
    assert bool((full.distance <= result.distance * (1 + 1e-6)).all())  # more targets: never farther
    # per run: a linearisation and a check per step, then the final search's six
    assert bool((queries_one == 1 + 60 + 6).all())
    assert bool((full.queries >= 1 + 9 * 60).all()) and bool((full.queries <= 1 + 9 * 66).all())


@pytest.mark.parametrize("attack_id", ["fab", "fab-t"])
def test_given_targets_are_reached(registry, model, attack_id):
    x, y = testing.attack_batch(32)
    targets = (y + 3) % 10
    result = registry.make_attack(attack_id, norm="l2", steps=60)(model, x, y, targets=targets, seed=0)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets)
    assert float(result.success.float().mean()) >= 0.9


def test_eps_stops_attacking_samples_already_within_it(registry, model):
    """AutoAttack's use: with ε given, a sample fooled within ε is not attacked by later targets
    or restarts; the others are, from random starts of radius ≤ ε/2."""
    x, y = testing.attack_batch(32)
    free = registry.make_attack("fab-t", norm="linf", steps=20, n_target_classes=3)(model, x, y, seed=0)
    eps = float(free.distance.median())
    budget = registry.make_attack("fab-t", norm="linf", steps=20, n_target_classes=3, eps=eps)(model, x, y, seed=0)
    assert torch.equal(free.success_at(eps), budget.success_at(eps)) or \
        int(budget.success_at(eps).sum()) >= int(free.success_at(eps).sum())
    assert bool((free.queries >= 1 + 3 * 40).all()) and bool((free.queries <= 1 + 3 * 46).all())
    first_only = budget.queries == 1 + 40 + 6  # fooled within ε by the first target's run
    assert int(first_only.sum()) >= int(free.success_at(eps).sum()) // 2
    assert bool(budget.success_at(eps)[first_only].all())
    assert budget.queries.sum() < free.queries.sum()
    # restarts: deterministic under the seed, never farther than one run
    one = registry.make_attack("fab", norm="l2", steps=20)(model, x, y, seed=0)
    three = registry.make_attack("fab", norm="l2", steps=20, restarts=3)(model, x, y, seed=0)
    again = registry.make_attack("fab", norm="l2", steps=20, restarts=3)(model, x, y, seed=0)
    assert torch.equal(three.x_adv, again.x_adv)
    assert bool((three.distance <= one.distance * (1 + 1e-6)).all())
    assert float(three.distance.mean()) < float(one.distance.mean())


def test_misclassified_inputs_are_returned_as_they_are(registry, model):
    x, y = testing.attack_batch(8)
    wrong = (y + 1) % 10
    result = registry.make_attack("fab", steps=5)(model, x, wrong, seed=0)
    assert bool(result.success.all()) and bool((result.distance == 0).all())
    assert bool((result.queries == 1).all())


def test_unknown_keys_and_bad_values_are_refused(registry):
    for attack_id in ("fab", "fab-t"):
        with pytest.raises(ConfigError, match="no_such_key"):
            registry.make_attack(attack_id, no_such_key=1)
        with pytest.raises(ConfigError, match="norm"):
            registry.make_attack(attack_id, norm="l0")
        with pytest.raises(ConfigError, match="beta"):
            registry.make_attack(attack_id, beta=1.0)
    with pytest.raises(ConfigError, match="n_target_classes"):
        registry.make_attack("fab", n_target_classes=3)  # FAB-T's knob only
    cfg = registry.make_attack("fab-t").config
    assert (cfg.norm, cfg.steps, cfg.restarts, cfg.alpha_max, cfg.eta, cfg.beta, cfg.n_target_classes) == (
        Norm.LINF, 100, 1, 0.1, 1.05, 0.9, 9)
