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


class QueryOracle:
    """Black-box access to a model: labels or scores only, every query counted.

    The oracle answers under ``torch.no_grad`` with detached tensors, so no gradient can flow
    back to the model. ``counts`` holds the queries spent on each of the ``n`` samples of the
    attacked batch; a query for a subset of them passes their indices as ``index``. With a
    ``budget`` (queries per sample), a query that would exceed it raises
    :class:`arena.errors.QueryBudgetExceeded` before the model is run.
    """

    __slots__ = ("_forward", "output", "budget", "counts")

    def __init__(
        self,
        model: Model,
        n: int,
        *,
        output: Literal["labels", "scores"] = "labels",
        budget: int | None = None,
        device: torch.device | None = None,
    ) -> None:
        if output not in ("labels", "scores"):
            raise ValueError(f"output must be 'labels' or 'scores', got {output!r}")

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model(x).detach()

        self._forward = forward
        self.output = output
        self.budget = budget
        self.counts = torch.zeros(n, dtype=torch.long, device=device)

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Labels (int64, ``(M,)``) or softmax scores (``(M, K)``) for the ``M`` inputs ``x``.

        ``index`` names which attacked sample each row of ``x`` belongs to; without it, ``x``
        must hold one row per attacked sample, in order.
        """
        if index is None:
            if x.shape[0] != self.counts.shape[0]:
                raise ValueError(
                    f"query of {x.shape[0]} rows for {self.counts.shape[0]} samples needs an index"
                )
            index = torch.arange(x.shape[0], device=self.counts.device)
        index = index.to(self.counts.device)
        spent = torch.bincount(index, minlength=self.counts.shape[0])
        if self.budget is not None and bool(((self.counts + spent) > self.budget).any()):
            raise QueryBudgetExceeded(f"query budget of {self.budget} per sample exceeded")
        self.counts += spent
        logits = self._forward(x.detach())
        if self.output == "labels":
            return logits.argmax(dim=1)
        return logits.softmax(dim=1)

    @property
    def total(self) -> int:
        """All queries so far."""
        return int(self.counts.sum())


class Architecture(Plugin):
    """A network family (plugin kind ``architecture``): ``build`` returns a fresh torch module.

    The module maps ``(N, C, H, W)`` inputs in [0, 1] to ``(N, num_classes)`` logits; if it
    wants normalised inputs, normalisation is its first layer.
    """

    kind: ClassVar[str] = "architecture"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A new, randomly initialised model for inputs of ``input_shape`` = ``(C, H, W)``."""
        raise NotImplementedError
