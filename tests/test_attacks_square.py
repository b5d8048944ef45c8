"""Square Attack (Andriushchenko et al., ECCV 2020): its p schedule, its proposals, its query
accounting under the harness, and its strength on the small trained digits CNN. Contract rows:
tests/test_contracts.py."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from arena import testing
from arena.errors import ConfigError
from arena.model import QueryOracle
from arena.threat import Norm
from arena_builtins.attacks import square
from arena_builtins.attacks.square import (HALVINGS, eta, l2_candidates, l2_init, linf_candidates,
                                           linf_init, p_schedule, side_length)


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small batches to a tiny model: torch's intra-op threads only add synchronisation."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(**params):
    return testing.registry().make_attack("square", **params)


class RowCounter(nn.Module):
    """The model, counting every row it evaluates, per call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.model(x)


# ----------------------------------------------------------------------------- the schedule

def test_p_schedule_halves_at_the_papers_iterations_of_ten_thousand():
    p0 = 0.8
    for k, point in enumerate(HALVINGS):
        assert p_schedule(point, 10_000, p0) == pytest.approx(p0 / 2 ** k)  # still the old value
        assert p_schedule(point + 1, 10_000, p0) == pytest.approx(p0 / 2 ** (k + 1))  # halved after
    assert HALVINGS == (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
    assert p_schedule(0, 10_000, p0) == p0 and p_schedule(9_999, 10_000, p0) == pytest.approx(p0 / 512)


def test_p_schedule_is_rescaled_to_the_number_of_iterations():
    # 1,000 iterations: iteration i sits at int(i · 10) on the 10k scale, so p first halves at i = 2
    assert p_schedule(1, 1000, 0.8) == 0.8 and p_schedule(2, 1000, 0.8) == pytest.approx(0.4)
    assert p_schedule(800, 1000, 0.8) == pytest.approx(0.8 / 256)
    assert p_schedule(801, 1000, 0.8) == pytest.approx(0.8 / 512)
    values = [p_schedule(i, 300, 0.5) for i in range(300)]
    assert all(a >= b for a, b in itertools.pairwise(values)) and len(set(values)) == 10


def test_square_sides_follow_p_and_the_norm():
    assert side_length(0.8, 28, 28, Norm.LINF) == 25  # round(√(0.8 · 784))
    assert side_length(0.8 / 512, 28, 28, Norm.LINF) == 1
    assert side_length(0.8 / 512, 28, 28, Norm.L2) == 3  # at least 3
    assert side_length(0.1, 28, 28, Norm.L2) == 9  # round(√78.4) = 9, odd
    assert side_length(0.2, 28, 28, Norm.L2) % 2 == 1  # 13
    assert side_length(1.0, 8, 8, Norm.L2) == 8  # never beyond the image


def test_eta_is_a_unit_bump_positive_on_top_negative_below():
    e = eta(7)
    assert e.norm() == pytest.approx(1.0, abs=1e-6)
    assert bool((e[:3] > 0).all()) and bool((e[3:] < 0).all())
    assert int(e[:3].abs().argmax()) == 3 // 2 * 7 + 3  # the top half peaks at its centre


# ----------------------------------------------------------------------------- proposals

def test_linf_proposals_change_one_window_to_x_plus_or_minus_eps():
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 12)
    best = linf_init(x, 0.1)
    cand = linf_candidates(x, best, 0.1, 4)
    changed = (cand - best).abs() > 1e-7
    assert bool(changed.flatten(1).any(1).all()), "every proposal must change something"
    rows = changed.any(1).any(2).sum(1)
    cols = changed.any(1).any(1).sum(1)
    assert int(rows.max()) <= 4 and int(cols.max()) <= 4  # within one 4×4 window
    on_box = torch.isclose(cand, (x + 0.1).clamp(0, 1)) | torch.isclose(cand, (x - 0.1).clamp(0, 1))
    assert bool(on_box.all())


def test_l2_start_and_proposals_stay_within_eps():
    torch.manual_seed(0)
    x = torch.rand(32, 3, 16, 16)
    best = l2_init(x, 1.5)
    assert bool((Norm.L2.measure(best - x) <= 1.5 * (1 + 1e-5)).all())
    for s in (3, 5, 9, 15):
        best = l2_candidates(x, best, 1.5, s)
        assert bool((Norm.L2.measure(best - x) <= 1.5 * (1 + 1e-5)).all())
        assert 0 <= float(best.min()) and float(best.max()) <= 1


def test_l2_run_stays_within_eps_before_the_harness_projects():
    model = testing.trained_model()
    x, y = testing.attack_batch(24)
    oracle = QueryOracle(model, x.shape[0], output="scores", budget=150)
    torch.manual_seed(0)
    x_adv = make(norm="l2", max_queries=150).run(oracle, x.clone(), y.clone(), 0.8, None)
    assert bool((Norm.L2.measure(x_adv - x) <= 0.8 * (1 + 1e-5)).all())
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert bool((oracle.counts <= 150).all())


# ----------------------------------------------------------------------------- the harness

@pytest.mark.parametrize("params", [{"max_queries": 25}, {"max_queries": 25, "restarts": 3},
                                    {"norm": "l2", "max_queries": 25}])
def test_reported_queries_are_what_the_model_answered_and_within_budget(params):
    model = RowCounter(testing.trained_model())
    x, y = testing.attack_batch(32)
    eps = 0.05 if params.get("norm") != "l2" else 0.3  # small: some samples use the whole budget
    result = make(**params)(model, x, y, eps, seed=0)
    assert int(result.queries.max()) == 25 and bool((result.queries <= 25).all())
    # the harness itself asks about one row (the class count) and judges the n results
    assert sum(model.calls) == int(result.queries.sum()) + 1 + x.shape[0]
    assert bool((result.queries[result.success] < 25).any()) or not bool(result.success.any())


def test_a_sample_already_misclassified_is_returned_after_one_query():
    model = testing.trained_model()
    x, y = testing.attack_batch(8)
    wrong = y.clone()
    wrong[:3] = (y[:3] + 1) % 10  # the model's answer on these three is not their (given) label
    result = make(max_queries=50)(model, x, wrong, 0.05, seed=0)
    assert bool(result.success[:3].all())
    assert result.queries[:3].tolist() == [1, 1, 1]
    assert torch.equal(result.x_adv[:3], x[:3])
    assert bool((result.queries[3:] > 1).all())


def test_square_breaks_far_more_than_noise_at_equal_queries():
    model = testing.trained_model()
    x, y = testing.attack_batch(48)
    reg = testing.registry()
    sq = make(max_queries=50)(model, x, y, 0.3, seed=0)
    noise = reg.make_attack("noise", draws=50)(model, x, y, 0.3, seed=0)
    assert int(sq.queries.max()) <= 50 and int(noise.queries.max()) <= 50
    assert float(sq.success.float().mean()) >= float(noise.success.float().mean()) + 0.4
    assert float(sq.success.float().mean()) >= 0.85


def test_targeted_square_reaches_the_targets():
    model = testing.trained_model()
    x, y = testing.attack_batch(32)
    targets = (y + 3) % 10
    result = make(max_queries=300)(model, x, y, 0.3, targets=targets, seed=0)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets)
    assert float(result.success.float().mean()) >= 0.75


def test_cross_entropy_loss_also_breaks_samples():
    model = testing.trained_model()
    x, y = testing.attack_batch(32)
    result = make(max_queries=100, loss="ce")(model, x, y, 0.3, seed=0)
    assert float(result.success.float().mean()) >= 0.7


def test_config_is_validated():
    for bad in ({"no_such_key": 1}, {"norm": "l0"}, {"loss": "dlr"}, {"p_init": 0}, {"max_queries": 0}):
        with pytest.raises(ConfigError):
            make(**bad)
    assert square.Square.oracle_output == "scores"
