"""The defense contract and the builder of its defended models."""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from arena.data import DataSplits
from arena.defense import DefenseKind
from arena.errors import ConfigError
from arena.model import seeded
from arena.training import accuracy
from arena.testing.fixtures import QUICK, built_once, contract_data, registry, trained_model

CPU = torch.device("cpu")




@dataclasses.dataclass
class Entrant:
    """A defended model as the suites build it: ``model`` and the ``defense`` that made it."""

    model: nn.Module
    defense: Any

    def scores(self, x: torch.Tensor) -> torch.Tensor | None:
        return None  # a detector's entrant returns its per-sample scores

    def fingerprint(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the same seed must reproduce exactly: the model's parameters and buffers and
        its answers on ``x`` (under a fixed RNG state, so that randomised models compare)."""
        with seeded(0, CPU), torch.no_grad():
            out = self.model(x)
        return [*self.model.state_dict().values(), out]


class DetectorEntrant(Entrant):
    """A fitted detector guarding the model: its scores and threshold are part of it."""

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.defense.score(self.model, x)

    def fingerprint(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [*super().fingerprint(x), self.scores(x), torch.tensor(float(self.defense.threshold))]


class ContractBuilder:
    """Builds a defense's entrant on ``data``, one method per kind of defense (the defense picks
    its method in ``Defense.enter``): a training-time defense trains a fresh ``architecture``,
    a pretrained one loads into it, inference-time defenses and detectors wrap or guard
    :func:`trained_model`."""

    def __init__(self, data: DataSplits, seed: int = 42, architecture: str = "digits-cnn") -> None:
        self.data, self.seed, self.architecture = data, seed, registry().make_architecture(architecture)

    def train(self, defense: Any) -> Entrant:
        torch.manual_seed(self.seed)
        model = defense.build(self.architecture, self.data.input_shape, self.data.num_classes)
        return Entrant(defense.train(model, self.data, seed=self.seed).eval(), defense)

    def load(self, defense: Any) -> Entrant:
        return Entrant(defense.load(self.architecture, self.data).eval(), defense)

    def wrap(self, defense: Any) -> Entrant:
        return Entrant(defense.wrap(trained_model(), self.data, seed=self.seed).eval(), defense)

    def detect(self, defense: Any) -> DetectorEntrant:
        model = trained_model()
        defense.fit(model, self.data.train, seed=self.seed)
        return DetectorEntrant(model, defense)


def contract_config(defense_id: str, params: dict[str, Any], quick: dict[str, Any] = QUICK) -> dict[str, Any]:
    """``params`` over the short schedule ``quick`` (the keys its ``Config`` has) for a defense
    that trains; ``params`` alone for the others."""
    cls = registry().defenses[defense_id]
    known = cls.Config.model_fields if cls.trains else {}
    return {**{k: v for k, v in quick.items() if k in known}, **params}


def build_entrant(defense_id: str, config: dict[str, Any], *, seed: int = 42, rng: int = 0) -> Entrant:
    """A new entrant of ``defense_id`` with ``config``, built with torch's global generator at
    ``rng``: a defense that draws from it instead of from ``seed`` differs between ``rng`` values."""
    with seeded(rng, CPU):
        defense = registry().make_defense(defense_id, **config)
        return defense.enter(ContractBuilder(contract_data(), seed))






def cached_entrant(defense_id: str, config: dict[str, Any], seed: int = 42) -> Entrant:
    """:func:`build_entrant`'s entrant, built once per process per (id, config, seed); each call
    gets its own copy of the model (the defense object is shared: read it, do not change it)."""
    entrant = built_once(["entrant", defense_id, config, seed],
                         lambda: build_entrant(defense_id, config, seed=seed))
    return dataclasses.replace(entrant, model=copy.deepcopy(entrant.model))


class DefenseContract:
    """What every defense plugin must satisfy. Set ``defense_id``; ``params`` are merged over a
    short training schedule (``quick``) for training-time defenses."""

    defense_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    quick: ClassVar[dict[str, Any]] = QUICK
    min_accuracy: ClassVar[float] = 0.5

    def cls(self) -> type:
        return registry().defenses[self.defense_id]

    def config(self) -> dict[str, Any]:
        return contract_config(self.defense_id, self.params, self.quick)

    def make(self, **extra: Any) -> Any:
        return registry().make_defense(self.defense_id, **{**self.config(), **extra})

    def data(self) -> DataSplits:
        return contract_data()

    def entrant(self, seed: int = 42) -> Entrant:
        """The defended model, built once per process for this config and seed."""
        return cached_entrant(self.defense_id, self.config(), seed)

    def defended(self, seed: int = 42) -> tuple[nn.Module, Any]:
        entrant = self.entrant(seed)
        return entrant.model, entrant.defense

    def test_registered_and_documented(self) -> None:
        cls = self.cls()
        assert cls.id == self.defense_id and (cls.__doc__ or "").strip()
        assert isinstance(cls.defense_kind, DefenseKind)
        assert not (cls.wraps_model and cls.trains), "a defense wraps another's model or trains its own"

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            self.make(no_such_key=1)

    def test_outputs_logits_of_the_right_shape(self) -> None:
        entrant, x = self.entrant(), self.data().test.x[:16]
        with torch.no_grad():
            out = entrant.model(x)
        assert out.shape == (16, self.data().num_classes) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        scores = entrant.scores(x)
        if scores is not None:
            assert scores.shape == (16,) and torch.isfinite(scores).all()
            assert math.isfinite(entrant.defense.threshold), "fit must calibrate the threshold"

    def test_deterministic_under_seed(self) -> None:
        """Built again with the same seed (and torch's global generator elsewhere), the entrant
        has the same weights, the same answers and, for a detector, the same scores and threshold."""
        x = self.data().test.x[:32]
        first = self.entrant().fingerprint(x)
        second = build_entrant(self.defense_id, self.config(), seed=42, rng=1).fingerprint(x)
        assert len(first) == len(second)
        for i, (a, b) in enumerate(zip(first, second)):
            assert torch.equal(a, b), f"part {i} of {len(first)} differs under the same seed"

    def test_keeps_useful_accuracy(self) -> None:
        assert accuracy(self.entrant().model, self.data().test) > self.min_accuracy


# ------------------------------------------------------------------------------- attacks