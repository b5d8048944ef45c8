"""The dataset, architecture and backend contracts."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena.data import DataSplits, Split
from arena.errors import ConfigError
from arena.refs import DatasetRef
from arena.model import seeded
from arena.testing.fixtures import canonical, digits, reference, registry, trained_model

CPU = torch.device("cpu")




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
        with seeded(0, CPU):
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
            with seeded(0, CPU):  # the same dropout masks every time
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
        with seeded(1, CPU):
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
