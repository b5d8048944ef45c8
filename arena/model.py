"""The Model protocol, black-box query access, and the Architecture plugin base.

A model is anything that maps a float32 NCHW batch in [0, 1] to logits of shape ``(N, K)`` as
a torch tensor and has ``eval()``/``train()``: a ``torch.nn.Module`` in practice. Backends for
other frameworks (Keras) wrap their models into such a module.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from arena.errors import QueryBudgetExceeded
from arena.plugin import Plugin


@runtime_checkable
class Model(Protocol):
    """Logits in, torch tensors: ``model(x) -> (N, K)`` for ``x`` of shape ``(N, C, H, W)``."""

    training: bool

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


def model_device(model: Any, fallback: torch.device | None = None) -> torch.device:
    """The device of a model's first parameter or buffer (``fallback``, else the CPU, when it
    has none): the one way to find where a model lives."""
    if isinstance(model, nn.Module):
        for tensor in list(model.parameters()) + list(model.buffers()):
            return tensor.device
    return fallback if fallback is not None else torch.device("cpu")


@contextmanager
def frozen(model: Any) -> Iterator[Any]:
    """``model`` in eval mode without parameter gradients (as an attack sees it, and as a frozen
    part of a network being trained); mode and flags restored afterwards."""
    was_training = bool(getattr(model, "training", False))
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    grad_flags = [p.requires_grad for p in params]
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Torch's generator seeded with ``seed`` inside the block and restored after it (``None``:
    left alone), so that an attack call or a randomised model answers the same in a fresh,
    cached or resumed run."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def torch_threads_for(model: Any) -> Iterator[None]:
    """Run a block with the fewest torch threads any part of ``model`` prefers (then restored)."""
    modules = model.modules() if isinstance(model, nn.Module) else []
    wanted = [n for m in modules if (n := getattr(m, "preferred_torch_threads", None))]
    before = torch.get_num_threads()
    if wanted:
        torch.set_num_threads(min(wanted))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class QueryLedger:
    """The harness's record of a black-box attack's queries: per-sample counts against an optional
    per-sample ``budget``. The harness creates it and keeps it; the attack sees only a
    :class:`QueryOracle` over it, which charges every row it evaluates before the model runs.
    ``counts`` is a copy, and neither it nor ``budget`` can be assigned."""

    __slots__ = ("_budget", "_counts")

    def __init__(self, n: int, budget: int | None = None, device: torch.device | None = None) -> None:
        if budget is not None and budget < 0:
            raise ValueError(f"query budget must be non-negative, got {budget}")
        self._counts = torch.zeros(n, dtype=torch.long, device=device)
        self._budget = budget

    @property
    def n(self) -> int:
        """The number of attacked samples."""
        return self._counts.shape[0]

    @property
    def budget(self) -> int | None:
        return self._budget

    @property
    def counts(self) -> torch.Tensor:
        """Queries spent on each sample so far (a copy)."""
        return self._counts.clone()

    @property
    def total(self) -> int:
        """All queries so far."""
        return int(self._counts.sum())

    def charge(self, rows: int, index: Any = None) -> None:
        """Count ``rows`` queries, row ``k`` for sample ``index[k]`` (without ``index``: one row per
        sample, in order); QueryBudgetExceeded, counting nothing, if a sample would exceed the
        budget."""
        index = self._rows_index(rows, index)
        spent = torch.bincount(index, minlength=self.n)
        if self._budget is not None and bool(((self._counts + spent) > self._budget).any()):
            raise QueryBudgetExceeded(f"query budget of {self._budget} per sample exceeded")
        self._counts += spent

    def _rows_index(self, rows: int, index: Any) -> torch.Tensor:
        if index is None:
            if rows != self.n:
                raise ValueError(f"query of {rows} rows for {self.n} samples needs an index")
            return torch.arange(rows, device=self._counts.device)
        index = torch.as_tensor(index, device=self._counts.device)
        if index.dtype in (torch.bool, torch.uint8) or index.is_floating_point() or index.is_complex():
            raise ValueError(f"query index must hold integer sample indices, got {index.dtype}")
        if index.dim() != 1 or index.shape[0] != rows:
            raise ValueError(f"query index of {index.numel()} entries for {rows} rows: give the "
                             "attacked sample of every row (a 1-D index as long as the query)")
        if rows and bool(((index < 0) | (index >= self.n)).any()):
            raise ValueError(f"query index must lie in [0, {self.n})")
        return index.long()


class OracleView:
    """What an attack can read of its oracle: ``output``, ``budget``, ``counts`` (a copy) and
    ``total``, from the ledger behind it (the harness's own, or a mirror of it)."""

    __slots__ = ("_ledger", "_output")

    @property
    def output(self) -> str:
        """``"labels"`` or ``"scores"``."""
        return self._output

    @property
    def budget(self) -> int | None:
        """Queries allowed per sample (``None``: unlimited)."""
        return self._ledger.budget

    @property
    def counts(self) -> torch.Tensor:
        """Queries spent on each attacked sample so far (a copy: changing it changes nothing)."""
        return self._ledger.counts

    @property
    def total(self) -> int:
        """All queries so far."""
        return self._ledger.total


class QueryOracle(OracleView):
    """Black-box access to a model: labels or scores only, every query counted.

    The oracle answers under ``torch.no_grad`` with detached tensors, so no gradient can flow
    back to the model. Every row evaluated is counted, for the attacked sample ``index`` names
    (one entry per row), in a :class:`QueryLedger` that the harness holds (``ledger=``; else the
    oracle makes its own). With a ``budget`` (queries per sample), a query that would exceed it
    raises :class:`arena.errors.QueryBudgetExceeded` before the model is run. ``counts`` (a copy),
    ``total``, ``budget`` and ``output`` are read-only, and the oracle takes no new attributes.
    """

    __slots__ = ("_forward",)

    def __init__(
        self,
        model: Model,
        n: int,
        *,
        output: Literal["labels", "scores"] = "labels",
        budget: int | None = None,
        device: torch.device | None = None,
        ledger: QueryLedger | None = None,
    ) -> None:
        if output not in ("labels", "scores"):
            raise ValueError(f"output must be 'labels' or 'scores', got {output!r}")
        if ledger is None:
            ledger = QueryLedger(n, budget, device)
        elif ledger.n != n or (budget is not None and budget != ledger.budget):
            raise ValueError("the ledger's size and budget must match the oracle's")

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(x).detach()

        for name, value in (("_forward", forward), ("_ledger", ledger), ("_output", output)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"QueryOracle is read-only: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"QueryOracle is read-only: cannot delete {name!r}")

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Labels (int64, ``(M,)``) or softmax scores (``(M, K)``) for the ``M`` inputs ``x``.

        ``index`` names which attacked sample each row of ``x`` belongs to (``M`` entries);
        without it, ``x`` must hold one row per attacked sample, in order.
        """
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("a query is a tensor of input rows")
        self._ledger.charge(x.shape[0], index)
        logits = self._forward(x.detach())
        if self._output == "labels":
            return logits.argmax(dim=1)
        return logits.softmax(dim=1)


class Architecture(Plugin):
    """A network family (plugin kind ``architecture``): ``build`` returns a fresh torch module.

    The module maps ``(N, C, H, W)`` inputs in [0, 1] to ``(N, num_classes)`` logits; if it
    wants normalised inputs, normalisation is its first layer.
    """

    kind: ClassVar[str] = "architecture"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A new, randomly initialised model for inputs of ``input_shape`` = ``(C, H, W)``."""
        raise NotImplementedError
