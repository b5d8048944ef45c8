"""Contract test suites for plugin authors (and for every built-in plugin).

Subclass one in a pytest file and name your plugin::

    from arena.testing import AttackContract

    class TestMine(AttackContract):
        attack_id = "mine"
        params = {"steps": 5}

The suites use a small CNN trained once per process on the embedded ``digits`` data (a few
seconds on a CPU), so they run anywhere without downloads.
"""
from __future__ import annotations

import functools
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.attack import Attack, AttackResult
from arena.data import DataSplits, Split
from arena.defense import DefenseKind
from arena.errors import ConfigError
from arena.registry import Registry, load_plugins
from arena.threat import Knowledge, Norm
from arena.training import accuracy, fit

DEFAULT_EPS = {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L0: 12.0}


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The plugins installed in this environment (loaded once per process)."""
    return load_plugins()


@functools.lru_cache(maxsize=1)
def digits() -> DataSplits:
    """The embedded digits data, split with seed 42."""
    return registry().make_dataset("digits").load(seed=42)


@functools.lru_cache(maxsize=1)
def _trained_state() -> tuple[dict[str, torch.Tensor], float]:
    torch.manual_seed(42)
    model = registry().make_architecture("digits-cnn").build((1, 8, 8), 10)
    fit(model, digits().train, lambda m, x, y: F.cross_entropy(m(x), y),
        epochs=8, batch_size=64, lr=2e-3, seed=42)
    return {k: v.clone() for k, v in model.state_dict().items()}, accuracy(model, digits().test)


def trained_model() -> nn.Module:
    """A fresh copy of a small CNN trained on digits (>90% test accuracy), in eval mode."""
    state, _ = _trained_state()
    model = registry().make_architecture("digits-cnn").build((1, 8, 8), 10)
    model.load_state_dict(state)
    return model.eval()


def attack_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test samples the trained model classifies correctly."""
    model = trained_model()
    test = digits().test
    with torch.no_grad():
        keep = model(test.x).argmax(1) == test.y
    return test.x[keep][:n].clone(), test.y[keep][:n].clone()


class AttackContract:
    """What every attack plugin must satisfy. Set ``attack_id``; optionally ``params``, ``eps``
    (default by norm: L∞ 0.3, L2 2.0, L0 12) and ``min_drop`` (accuracy points it must remove)."""

    attack_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    eps: ClassVar[float | None] = None
    min_drop: ClassVar[float] = 0.3
    samples: ClassVar[int] = 48

    def make(self, **extra: Any) -> Attack:
        return registry().make_attack(self.attack_id, **{**self.params, **extra})

    def budget(self, attack: Attack) -> float:
        return self.eps if self.eps is not None else DEFAULT_EPS[attack.threat_norm]

    def run(self, attack: Attack, seed: int = 0, **kw: Any) -> tuple[AttackResult, torch.Tensor, torch.Tensor]:
        x, y = attack_batch(self.samples)
        return attack(trained_model(), x, y, self.budget(attack), seed=seed, **kw), x, y

    def test_registered_and_documented(self) -> None:
        cls = registry().attacks[self.attack_id]
        assert cls.id == self.attack_id
        assert (cls.__doc__ or "").strip(), "the class docstring must cite its paper"
        assert isinstance(cls.knowledge, Knowledge) and isinstance(cls.norm, Norm)

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            self.make(no_such_key=1)

    def test_result_shapes_dtypes_devices(self) -> None:
        result, x, y = self.run(self.make())
        assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
        assert result.x_adv.device == x.device
        for field in (result.success, result.distance, result.queries):
            assert field.shape == (x.shape[0],) and field.device == x.device
        assert result.success.dtype == torch.bool and result.queries.dtype == torch.int64
        assert 0.0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1.0

    def test_input_not_mutated(self) -> None:
        x, y = attack_batch(self.samples)
        x0, y0 = x.clone(), y.clone()
        attack = self.make()
        attack(trained_model(), x, y, self.budget(attack), seed=0)
        assert torch.equal(x, x0) and torch.equal(y, y0)

    def test_budget_respected(self) -> None:
        attack = self.make()
        result, x, _ = self.run(attack)
        measured = attack.threat_norm.measure(result.x_adv - x)
        if attack.minimal:
            ok = result.success
            assert torch.allclose(measured[ok], result.distance[ok], rtol=1e-4, atol=1e-5)
        else:
            assert bool((measured <= self.budget(attack) * (1 + 1e-5) + 1e-6).all())

    def test_deterministic_under_seed(self) -> None:
        first, _, _ = self.run(self.make(), seed=7)
        second, _, _ = self.run(self.make(), seed=7)
        assert torch.equal(first.x_adv, second.x_adv)
        assert torch.equal(first.success, second.success)

    def test_lowers_accuracy(self) -> None:
        attack = self.make()
        result, x, y = self.run(attack)
        success = result.success_at(self.budget(attack)) if attack.minimal else result.success
        # the batch is classified correctly, so accuracy under attack = 1 - success rate
        assert float(success.float().mean()) >= self.min_drop

    def test_model_left_as_found(self) -> None:
        model = trained_model().train()
        x, y = attack_batch(8)
        attack = self.make()
        attack(model, x, y, self.budget(attack), seed=0)
        assert model.training
        assert all(p.requires_grad for p in model.parameters())
        assert all(p.grad is None for p in model.parameters())


class DefenseContract:
    """What every defense plugin must satisfy. Set ``defense_id``; ``params`` are merged over a
    short training schedule (``quick``) for training-time defenses."""

    defense_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    quick: ClassVar[dict[str, Any]] = {"epochs": 5, "batch_size": 32, "lr": 3e-3}
    min_accuracy: ClassVar[float] = 0.5

    def cls(self) -> type:
        return registry().defenses[self.defense_id]

    def make(self, **extra: Any) -> Any:
        cls = self.cls()
        quick = self.quick if cls.defense_kind is DefenseKind.TRAINING else {}
        known = cls.Config.model_fields
        return registry().make_defense(self.defense_id, **{k: v for k, v in quick.items() if k in known},
                                       **self.params, **extra)

    def data(self) -> DataSplits:
        d = digits()
        return DataSplits(d.name, d.train.take(400, 0), d.test.take(200, 0), d.num_classes)

    def defended(self, seed: int = 42) -> tuple[nn.Module, Any]:
        defense, data = self.make(), self.data()
        if defense.defense_kind is DefenseKind.TRAINING:
            torch.manual_seed(seed)
            model = defense.build(registry().make_architecture("digits-cnn"), data.input_shape, data.num_classes)
            return defense.train(model, data, seed=seed), defense
        if defense.defense_kind is DefenseKind.INFERENCE:
            return defense.wrap(trained_model(), data, seed=seed).eval(), defense
        model = trained_model()
        defense.fit(model, data.train, seed=seed)
        return model, defense

    def test_registered_and_documented(self) -> None:
        cls = self.cls()
        assert cls.id == self.defense_id and (cls.__doc__ or "").strip()
        assert isinstance(cls.defense_kind, DefenseKind)

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            self.make(no_such_key=1)

    def test_outputs_logits_of_the_right_shape(self) -> None:
        model, defense = self.defended()
        x = self.data().test.x[:16]
        with torch.no_grad():
            out = model(x)
        assert out.shape == (16, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
        if defense.defense_kind is DefenseKind.DETECTOR:
            scores = defense.score(model, x)
            assert scores.shape == (16,) and torch.isfinite(scores).all()

    def test_deterministic_under_seed(self) -> None:
        first, defense = self.defended(seed=3)
        second, _ = self.defended(seed=3)
        if defense.defense_kind is DefenseKind.TRAINING:
            for a, b in zip(first.state_dict().values(), second.state_dict().values()):
                assert torch.equal(a, b)

    def test_keeps_useful_accuracy(self) -> None:
        model, _ = self.defended()
        assert accuracy(model, self.data().test) > self.min_accuracy


class DatasetContract:
    """What every dataset plugin must satisfy. Set ``dataset_id`` and ``params``."""

    dataset_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}

    def test_loads_valid_splits_deterministically(self) -> None:
        first = registry().make_dataset(self.dataset_id, **self.params).load(seed=1)
        second = registry().make_dataset(self.dataset_id, **self.params).load(seed=1)
        for split in (first.train, first.test):
            assert isinstance(split, Split) and len(split) > 0
            assert int(split.y.max()) < first.num_classes
        assert torch.equal(first.test.x, second.test.x) and torch.equal(first.train.y, second.train.y)

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            registry().make_dataset(self.dataset_id, no_such_key=1)


class ArchitectureContract:
    """What every architecture plugin must satisfy. Set ``architecture_id``, ``input_shape``."""

    architecture_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    input_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)

    def test_builds_a_logit_model(self) -> None:
        model = registry().make_architecture(self.architecture_id, **self.params).build(self.input_shape, 10)
        model.eval()
        with torch.no_grad():
            out = model(torch.rand(2, *self.input_shape))
        assert out.shape == (2, 10)
        assert not torch.allclose(out.softmax(1).sum(1), out.sum(1)), "outputs look like probabilities"

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            registry().make_architecture(self.architecture_id, no_such_key=1)
