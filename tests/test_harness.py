"""The attack harness enforces the threat model, whatever the plugin does."""
from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from arena import AttackError, ConfigError, QueryBudgetExceeded, testing
from arena.attack import FixedBudgetAttack, MinimalAttack, RunOutput
from arena.isolation import RemoteOracle
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
        assert isinstance(model, (QueryOracle, RemoteOracle))  # RemoteOracle: in the attacker process
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
    with pytest.raises(AttackError, match="attack 'edits-weights' modified the model: parameter classifier.weight"):
        EditsWeights()(model, *batch, eps=0.1)


class TidyHooks(FixedBudgetAttack):
    """Test attack that hooks the model while it works and unhooks it before returning."""

    id: ClassVar[str] = "tidy-hooks"

    def run(self, model, x, y, eps, targets):
        seen = []
        handle = model.classifier.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        model.train()  # mode flags are the harness's to restore, not an error
        with torch.no_grad():
            model(x)
        handle.remove()
        assert seen
        return x


def test_honest_transient_changes_are_not_flagged(model, batch):
    x, y = batch
    with pytest.warns(FutureWarning):  # the old weight_norm recomputes classifier.weight on every call
        torch.nn.utils.weight_norm(model.classifier)
    model.eval()
    with torch.no_grad():
        before = model(x)
    TidyHooks()(model, x, y, eps=0.1)
    assert testing.registry().make_attack("fgsm")(model, x, y, eps=0.1).success.any()
    assert not model.training
    assert not model.classifier._forward_hooks and len(model.classifier._forward_pre_hooks) == 1  # weight_norm's
    with torch.no_grad():
        assert torch.equal(model(x), before)


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


@pytest.mark.parametrize("index, message", [
    (torch.tensor([0, 1]), "index of 2 entries for 4 rows"),
    (torch.tensor([[0, 1], [2, 3]]), "index of 4 entries for 4 rows"),
    (torch.tensor([0, 1, 2, 32]), r"must lie in \[0, 32\)"),
    (torch.tensor([0, -1, 2, 3]), r"must lie in \[0, 32\)"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer sample indices"),
    (torch.ones(4, dtype=torch.bool), "integer sample indices"),
])
def test_oracle_index_names_one_sample_per_row(model, batch, index, message):
    x, _ = batch
    oracle = QueryOracle(model, len(x))
    with pytest.raises(ValueError, match=message):
        oracle(x[:4], index)
    assert oracle.total == 0


def test_oracle_is_read_only(model, batch):
    x, _ = batch
    oracle = QueryOracle(model, len(x), budget=2)
    oracle(x)
    for name, value in (("budget", None), ("counts", None), ("output", "scores"), ("total", 0), ("extra", 1)):
        with pytest.raises(AttributeError):
            setattr(oracle, name, value)
    oracle.counts.zero_()
    assert oracle.budget == 2 and oracle.output == "labels" and oracle.total == len(x)
    oracle(x)
    with pytest.raises(QueryBudgetExceeded):
        oracle(x[:1], torch.tensor([0]))


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


@pytest.mark.parametrize("name", ["__call__", "_run_guarded", "_validate", "_result", "threat_model"])
def test_run_cannot_be_bypassed(name):
    with pytest.raises(TypeError, match=f"must not override Attack.{name}"):
        type("Sneaky", (FixedBudgetAttack,), {"__doc__": "Overrides the harness.", name: lambda self, *a, **k: None})
