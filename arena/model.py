"""The Model protocol, black-box query access, input normalisation, and the Architecture plugin base.

A model is anything that maps a float32 NCHW batch in [0, 1] to logits of shape ``(N, K)`` as
a torch tensor and has ``eval()``/``train()``: a ``torch.nn.Module`` in practice. Backends for
other frameworks (Keras) wrap their models into such a module. A network trained on normalised
inputs enters with :func:`with_normalization` in front of it, so that it too takes [0, 1]
pixels and every attack budget stays in pixel space.
"""
from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel of an ``(N, C, ...)`` batch: the first layer of a network
    trained on normalised inputs, so that the network takes [0, 1] pixels.

    ``mean`` and ``std`` (one value per channel, ``std > 0``, finite) are float32 buffers: they
    move with ``.to(device)``, are part of ``state_dict()`` and count in the harness's exact model
    check like any weight. The forward pass stores nothing on the module, and an input with
    another number of channels is a ValueError naming both counts.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).flatten()
        s = torch.as_tensor(std, dtype=torch.float32).flatten()
        if m.numel() == 0 or m.shape != s.shape:
            raise ValueError(f"normalize: mean and std need one value per channel each, got {m.numel()} "
                             f"and {s.numel()}")
        if not (bool(torch.isfinite(m).all()) and bool(torch.isfinite(s).all()) and bool((s > 0).all())):
            raise ValueError(f"normalize: mean must be finite and std finite and positive, got mean "
                             f"{m.tolist()}, std {s.tolist()}")
        self.register_buffer("mean", m)
        self.register_buffer("std", s)

    @property
    def channels(self) -> int:
        """The number of channels it normalises."""
        return int(self.mean.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"normalize: {self.channels} channel(s) of mean/std, but the input has shape "
                             f"{tuple(x.shape)} (NCHW)")
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"


class Normalized(nn.Module):
    """``model(normalize(x))``: a network trained on normalised inputs, taking [0, 1] pixels.

    Its own ``state_dict()`` holds ``normalize.mean``, ``normalize.std`` and the network's
    entries under ``model.``; a weights file of the *user's* network (without the
    normalisation) loads into ``.model`` (the torch backend does so when the file's keys are
    the network's own).
    """

    def __init__(self, model: nn.Module, normalize: Normalize) -> None:
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


class NormalizedFeatureClassifier(Normalized):
    """:class:`Normalized` around a ``classifier(features(x))`` network, keeping that layout:
    ``features(x)`` is the network's embedding of the normalised ``x`` and ``classifier(z)`` its
    last layer, so embedding defenses and metrics work on it."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(self.normalize(x))

    def classifier(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(z)


def with_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> Normalized:
    """``model`` behind a :class:`Normalize` layer of ``mean`` and ``std`` (one value per
    channel), on ``model``'s device: a :class:`NormalizedFeatureClassifier` when ``model`` has
    callable ``features`` and ``classifier``, else a :class:`Normalized`."""
    normalize = Normalize(mean, std).to(model_device(model))
    layout = callable(getattr(model, "features", None)) and callable(getattr(model, "classifier", None))
    wrapped = (NormalizedFeatureClassifier if layout else Normalized)(model, normalize)
    return wrapped.train(model.training)


class Architecture(Plugin):
    """A network family (plugin kind ``architecture``): ``build`` returns a fresh torch module.

    The module maps ``(N, C, H, W)`` inputs in [0, 1] to ``(N, num_classes)`` logits; if it
    wants normalised inputs, normalisation is its first layer.
    """

    kind: ClassVar[str] = "architecture"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A new, randomly initialised model for inputs of ``input_shape`` = ``(C, H, W)``."""
        raise NotImplementedError


# ------------------------------------------------------------ optional speed settings of a model

AUTOCAST_DTYPES = {"bf16": torch.bfloat16}  # no "fp16": float16 input gradients underflow


@dataclass(frozen=True)
class SpeedSettings:
    """How an entrant's model runs once it is built (the tournament's ``[speed]``), all off by
    default: ``channels_last`` (4-D weights and inputs in NHWC memory format), ``compile``
    (``torch.compile`` of the forward pass, lazily in the process that runs it) and ``autocast``
    (``"bf16"``: the forward pass under ``torch.autocast`` to bfloat16, logits returned as
    float32). They apply to every forward pass after training: clean predictions, model checks,
    metrics, the attacks' forward and backward passes and the harness's judging, so that the model
    an attack is scored on is the model it attacked. Training, the model cache and its weights are
    untouched."""

    channels_last: bool = False
    compile: bool = False
    autocast: str | None = None

    def __post_init__(self) -> None:
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast: expected one of {', '.join(AUTOCAST_DTYPES)} or None, got {self.autocast!r}")

    @property
    def active(self) -> bool:
        """Whether any setting is on."""
        return self.channels_last or self.compile or self.autocast is not None

    def describe(self) -> dict[str, Any]:
        """The settings that are on, as JSON (for provenance)."""
        out: dict[str, Any] = {}
        if self.channels_last:
            out["channels_last"] = True
        if self.autocast is not None:
            out["autocast"] = self.autocast
        if self.compile:
            out["compile"] = True
        return out


@dataclass
class _Compiled:
    """A speed wrapper's compiled forward in this process (kept outside the module: the harness
    sees no new attribute, and pickling sends the plain model)."""

    fn: Any  # the compiled module, or None: running eager after compilation failed
    error: str | None = None
    seconds: float | None = None  # the warm-up compilation's wall time


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, _Compiled]" = weakref.WeakKeyDictionary()
_EAGER: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # wrappers inside an eager() block
_RECOMPILE_LIMIT = 64  # torch's default (8) is per code object, shared by every entrant of an architecture


def _compiled(model: "SpeedModel") -> _Compiled:
    """The wrapper's compiled forward in this process, made on first use. Every entrant of one
    architecture shares torch's per-function recompilation limit (grad mode, autocast, memory
    format, batch sizes and frozen weights each make a graph), so it is raised to
    ``_RECOMPILE_LIMIT``: past it, torch would run eager without saying so in the results."""
    state = _COMPILED.get(model)
    if state is None:
        import torch._dynamo

        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        if getattr(config, name, _RECOMPILE_LIMIT) < _RECOMPILE_LIMIT:
            setattr(config, name, _RECOMPILE_LIMIT)
        try:
            state = _Compiled(torch.compile(model.model))
        except Exception as exc:  # torch.compile unavailable here (Python version, platform)
            state = _Compiled(None, _one_line(exc))
        _COMPILED[model] = state
    return state


@contextmanager
def eager(model: Any) -> Iterator[None]:
    """Inside the block a :class:`SpeedModel` runs its forward eager (same settings otherwise):
    for checks that trace the Python calls of a forward pass, which compiling would add to."""
    if not isinstance(model, SpeedModel) or model in _EAGER:
        yield
        return
    _EAGER.add(model)
    try:
        yield
    finally:
        _EAGER.discard(model)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that say torch.compile (not the model) failed."""
    kinds: list[type[BaseException]] = []
    try:
        from torch._dynamo.exc import TorchDynamoException
        kinds.append(TorchDynamoException)
    except ImportError:  # pragma: no cover - torch without dynamo
        pass
    try:
        from torch._inductor.exc import InductorError
        kinds.append(InductorError)
    except ImportError:  # pragma: no cover - older torch
        pass
    return tuple(kinds)


class SpeedModel(nn.Module):
    """``model`` run under :class:`SpeedSettings`; ``.model`` is the network itself (its
    ``state_dict`` under ``model.``). It passes on the adaptive hooks (``randomized``,
    ``bpda_forward``), so attacks see the same model. The compiled forward is made on the first
    call in each process and kept outside the module; if compilation fails the wrapper runs eager
    and :func:`speed_record` says why."""

    def __init__(self, model: nn.Module, settings: SpeedSettings) -> None:
        super().__init__()
        self.model = model
        self.settings = settings
        if settings.channels_last:
            model.to(memory_format=torch.channels_last)  # 4-D parameters and buffers; others unchanged
        self.train(model.training)

    @property
    def randomized(self) -> bool:
        return bool(getattr(self.model, "randomized", False))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.settings.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @contextmanager
    def _precision(self, x: torch.Tensor) -> Iterator[None]:
        if self.settings.autocast is None:
            yield
            return
        with torch.autocast(x.device.type, dtype=AUTOCAST_DTYPES[self.settings.autocast]):
            yield

    def _logits(self, out: Any) -> Any:
        if self.settings.autocast is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
            return out.float()
        return out

    def _run(self, fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
        x = self._layout(x)
        with self._precision(x):
            return self._logits(fn(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.settings.compile or self in _EAGER:
            return self._run(self.model, x)
        state = _compiled(self)
        if state.fn is None:
            return self._run(self.model, x)
        try:
            return self._run(state.fn, x)
        except _compile_errors() as exc:  # a recompilation for a new shape failed: run eager from now on
            state.fn, state.error = None, _one_line(exc)
            return self._run(self.model, x)

    def bpda_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's ``bpda_forward`` under the same settings (eager), else ``forward``."""
        bpda = getattr(self.model, "bpda_forward", None)
        return self._run(bpda, x) if callable(bpda) else self(x)


class SpeedFeatureModel(SpeedModel):
    """:class:`SpeedModel` around a ``classifier(features(x))`` network, keeping that layout
    (eager, under the same settings) for embedding defenses and metrics."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(self.model.features, x)

    def classifier(self, z: torch.Tensor) -> torch.Tensor:
        with self._precision(z):
            return self._logits(self.model.classifier(z))


def with_speed(model: nn.Module, settings: SpeedSettings | None) -> nn.Module:
    """``model`` under ``settings`` (``model`` itself when none is on, or when it is one already):
    a :class:`SpeedFeatureModel` when it has callable ``features`` and ``classifier``, else a
    :class:`SpeedModel`. ``channels_last`` converts the model's 4-D parameters in place."""
    if settings is None or not settings.active or isinstance(model, SpeedModel):
        return model
    layout = callable(getattr(model, "features", None)) and callable(getattr(model, "classifier", None))
    return (SpeedFeatureModel if layout else SpeedModel)(model, settings)


def without_speed(model: Any) -> Any:
    """The network inside a speed wrapper (``model`` itself when it is none): what a defense
    built on another entrant wraps, fine-tunes or loads weights into."""
    return model.model if isinstance(model, SpeedModel) else model


def warm_up(model: nn.Module, x: torch.Tensor) -> None:
    """Compile a :class:`SpeedModel` with ``compile`` on now, as attacks and judging call it
    (a forward pass without gradients, and one with the input's gradient, on the frozen model);
    when compilation fails and the eager model does not, fall back to eager (recorded for
    :func:`speed_record`). Anything else the model raises is raised. No-op for other models."""
    if not (isinstance(model, SpeedModel) and model.settings.compile):
        return
    state = _compiled(model)
    if state.fn is None:
        return
    start = time.perf_counter()
    try:
        _probe(model, x)
    except Exception as exc:
        state.fn, state.error = None, _one_line(exc)
        _probe(model, x)  # the eager model: its own failure is raised
    state.seconds = time.perf_counter() - start


def _probe(model: nn.Module, x: torch.Tensor) -> None:
    with frozen(model):
        with torch.no_grad():
            model(x)
        xg = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(xg)
            torch.autograd.grad(out.float().sum(), xg, allow_unused=True)


def speed_record(model: Any) -> dict[str, Any] | None:
    """What a model's speed settings are, as JSON for its provenance (None: none is on): the
    settings on, and for ``compile`` whether it runs compiled in this process (``"eager"``
    and the error when compilation failed) and the seconds its warm-up compilation took."""
    if not isinstance(model, SpeedModel):
        return None
    out = model.settings.describe()
    state = _COMPILED.get(model)
    if model.settings.compile and state is not None:
        if state.fn is None:
            out["compile"] = {"requested": True, "running": "eager", "error": state.error}
        elif state.seconds is not None:
            out["compile_seconds"] = round(state.seconds, 3)
    return out


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
