"""APGD and APGD-T (Croce & Hein, ICML 2020; l1-APGD, ICML 2021): one test per known fact."""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from arena import testing
from arena.errors import ConfigError
from arena.threat import Norm
from arena_builtins.attacks import apgd as apgd_module
from arena_builtins.attacks.apgd import _stage_steps, checkpoints, halving


def make(attack_id: str, **params):
    return testing.registry().make_attack(attack_id, **params)


@pytest.fixture(scope="module")
def model():
    return testing.trained_model()


@pytest.fixture(scope="module")
def batch():
    return testing.attack_batch(160)


# ----------------------------------------------------------------------------- the schedule
def paper_checkpoints(steps: int) -> list[int]:
    """§3.2 from its text, in exact arithmetic: w_j = ⌈p_j·N⌉, p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p = [Fraction(0), Fraction(22, 100)]
    while p[-1] * steps < steps:
        p.append(p[-1] + max(p[-1] - p[-2] - Fraction(3, 100), Fraction(6, 100)))
    return sorted({math.ceil(q * steps) for q in p[1:] if 1 <= math.ceil(q * steps) < steps})


def test_checkpoints_are_the_papers_for_100_steps():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


@pytest.mark.parametrize("steps", [1, 5, 10, 20, 37, 50, 250, 1000])
def test_checkpoints_follow_the_recursion(steps):
    assert checkpoints(steps) == paper_checkpoints(steps)


def test_step_size_halves_under_the_papers_conditions():
    n = 5
    improved = torch.tensor([16, 17, 22, 22, 22])  # rises in the 22 steps since the last checkpoint
    reduced = torch.tensor([False, False, False, True, False])
    before = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    now = torch.tensor([2.0, 2.0, 1.0, 1.0, 1.5])
    cut = halving(improved, 22, 0.75, reduced, before, now)
    # 16 < 0.75·22 = 16.5 halves; 17 does not; a best loss unchanged since the last checkpoint
    # halves unless the step was just halved; a best loss that rose does not
    assert cut.tolist() == [True, False, True, False, False]
    # "fewer than" ρ·interval, strictly: 12 rises of 16 (= 0.75·16) do not halve
    one = torch.ones(1)
    assert not bool(halving(torch.tensor([12]), 16, 0.75, torch.tensor([False]), one, 2 * one))
    assert bool(halving(torch.tensor([11]), 16, 0.75, torch.tensor([False]), one, 2 * one))
    # every step rose: only condition 2 (step not just halved, best loss unchanged) is left
    assert halving(torch.full((n,), 22), 22, 1.0, reduced, before, now).tolist() == [False, False, True, False, False]


def test_the_run_checks_at_exactly_the_checkpoints(model, batch, monkeypatch):
    seen = []

    def spy(improved, interval, rho, reduced, before, now):
        seen.append(interval)
        return halving(improved, interval, rho, reduced, before, now)

    monkeypatch.setattr(apgd_module, "halving", spy)
    x, y = batch
    make("apgd", steps=100, early_stop=False)(model, x[:16], y[:16], 0.05, seed=0)
    marks = checkpoints(100)
    assert seen == [b - a for a, b in zip([0] + marks, marks)]  # 22, 19, 16, 13, 10, 7, 6, 6


def test_l1_checkpoints_every_4_percent_of_the_steps(model, batch, monkeypatch):
    calls = []
    real = apgd_module._l1_checkpoint
    monkeypatch.setattr(apgd_module, "_l1_checkpoint", lambda *a: (calls.append(1), real(*a)))
    x, y = batch
    make("apgd", norm="l1", steps=50, early_stop=False)(model, x[:8], y[:8], 2.0, seed=0)
    assert len(calls) == len(range(2, 50, 2))


def test_large_eps_stages_split_the_steps_as_the_reference():
    for n in range(3, 300):
        ref = [math.ceil(0.3 * n)] * 2  # autopgd_base.py's split
        ref.append(n - sum(ref))
        if ref[-1] >= 1:
            assert _stage_steps(n) == ref, n
    assert _stage_steps(100) == [30, 30, 40]
    assert all(min(_stage_steps(n)) >= 1 and sum(_stage_steps(n)) == n for n in range(3, 300))


# ----------------------------------------------------------------------------- strength
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_apgd_ce_at_least_as_strong_as_pgd_at_equal_steps(model, batch, norm, eps):
    x, y = batch
    pgd = make("pgd", norm=norm, steps=20)(model, x, y, eps, seed=0)
    ours = make("apgd", norm=norm, steps=20)(model, x, y, eps, seed=0)
    assert 0 < int(ours.success.sum()) and int(ours.success.sum()) >= int(pgd.success.sum())


def test_apgd_t_at_least_as_strong_as_apgd_ce(model, batch):
    """§5: APGD-T (9 targets) finds adversarial examples APGD-CE misses; at the same steps per
    run it never does worse here."""
    x, y = batch
    ce = make("apgd", steps=20)(model, x, y, 0.1, seed=0)
    t = make("apgd-t", steps=20)(model, x, y, 0.1, seed=0)
    assert int(t.success.sum()) >= int(ce.success.sum())


def test_restarts_only_add_successes(model, batch):
    """The first run is the same under the same seed; later ones only run on survivors."""
    x, y = batch
    one = make("apgd", steps=15)(model, x, y, 0.08, seed=3)
    three = make("apgd", steps=15, restarts=3)(model, x, y, 0.08, seed=3)
    assert not bool((one.success & ~three.success).any())
    assert int(three.success.sum()) >= int(one.success.sum())
    won = one.success  # broken by the first run: kept as it was, never attacked again
    assert torch.equal(three.x_adv[won], one.x_adv[won]) and torch.equal(three.queries[won], one.queries[won])
    assert bool((three.queries[~won] > one.queries[~won]).all())


def test_dlr_is_invariant_to_the_scale_of_the_logits(model, batch):
    """§4: DLR does not change when the logits are scaled, so neither does APGD-DLR's search."""
    x, y = batch
    scaled = nn.Sequential(model, Scale(50.0)).eval()
    a = make("apgd", loss="dlr", steps=20)(model, x, y, 0.1, seed=0)
    b = make("apgd", loss="dlr", steps=20)(scaled, x, y, 0.1, seed=0)
    assert float((a.success == b.success).float().mean()) >= 0.95


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, z):
        return z * self.factor


# ----------------------------------------------------------------------------- budgets and norms
@pytest.mark.parametrize("params", [{"norm": "l1"}, {"norm": "l1", "large_eps": True}])
def test_l1_points_are_in_the_l1_ball_and_the_box(model, batch, params):
    """The plugin's own output (before the harness projects it) lies in the L1 ball ∩ [0, 1]."""
    x, y = batch
    attack = make("apgd", steps=20, **params)
    out = attack.run(model, x.clone(), y.clone(), 3.0, None)
    l1 = (out.x_adv - x).flatten(1).abs().sum(1)
    assert bool((l1 <= 3.0 * (1 + 1e-5) + 1e-6).all())
    assert 0.0 <= float(out.x_adv.min()) and float(out.x_adv.max()) <= 1.0
    result = attack(model, x, y, 3.0, seed=0)
    assert bool((result.distance <= 3.0 * (1 + 1e-5)).all()) and float(result.success.float().mean()) > 0.2


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.7)])
def test_linf_l2_points_stay_in_the_ball(model, batch, norm, eps):
    x, y = batch
    out = make("apgd", norm=norm, steps=10).run(model, x.clone(), y.clone(), eps, None)
    dist = Norm(norm).measure(out.x_adv - x)
    assert bool((dist <= eps * (1 + 1e-5) + 1e-6).all())
    assert 0.0 <= float(out.x_adv.min()) and float(out.x_adv.max()) <= 1.0


# ----------------------------------------------------------------------------- targets, queries
@pytest.mark.parametrize("attack_id", ["apgd", "apgd-t"])
def test_targeted_mode_reaches_the_targets(model, batch, attack_id):
    x, y = batch
    x, y = x[:64], y[:64]
    targets = (y + 1) % 10
    result = make(attack_id, steps=30, loss="dlr")(model, x, y, 0.3, targets, seed=0)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets)
    assert float(result.success.float().mean()) >= 0.5


def test_apgd_t_runs_each_target_on_the_survivors_only(model, batch):
    """A sample no target breaks pays the clean pass plus k runs of steps + 1 passes; a broken
    one leaves at its first adversarial iterate and is not attacked for later targets."""
    x, y = batch
    steps, k = 10, 3
    result = make("apgd-t", steps=steps, n_target_classes=k)(model, x, y, 0.1, seed=0)
    robust = ~result.success
    assert bool(robust.any()) and bool(result.success.any())
    assert bool((result.queries[robust] == 1 + k * (steps + 1)).all())
    assert bool((result.queries[result.success] < 1 + k * (steps + 1)).all())


def test_target_count_is_capped_at_the_other_classes(batch):
    x, y = batch
    few = FourClasses().eval()
    y4 = y % 4
    result = make("apgd-t", steps=5, n_target_classes=9)(few, x[:32], y4[:32], 0.01, seed=0)
    robust = ~result.success
    assert bool((result.queries[robust] == 1 + 3 * 6).all())


class FourClasses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))

    def forward(self, x):
        return self.net(x)


def test_early_stop_keeps_the_first_adversarial_point(model, batch):
    """Fooled samples stop early (fewer passes); survivors run every step of every restart."""
    x, y = batch
    result = make("apgd", steps=12, restarts=2)(model, x, y, 0.1, seed=0)
    assert bool((result.queries[~result.success] == 2 * 13).all())
    assert bool((result.queries[result.success] <= 2 * 13).all())
    assert float(result.queries[result.success].float().mean()) < 13


def test_randomized_model_averages_eot_draws_and_judges_nothing(model, batch):
    x, y = batch
    x, y = x[:32], y[:32]
    noisy = Noisy(model)
    result = make("apgd", steps=8, eot_iter=4, restarts=2)(noisy, x, y, 0.2, seed=0)
    assert bool((result.queries == 2 * 9 * 4).all())  # no early stop, every draw counted
    assert float(result.success.float().mean()) > 0.3
    plain = make("apgd", steps=8, eot_iter=4)(model, x, y, 0.2, seed=0)
    assert int(plain.queries.max()) <= 9  # a deterministic model is called once per step


class Noisy(nn.Module):
    randomized = True

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x + 0.02 * torch.randn_like(x))


# ----------------------------------------------------------------------------- configuration
def test_unknown_and_invalid_config_refused():
    with pytest.raises(ConfigError, match="no_such_key"):
        make("apgd", no_such_key=1)
    with pytest.raises(ConfigError, match="no_such_key"):
        make("apgd-t", no_such_key=1)
    with pytest.raises(ConfigError, match="norm"):
        make("apgd", norm="l0")
    with pytest.raises(ConfigError, match="large_eps"):
        make("apgd", large_eps=True)
    with pytest.raises(ConfigError, match="large_eps"):
        make("apgd", norm="l1", large_eps=True, steps=2)
    with pytest.raises(ConfigError, match="loss"):
        make("apgd", loss="hinge")


def test_dlr_needs_enough_classes(batch):
    x, y = batch
    two = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with pytest.raises(ConfigError, match="at least 3 classes"):
        make("apgd", loss="dlr", steps=2)(two, x[:4], y[:4] % 2, 0.1, seed=0)
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    with pytest.raises(ConfigError, match="at least 4 classes"):
        make("apgd-t", steps=2)(three, x[:4], y[:4] % 3, 0.1, seed=0)
    make("apgd", loss="ce", steps=2)(two, x[:4], y[:4] % 2, 0.1, seed=0)  # CE has no such limit


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l1", 3.0)])
def test_the_sync_free_path_gives_the_same_answers(model, batch, norm, eps, monkeypatch):
    """What a GPU runs (compaction every eight steps with finished rows carried along, l1
    thresholds by sorting) answers what the CPU's path does; only the passes counted differ."""
    x, y = batch
    attack = make("apgd", norm=norm, steps=20, restarts=2)
    cpu = attack(model, x, y, eps, seed=0)
    monkeypatch.setattr(apgd_module, "_avoid_syncs", lambda device: True)
    gpu = attack(model, x, y, eps, seed=0)
    assert torch.equal(cpu.success, gpu.success)
    assert torch.allclose(cpu.x_adv, gpu.x_adv, atol=1e-6)
    assert bool((gpu.queries >= cpu.queries).all())
