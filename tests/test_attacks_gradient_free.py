"""SPSA (Uesato et al., ICML 2018) and the random-noise baseline (Carlini et al., 2019): SPSA's
gradient estimate, the noise distributions, query accounting and budgets under the harness.
Contract rows: tests/test_contracts.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena import testing
from arena.errors import ConfigError
from arena.threat import Knowledge, Norm
from arena_builtins.attacks.gradient_free import SPSA, Noise, ball_noise, spsa_gradient
from arena_builtins.attacks.losses import attack_loss


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(attack_id: str, **params):
    return testing.registry().make_attack(attack_id, **params)


class Smooth(nn.Module):
    """A smooth random classifier on 1×8×8 inputs (tanh hidden layer)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


# ----------------------------------------------------------------------------- SPSA

def test_spsa_gradient_estimate_points_along_the_true_gradient():
    model = Smooth().eval()
    torch.manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(16, 1, 8, 8)  # interior points: no probe is clipped
    y = torch.randint(0, 10, (16,))
    xr = x.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(attack_loss(model(xr), y, None, "margin").sum(), xr)

    def evaluate(probes):
        with torch.no_grad():
            out = model(probes.flatten(0, 1))
        return attack_loss(out, y.repeat_interleave(probes.shape[1]), None, "margin").view(16, -1)

    few, _, _ = spsa_gradient(evaluate, x, 0.01, 8)
    many, probes, losses = spsa_gradient(evaluate, x, 0.01, 512)
    assert probes.shape == (16, 1024, 1, 8, 8) and losses.shape == (16, 1024)
    assert bool((probes - x.unsqueeze(1)).abs().amax() <= 0.01 + 1e-6)
    # for d = 64 and n pairs the cosine is about (1 + 63 / n)^-1/2: ~0.94 at 512, ~0.34 at 8
    assert float(_cosine(many, true).min()) > 0.8
    assert float(_cosine(many, true).mean()) > float(_cosine(few, true).mean()) + 0.2
    scale = many.flatten(1).norm(dim=1) / true.flatten(1).norm(dim=1)
    assert bool(((scale > 0.8) & (scale < 1.5)).all())  # unbiased: the same size, not just direction


def test_spsa_lowers_accuracy_under_linf_and_stays_within_eps():
    model = testing.trained_model()
    x, y = testing.attack_batch(24)
    result = make("spsa", steps=40, samples=16)(model, x, y, 0.3, seed=0)
    assert float(result.success.float().mean()) >= 0.5
    assert bool((result.distance <= 0.3 + 1e-6).all())
    # each step costs 2·samples per sample, plus the clean check
    assert bool(((result.queries - 1) % 32 == 0).all()) and int(result.queries.max()) <= 1 + 40 * 32


def test_spsa_plans_its_last_step_from_the_budget():
    model = testing.trained_model()
    x, y = testing.attack_batch(8)
    # ε too small to fool anything: 1 clean + 3 full steps of 16 + a last step of 5 pairs
    result = make("spsa", steps=5, samples=8, max_queries=60)(model, x, y, 0.001, seed=0)
    assert not bool(result.success.any())
    assert result.queries.tolist() == [59] * 8


def test_spsa_knows_only_scores_and_stops_on_a_sample_already_wrong():
    assert SPSA.knowledge is Knowledge.BLACK_BOX and SPSA.oracle_output == "scores"
    model = testing.trained_model()
    x, y = testing.attack_batch(6)
    wrong = (y + 1) % 10
    result = make("spsa", steps=3, samples=4)(model, x, wrong, 0.1, seed=0)
    assert result.queries.tolist() == [1] * 6 and bool(result.success.all())
    assert torch.equal(result.x_adv, x)


def test_spsa_l2_stays_within_eps():
    model = testing.trained_model()
    x, y = testing.attack_batch(16)
    result = make("spsa", norm="l2", steps=15, samples=16, lr=0.05)(model, x, y, 1.5, seed=0)
    assert bool((result.distance <= 1.5 * (1 + 1e-5)).all())
    assert float(result.success.float().mean()) > 0


# ----------------------------------------------------------------------------- noise

@pytest.mark.parametrize("norm", [Norm.LINF, Norm.L2])
def test_noise_draws_lie_in_the_ball_with_the_stated_distribution(norm):
    torch.manual_seed(0)
    eps = 0.3 if norm is Norm.LINF else 2.0
    uniform = ball_noise((4000, 1, 8, 8), norm, eps, "uniform")
    surface = ball_noise((4000, 1, 8, 8), norm, eps, "surface")
    size_u, size_s = norm.measure(uniform), norm.measure(surface)
    assert bool((size_u <= eps * (1 + 1e-6)).all()) and bool((size_s <= eps * (1 + 1e-6)).all())
    assert torch.allclose(size_s, torch.full_like(size_s, eps))
    if norm is Norm.LINF:
        coords = uniform.flatten()
        assert float(coords.mean()) == pytest.approx(0, abs=0.005)
        assert float(coords.abs().mean()) == pytest.approx(eps / 2, rel=0.02)  # uniform on [−ε, ε]
        assert bool((surface.abs() == eps).all())
    else:
        assert float(size_u.mean()) == pytest.approx(eps / 2, rel=0.05)  # radius uniform on [0, ε]
        assert float((size_u < eps / 4).float().mean()) == pytest.approx(0.25, abs=0.03)
        direction = uniform.flatten(1) / size_u.unsqueeze(1)
        assert float(direction.mean(0).abs().max()) < 0.05  # no preferred direction
    with pytest.raises(ValueError):
        ball_noise((2, 4), norm, eps, "gaussian")


def test_noise_stops_each_sample_at_its_first_fooling_draw():
    assert Noise.knowledge is Knowledge.BLACK_BOX and Noise.oracle_output == "labels"
    model = testing.trained_model()
    x, y = testing.attack_batch(32)
    result = make("noise", draws=30)(model, x, y, 0.4, seed=0)
    broken, kept = result.success, ~result.success
    assert bool(broken.any()) and bool(kept.any())
    assert bool((result.queries[kept] == 30).all()) and bool((result.queries[broken] <= 30).all())
    assert torch.equal(result.x_adv[kept], x[kept])  # an unbroken sample is returned as is
    assert bool((result.distance[broken] <= 0.4 + 1e-6).all())
    wrong = make("noise", draws=30)(model, x[:4], (y[:4] + 1) % 10, 0.01, seed=0)
    assert wrong.queries.tolist() == [1] * 4 and bool(wrong.success.all())


def test_noise_budget_caps_the_draws():
    model = testing.trained_model()
    x, y = testing.attack_batch(8)
    result = make("noise", draws=100, max_queries=7)(model, x, y, 0.01, seed=0)
    assert result.queries.tolist() == [7] * 8


@pytest.mark.parametrize("attack_id", ["spsa", "noise"])
def test_unknown_and_bad_config_keys_are_refused(attack_id):
    for bad in ({"no_such_key": 1}, {"norm": "l0"}):
        with pytest.raises(ConfigError):
            make(attack_id, **bad)
    with pytest.raises(ConfigError):
        make(attack_id, **({"samples": 0} if attack_id == "spsa" else {"distribution": "gaussian"}))
