"""The attack contract."""
from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from arena.attack import Attack, AttackResult
from arena.errors import ConfigError
from arena.refs import DefenseRef
from arena.model import seeded
from arena.threat import Knowledge, Norm
from arena.testing.fixtures import DEFAULT_EPS, attack_batch, built_once, reference, registry, trained_model
from arena.testing.defenses import cached_entrant, contract_config

CPU = torch.device("cpu")




class AttackContract:
    """What every attack plugin must satisfy. Set ``attack_id``; optionally ``params``, ``eps``
    (default by norm: L∞ 0.3, L2 2.0, L1 8, L0 12), ``min_drop`` (accuracy points it must remove),
    ``samples``, and ``against``: a defense (an id or ``{"id", "params"}``) whose defended model
    is attacked, with the defense as the attack's context (an attack that evades a detector)."""

    attack_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    eps: ClassVar[float | None] = None
    min_drop: ClassVar[float] = 0.3
    samples: ClassVar[int] = 48
    against: ClassVar[str | dict[str, Any] | None] = None

    def make(self, **extra: Any) -> Attack:
        return registry().make_attack(self.attack_id, **{**self.params, **extra})

    def budget(self, attack: Attack) -> float:
        return self.eps if self.eps is not None else DEFAULT_EPS[attack.threat_norm]

    def target(self) -> tuple[nn.Module, Any]:
        """The model attacked and the attack's context: the trained CNN and None, or the
        entrant of ``against`` and its defense."""
        if self.against is None:
            return trained_model(), None
        ref = reference(DefenseRef, self.against)
        entrant = cached_entrant(ref.id, contract_config(ref.id, ref.params))
        return entrant.model, entrant.defense

    def run(self, attack: Attack, seed: int = 0, **kw: Any) -> tuple[AttackResult, torch.Tensor, torch.Tensor]:
        x, y = attack_batch(self.samples)
        model, context = self.target()
        return attack(model, x, y, self.budget(attack), seed=seed, **{"context": context, **kw}), x, y

    def result(self) -> tuple[AttackResult, torch.Tensor, torch.Tensor]:
        """``run(make())`` at seed 0, once per process per config (read it, do not change it)."""
        run = type(self).run
        return built_once(["attack", self.attack_id, self.params, self.eps, self.samples, self.against,
                           run.__module__, run.__qualname__], lambda: self.run(self.make()))

    def test_registered_and_documented(self) -> None:
        cls = registry().attacks[self.attack_id]
        assert cls.id == self.attack_id
        assert (cls.__doc__ or "").strip(), "the class docstring must cite its paper"
        assert isinstance(cls.knowledge, Knowledge) and isinstance(cls.norm, Norm)

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            self.make(no_such_key=1)

    def test_result_shapes_dtypes_devices(self) -> None:
        result, x, y = self.result()
        assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
        assert result.x_adv.device == x.device
        for field in (result.success, result.distance, result.queries):
            assert field.shape == (x.shape[0],) and field.device == x.device
        assert result.success.dtype == torch.bool and result.queries.dtype == torch.int64
        assert 0.0 <= float(result.x_adv.min()) and float(result.x_adv.max()) <= 1.0

    def test_input_not_mutated(self) -> None:
        _, x, y = self.result()  # the very tensors the attack was given
        x0, y0 = attack_batch(self.samples)
        assert torch.equal(x, x0) and torch.equal(y, y0)

    def test_budget_respected(self) -> None:
        attack = self.make()
        result, x, _ = self.result()
        measured = attack.threat_norm.measure(result.x_adv - x)
        if attack.minimal:
            ok = result.success
            assert torch.allclose(measured[ok], result.distance[ok], rtol=1e-4, atol=1e-5)
        else:
            assert bool((measured <= self.budget(attack) * (1 + 1e-5) + 1e-6).all())

    def test_deterministic_under_seed(self) -> None:
        first, _, _ = self.result()
        with seeded(1, CPU):  # the harness's seed, not the generator's history, decides
            second, _, _ = self.run(self.make(), seed=0)
        for field in ("x_adv", "success", "distance", "queries"):
            assert torch.equal(getattr(first, field), getattr(second, field)), field

    def test_lowers_accuracy(self) -> None:
        attack = self.make()
        result, _, _ = self.result()
        success = result.success_at(self.budget(attack)) if attack.minimal else result.success
        # the batch is classified correctly, so accuracy under attack = 1 - success rate
        assert float(success.float().mean()) >= self.min_drop

    def test_model_left_as_found(self) -> None:
        model, context = self.target()
        model.train()
        x, y = attack_batch(8)
        attack = self.make()
        attack(model, x, y, self.budget(attack), seed=0, context=context)
        assert model.training
        assert all(p.requires_grad for p in model.parameters())
        assert all(p.grad is None for p in model.parameters())


# ------------------------------------------------------------- datasets, architectures, backends