"""Contract test suites for plugin authors (and for every built-in plugin).

Subclass one in a pytest file and name your plugin::

    from arena.testing import AttackContract

    class TestMine(AttackContract):
        attack_id = "mine"
        params = {"steps": 5}

The suites use a small CNN trained once per process on the embedded ``digits`` data (a few
seconds on a CPU), so they run anywhere without downloads. What they build is cached per process
under the plugin's id and config: a defense is trained once for all the checks of its suite (and
once more to check that the same seed reproduces it), and an attack runs once for the checks
that only read its result.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.attack import Attack, AttackResult
from arena.data import DataSplits, Split
from arena.defense import DefenseKind
from arena.errors import ConfigError
from arena.refs import DatasetRef, DefenseRef, PluginRef
from arena.registry import Registry, load_plugins
from arena.threat import Knowledge, Norm
from arena.training import accuracy, fit

DEFAULT_EPS = {Norm.LINF: 0.3, Norm.L2: 2.0, Norm.L0: 12.0}
#: The short training schedule of training-time defenses under the suites.
QUICK: dict[str, Any] = {"epochs": 5, "batch_size": 32, "lr": 3e-3}


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The plugins installed in this environment (loaded once per process)."""
    return load_plugins()


@functools.lru_cache(maxsize=1)
def digits() -> DataSplits:
    """The embedded digits data, split with seed 42."""
    return registry().make_dataset("digits").load(seed=42)


@functools.lru_cache(maxsize=1)
def contract_data() -> DataSplits:
    """The defense suites' data: 400 training and 200 test samples of :func:`digits`."""
    d = digits()
    return DataSplits(d.name, d.train.take(400, 0), d.test.take(200, 0), d.num_classes)


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


def canonical(value: Any) -> str:
    """A cache key for a config: JSON with sorted keys (equal configs, equal keys)."""
    return json.dumps(value, sort_keys=True, default=str)


@contextmanager
def rng_state(seed: int) -> Iterator[None]:
    """Torch's global generator seeded with ``seed`` inside the block, restored after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def reference(kind: type[PluginRef], value: str | dict[str, Any]) -> PluginRef:
    """A plugin reference (an id, or ``{"id", "params"}``) resolved against :func:`registry`."""
    with registry().resolving():
        return kind.model_validate(value)


# ------------------------------------------------------------------------------- defenses
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
        with rng_state(0), torch.no_grad():
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
    with rng_state(rng):
        defense = registry().make_defense(defense_id, **config)
        return defense.enter(ContractBuilder(contract_data(), seed))


_BUILT: dict[str, Any] = {}  # what the suites build once per process, by canonical key


def built_once(key: list[Any], build: Callable[[], Any]) -> Any:
    """``build()``, called once per process per ``key`` (a JSON-able list)."""
    text = canonical(key)
    if text not in _BUILT:
        _BUILT[text] = build()
    return _BUILT[text]


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
class AttackContract:
    """What every attack plugin must satisfy. Set ``attack_id``; optionally ``params``, ``eps``
    (default by norm: L∞ 0.3, L2 2.0, L0 12), ``min_drop`` (accuracy points it must remove),
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
        with rng_state(1):  # the harness's seed, not the generator's history, decides
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
class DatasetContract:
    """What every dataset plugin must satisfy. Set ``dataset_id`` and ``params``."""

    dataset_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}

    def test_loads_valid_splits_deterministically(self) -> None:
        first = registry().make_dataset(self.dataset_id, **self.params).load(seed=1)
        second = registry().make_dataset(self.dataset_id, **self.params).load(seed=1)
        assert first.num_classes >= 2 and first.test.x.shape[1:] == first.train.x.shape[1:]
        for split in (first.train, first.test):
            assert isinstance(split, Split) and len(split) > 0
            assert 0 <= int(split.y.min()) and int(split.y.max()) < first.num_classes
        assert torch.equal(first.test.x, second.test.x) and torch.equal(first.train.y, second.train.y)

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            registry().make_dataset(self.dataset_id, no_such_key=1)


@functools.lru_cache(maxsize=None)
def _dataset(ref_json: str) -> DataSplits:
    return reference(DatasetRef, json.loads(ref_json)).build().load(seed=0)


class ArchitectureContract:
    """What every architecture plugin must satisfy. Set ``architecture_id``, ``params`` and the
    ``dataset`` (a reference: id or ``{"id", "params"}``) whose input shape and classes it is
    built for; ``input_shape = (C, S, S)`` instead asks for ``synthetic`` data of that shape."""

    architecture_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    dataset: ClassVar[str | dict[str, Any]] = "digits"
    input_shape: ClassVar[tuple[int, int, int] | None] = None

    def data(self) -> DataSplits:
        ref: Any = self.dataset
        if self.input_shape is not None:
            c, h, _ = self.input_shape
            ref = {"id": "synthetic", "params": {"channels": c, "size": h, "num_classes": 10,
                                                 "n_train": 64, "n_test": 16}}
        return _dataset(canonical(ref))

    def build(self) -> nn.Module:
        data = self.data()
        with rng_state(0):
            arch = registry().make_architecture(self.architecture_id, **self.params)
            return arch.build(data.input_shape, data.num_classes)

    def test_registered_and_documented(self) -> None:
        cls = registry().architectures[self.architecture_id]
        assert cls.id == self.architecture_id and (cls.__doc__ or "").strip()

    def test_builds_a_logit_model(self) -> None:
        model, x = self.build().eval(), self.data().test.x[:4]
        with torch.no_grad():
            out = model(x)
        assert out.shape == (4, self.data().num_classes) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert not torch.allclose(out.softmax(1).sum(1), out.sum(1)), "outputs look like probabilities"

    def test_trainable(self) -> None:
        """Every parameter is trainable and gets a gradient; a few Adam steps on one real batch
        lower its loss."""
        model, train = self.build().train(), self.data().train.take(32, 0)
        assert all(p.requires_grad for p in model.parameters()) and any(True for _ in model.parameters())

        def loss() -> torch.Tensor:
            with rng_state(0):  # the same dropout masks every time
                return F.cross_entropy(model(train.x), train.y)

        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        before = loss()
        before.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"no finite gradient reaches {missing}"
        for _ in range(5):
            opt.step()
            opt.zero_grad()
            loss().backward()
        with torch.no_grad():
            assert float(loss()) < float(before.detach())

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            registry().make_architecture(self.architecture_id, no_such_key=1)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


class BackendContract:
    """What every model backend must satisfy. Set ``backend_id`` and ``params``, and implement
    :meth:`write_model`: save the suite's trained digits CNN (a torch module) in the backend's
    format. Loaded back, it must give the same logits and input gradients (relative
    ``tolerance``; ten times that for gradients)."""

    backend_id: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}
    tolerance: ClassVar[float] = 1e-4

    def write_model(self, model: nn.Module, directory: Path) -> Path:
        """Save ``model`` under ``directory`` in this backend's format; return the file."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_model")

    def cls(self) -> type:
        return registry().backends[self.backend_id]

    def make(self, **extra: Any) -> Any:
        return registry().make_backend(self.backend_id, **{**self.params, **extra})

    def template(self) -> nn.Module | None:
        """A freshly initialised digits CNN for formats that store weights only, else None."""
        if not getattr(self.cls(), "needs_template", True):
            return None
        with rng_state(1):
            return registry().make_architecture("digits-cnn").build((1, 8, 8), 10)

    def test_registered_and_documented(self) -> None:
        cls = self.cls()
        assert cls.id == self.backend_id and (cls.__doc__ or "").strip()
        assert cls.suffixes and all(s.startswith(".") for s in cls.suffixes)

    def test_rejects_unknown_config_key(self) -> None:
        with pytest.raises(ConfigError, match="no_such_key"):
            self.make(no_such_key=1)

    def test_loads_the_same_model(self, tmp_path: Path) -> None:
        source = trained_model()
        path = self.write_model(source, tmp_path)
        assert path.suffix in self.cls().suffixes
        model = self.make().load(path, self.template()).eval()
        x, y = digits().test.x[:32], digits().test.y[:32]
        outs, grads = [], []
        for m in (model, source):
            xr = x.clone().requires_grad_(True)
            outs.append(m(xr))
            grads.append(torch.autograd.grad(F.cross_entropy(outs[-1], y), xr)[0])
        assert outs[0].shape == (32, 10) and outs[0].dtype == torch.float32
        assert _rel(outs[0].detach(), outs[1].detach()) < self.tolerance
        assert torch.equal(outs[0].argmax(1), outs[1].argmax(1))
        assert _rel(grads[0], grads[1]) < 10 * self.tolerance, "white-box attacks need input gradients"

    def test_missing_file_is_a_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError):
            self.make().load(tmp_path / f"absent{self.cls().suffixes[0]}", self.template())
