"""The attack harness enforces the threat model, whatever the plugin does."""
from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from arena import AttackError, ConfigError, QueryBudgetExceeded
from arena.attack import FixedBudgetAttack, MinimalAttack, RunOutput
from arena.model import QueryOracle
from arena.plugin import PluginConfig
from arena.threat import Knowledge, Norm


class Overshoot(FixedBudgetAttack):
    """Test attack: moves every pixel by 10·ε, far outside the budget and the [0, 1] box."""

    id: ClassVar[str] = "overshoot"

    class Config(PluginConfig):
        norm: Norm = Norm.LINF

    def run(self, model, x, y, eps, targets):
        return x + 10 * eps * torch.randn_like(x).sign()


class EditsWeights(FixedBudgetAttack):
    """Test attack that cheats by zeroing the model's last layer."""

    id: ClassVar[str] = "edits-weights"

    def run(self, model, x, y, eps, targets):
        with torch.no_grad():
            model.classifier.weight.mul_(0)
        return x


class ReturnsNaN(FixedBudgetAttack):
    """Test attack returning NaN."""

    id: ClassVar[str] = "returns-nan"

    def run(self, model, x, y, eps, targets):
        return torch.full_like(x, float("nan"))


class PeeksAtGradients(FixedBudgetAttack):
    """Test black-box attack that tries to differentiate through the oracle."""

    id: ClassVar[str] = "peeks"
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX
    oracle_output: ClassVar[str] = "scores"

    def run(self, model, x, y, eps, targets):
        assert isinstance(model, QueryOracle)
        assert not hasattr(model, "parameters") and not hasattr(model, "module")
        probe = x.clone().requires_grad_(True)
        scores = model(probe)
        assert not scores.requires_grad
        with pytest.raises(RuntimeError):
            scores.sum().backward()
        return x


class Greedy(FixedBudgetAttack):
    """Test black-box attack that queries 5 times per sample."""

    id: ClassVar[str] = "greedy"
    knowledge: ClassVar[Knowledge] = Knowledge.BLACK_BOX

    class Config(PluginConfig):
        max_queries: int | None = None

    def run(self, model, x, y, eps, targets):
        for _ in range(5):
            model(x)
        return x


class Identity(MinimalAttack):
    """Test minimal attack that returns its input."""

    id: ClassVar[str] = "identity"

    def run(self, model, x, y, eps, targets):
        return RunOutput(x.clone(), torch.full((x.shape[0],), 3))


def test_harness_clips_an_attack_that_overshoots(model, batch):
    x, y = batch
    for norm, eps in ((Norm.LINF, 0.1), (Norm.L2, 0.5)):
        result = Overshoot(norm=norm)(model, x, y, eps)
        assert float(norm.measure(result.x_adv - x).max()) <= eps * (1 + 1e-5)
        assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
        assert torch.allclose(result.distance, norm.measure(result.x_adv - x))


def test_weight_edits_are_caught(model, batch):
    with pytest.raises(AttackError, match="modified the model's weights"):
        EditsWeights()(model, *batch, eps=0.1)


def test_nan_output_is_an_error(model, batch):
    with pytest.raises(AttackError, match="NaN"):
        ReturnsNaN()(model, *batch, eps=0.1)


def test_black_box_attack_cannot_reach_gradients(model, batch):
    result = PeeksAtGradients()(model, *batch, eps=0.1)
    assert torch.equal(result.queries, torch.ones_like(result.queries))


def test_black_box_queries_are_counted_and_budgeted(model, batch):
    x, y = batch
    assert torch.equal(Greedy()(model, x, y, eps=0.1).queries, torch.full((len(x),), 5))
    with pytest.raises(QueryBudgetExceeded, match="budget of 3"):
        Greedy(max_queries=3)(model, x, y, eps=0.1)


def test_an_oracle_in_place_of_a_model_is_refused(model, batch):
    x, y = batch
    with pytest.raises(AttackError, match="must be given the model"):
        Greedy()(QueryOracle(model, len(x)), x, y, eps=0.1)


def test_oracle_query_with_subset_index(model, batch):
    x, _ = batch
    oracle = QueryOracle(model, len(x), output="scores")
    scores = oracle(x[:4], index=torch.tensor([0, 0, 5, 7]))
    assert scores.shape == (4, 10) and torch.allclose(scores.sum(1), torch.ones(4))
    assert oracle.counts[0] == 2 and oracle.counts[5] == 1 and oracle.total == 4
    with pytest.raises(ValueError, match="needs an index"):
        oracle(x[:4])


def test_minimal_attack_reports_distances_and_queries(model, batch):
    x, y = batch
    result = Identity()(model, x, y)
    assert not result.success.any() and torch.isinf(result.distance).all()
    assert torch.equal(result.queries, torch.full((len(x),), 3))
    assert not result.success_at(1.0).any()


@pytest.mark.parametrize("mutate, message", [
    (lambda x, y: (x.double(), y), "float32"),
    (lambda x, y: (x * 2, y), r"\[0, 1\]"),
    (lambda x, y: (x.flatten(1), y), r"\(N, C, H, W\)"),
    (lambda x, y: (x, y.int()), "int64"),
    (lambda x, y: (x, y + 10), r"y must lie in \[0, 10\)"),
])
def test_inputs_are_validated(model, batch, mutate, message):
    x, y = mutate(*batch)
    with pytest.raises(ConfigError, match=message):
        Overshoot()(model, x, y, 0.1)


def test_fixed_budget_attack_needs_eps(model, batch):
    with pytest.raises(ConfigError, match="needs eps"):
        Overshoot()(model, *batch)


def test_run_cannot_be_bypassed():
    with pytest.raises(TypeError, match="must not override"):
        class Sneaky(FixedBudgetAttack):
            """Overrides __call__."""

            def __call__(self, *a, **k):
                return None
