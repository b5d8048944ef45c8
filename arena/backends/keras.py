"""The Keras 3 backend: ``.keras`` and legacy ``.h5`` models as arena models (torch modules).

A loaded Keras model is wrapped into a :class:`KerasModel`, a ``torch.nn.Module`` taking NCHW
float32 tensors in [0, 1] and returning logits: the layout is converted when the Keras model is
channels-last; a trailing softmax is stripped (a logits sub-model), or, where it cannot be,
detected by probing and answered with ``log(p)`` (``outputs_probabilities = True``). On Keras'
**TensorFlow** backend input gradients reach torch autograd through :class:`TFBridge`, whose
backward is a ``tf.GradientTape`` vector-Jacobian product; on Keras' **torch** backend the
Keras model *is* a ``torch.nn.Module`` and is called directly.

Keras picks its backend once per process (``KERAS_BACKEND`` at the first ``import keras``);
``keras_backend`` sets it if Keras is not imported yet and is a ConfigError when the process
runs Keras on another backend. Keras and TensorFlow are imported lazily. See docs/keras.md.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.autograd.function import once_differentiable

from arena.model import torch_threads_for  # noqa: F401  (re-exported; the hook lives in the core)

from arena.backends import Backend
from arena.errors import ConfigError
from arena.hookspecs import hookimpl
from arena.plugin import PluginConfig

SUPPORTED = ("tensorflow", "torch")
TINY = 1e-30  # floor of probabilities before the log (float32 keeps it)
INSTALL = "install adversarial-arena[keras]"


def import_keras(backend: str | None = None) -> Any:
    """Import Keras on ``backend`` (``None``: whichever the process uses); ConfigError otherwise."""
    if backend is not None and backend not in SUPPORTED:
        raise ConfigError(f"keras backend '{backend}' is not supported; choose one of {', '.join(SUPPORTED)}")
    if backend is not None and "keras" not in sys.modules:
        chosen = os.environ.get("KERAS_BACKEND")
        if chosen and chosen != backend:
            raise ConfigError(f"keras_backend = '{backend}' but KERAS_BACKEND={chosen}; Keras runs one "
                              "backend per process: unset KERAS_BACKEND or run the entrants separately")
        os.environ["KERAS_BACKEND"] = backend
    try:
        import keras
        active = keras.backend.backend()
        if active == "tensorflow":
            import tensorflow  # noqa: F401  (the bridge needs it)
    except Exception as exc:  # ImportError, or a broken binary install
        raise ConfigError(f"keras backend unavailable: {INSTALL} ({type(exc).__name__}: {exc})") from None
    if backend is not None and active != backend:
        raise ConfigError(f"keras_backend = '{backend}' but this process already runs Keras on '{active}' "
                          f"(Keras reads KERAS_BACKEND once per process); run with KERAS_BACKEND={backend}, "
                          "or put entrants of different Keras backends in separate runs")
    if active not in SUPPORTED:
        raise ConfigError(f"Keras runs on '{active}'; the arena bridges only {' and '.join(SUPPORTED)} "
                          "(set KERAS_BACKEND=tensorflow or torch)")
    return keras


class KerasConfig(PluginConfig):
    keras_backend: Literal["tensorflow", "torch"] | None = Field(
        None, description="Keras backend the model must run on (None: the process's KERAS_BACKEND)")
    input_scale: float = Field(1.0, gt=0, description="multiplies [0, 1] inputs (255 for raw-pixel models)")
    outputs: Literal["auto", "logits", "probabilities"] = Field(
        "auto", description="what the model returns; auto strips or detects a final softmax")


class KerasBackend(Backend):
    """Keras 3 models (``.keras``, legacy ``.h5``) loaded with Keras' own loader and
    ``safe_mode=True`` (no Lambda bytecode, no unregistered custom objects), run on Keras'
    TensorFlow backend through a tf.GradientTape autograd bridge or on its torch backend
    directly. Whole-model files only: the architecture comes from the file, no template."""

    id: ClassVar[str] = "keras"
    suffixes: ClassVar[tuple[str, ...]] = (".keras", ".h5", ".hdf5")
    needs_template: ClassVar[bool] = False
    Config = KerasConfig

    def load(self, path: Path, template: nn.Module | None = None) -> nn.Module:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        keras = import_keras(self.config.keras_backend)
        try:
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
        except Exception as exc:  # unsafe content, a weights-only file, a corrupt archive
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ConfigError(f"{path}: Keras cannot load it safely: {type(exc).__name__}: {first}") from None
        wrapped = wrap_keras_model(model, input_scale=self.config.input_scale, outputs=self.config.outputs)
        wrapped.source = {"path": str(path)}
        return wrapped


# ------------------------------------------------------------------ model surgery
def _is_softmax(fn: Any) -> bool:
    return getattr(fn, "__name__", None) == "softmax"


def split_softmax(model: Any, keras: Any) -> tuple[Any, str | None]:
    """``(logits_model, how)`` when a trailing softmax can be removed, else ``(model, None)``."""
    try:
        inputs, last = model.inputs, model.layers[-1]
        if len(model.outputs) != 1:
            return model, None
        if isinstance(last, keras.layers.Softmax) or (
                isinstance(last, keras.layers.Activation) and _is_softmax(last.activation)):
            return keras.Model(inputs, last.input), f"removed {type(last).__name__} layer"
        if _is_softmax(getattr(last, "activation", None)):
            config = {**last.get_config(), "activation": "linear", "name": f"{last.name}_logits"}
            clone = type(last).from_config(config)
            out = clone(last.input)
            clone.set_weights(last.get_weights())
            return keras.Model(inputs, out), f"linear activation on {type(last).__name__}"
    except (AttributeError, ValueError, TypeError, IndexError):  # subclassed or shared layers
        pass
    return model, None


def _input_shape(model: Any) -> tuple:
    """The per-sample input shape: from the functional graph, else the shape a subclassed
    model was built with (Keras' ``_build_shapes_dict``), else ``()``."""
    try:
        return tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, TypeError, ValueError):
        built = list((getattr(model, "_build_shapes_dict", None) or {}).values())
        if len(built) == 1 and isinstance(built[0], (tuple, list)):
            return tuple(built[0][1:])
        return ()


def input_layout(model: Any, keras: Any) -> str:
    """``"nhwc"``, ``"nchw"`` or ``"flat"`` (rank-2 input, fed channels-last flattened)."""
    shape = _input_shape(model)
    if len(shape) == 1:
        return "flat"
    formats = {getattr(layer, "data_format", None) for layer in getattr(model, "layers", [])} - {None}
    if len(formats) == 1:
        return "nhwc" if formats.pop() == "channels_last" else "nchw"
    if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
        return "nhwc"
    if len(shape) == 3 and shape[0] in (1, 3, 4):
        return "nchw"
    return "nhwc" if keras.config.image_data_format() == "channels_last" else "nchw"


def arena_shape(shape: tuple, layout: str) -> list:
    """The arena's (C, H, W) for a Keras input shape (None where unknown)."""
    if len(shape) != 3 or layout not in ("nhwc", "nchw"):
        return [None, None, None]
    return [shape[2], shape[0], shape[1]] if layout == "nhwc" else list(shape)


def looks_like_probabilities(model: Any, layout: str, shape: tuple) -> bool:
    """Probe: non-negative rows summing to one on random inputs."""
    rng = np.random.default_rng(0)
    out = model(rng.random((4, *[d or 8 for d in shape]), dtype=np.float32), training=False)
    out = out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
    return bool(out.ndim == 2 and (out >= 0).all() and np.allclose(out.sum(1), 1.0, atol=1e-4))


def embedding_split(logits_model: Any, keras: Any) -> tuple[Any, Any] | None:
    """``(features_model, head_model)`` when the logits come from a final Dense layer."""
    try:
        last = logits_model.layers[-1]
        if not isinstance(last, keras.layers.Dense) or len(last.input.shape) != 2:
            return None
        features = keras.Model(logits_model.inputs, last.input)
        z = keras.Input((last.input.shape[1],))
        return features, keras.Model(z, last(z))
    except (AttributeError, ValueError, TypeError, IndexError):
        return None


# ------------------------------------------------------------------ the wrapper
def wrap_keras_model(model: Any, *, input_scale: float = 1.0,
                     outputs: Literal["auto", "logits", "probabilities"] = "auto") -> "KerasModel":
    """Wrap an in-memory Keras model as an arena model (see the module docstring)."""
    keras = import_keras()
    shape = _input_shape(model)
    if not shape:
        raise ConfigError(f"Keras model '{getattr(model, 'name', '?')}' has no known input shape; "
                          "build it on keras.Input(...) (a subclassed model: call it once, or save a functional one)")
    layout = input_layout(model, keras)
    logits_model, how = split_softmax(model, keras) if outputs != "logits" else (model, None)
    probs = outputs == "probabilities" or (
        outputs == "auto" and how is None and looks_like_probabilities(model, layout, shape))
    if probs:
        logits_model, how = model, None
    split = None if probs else embedding_split(logits_model, keras)
    wrapped = KerasModel(model, logits_model, split, layout=layout, in_shape=arena_shape(shape, layout),
                         scale=input_scale, probabilities=probs, stripped=how, backend=keras.backend.backend())
    wrapped.options = {"input_scale": input_scale, "outputs": outputs}
    return wrapped


class KerasModel(nn.Module):
    """An arena model around a Keras model: NCHW [0, 1] torch tensors in, torch logits out.

    ``features(x)`` (the flattened pre-logit embedding) and ``classifier(z)`` are present when
    the logits come from a final Dense layer, so embedding defenses (KDE) work on it. The Keras
    model always runs in inference mode. ``preferred_torch_threads`` is 1 on TensorFlow: torch
    only does the attack's elementwise work there, and its spinning OpenMP workers would take
    cores from TensorFlow (attack under :func:`torch_threads_for`).
    """

    def __init__(self, original: Any, logits_model: Any, split: tuple[Any, Any] | None, *, layout: str,
                 in_shape: list, scale: float, probabilities: bool, stripped: str | None, backend: str) -> None:
        super().__init__()
        self.keras_model = original  # what the file held (kept for inspection)
        self.keras_backend, self.layout = backend, layout
        self.outputs_probabilities, self.stripped_softmax = probabilities, stripped
        self.source: dict[str, str] = {}
        self.options: dict[str, Any] = {"input_scale": scale, "outputs": "auto"}
        self.preferred_torch_threads = 1 if backend == "tensorflow" else None
        image = dict(layout=layout, in_shape=in_shape, scale=scale)
        self.logits = _callable(logits_model, backend, log=probabilities, **image)
        if split is not None:
            self.features = _callable(split[0], backend, **image)
            self.classifier = _callable(split[1], backend, layout="2d", in_shape=list(_input_shape(split[1])),
                                        scale=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def __reduce__(self) -> tuple:
        """Pickled (Ray executors, deepcopy) as a ``.keras`` archive, wrapped again on loading."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.keras"
            self.keras_model.save(str(path))
            return _unpickle, (path.read_bytes(), self.keras_backend, self.options, self.source)

    def describe(self) -> dict[str, Any]:
        """Provenance: backend, versions, layout, output handling and the file it came from."""
        keras = import_keras()
        info = {"backend": "keras", "keras_backend": self.keras_backend, "keras_version": keras.__version__,
                "layout": self.layout, "outputs_probabilities": self.outputs_probabilities,
                "stripped_softmax": self.stripped_softmax, **self.source}
        if self.keras_backend == "tensorflow":
            import tensorflow as tf
            info["tensorflow_version"] = tf.__version__
        return info


def _unpickle(data: bytes, backend: str, options: dict[str, Any], source: dict[str, str]) -> KerasModel:
    keras = import_keras(backend)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        wrapped = wrap_keras_model(keras.saving.load_model(str(path), compile=False, safe_mode=True), **options)
    wrapped.source = source
    return wrapped


def _callable(model: Any, backend: str, **kw: Any) -> nn.Module:
    return TFCall(model, **kw) if backend == "tensorflow" else TorchCall(model, **kw)


def _torch_layout(x: torch.Tensor, layout: str, scale: float) -> torch.Tensor:
    """Arena NCHW to the Keras model's layout, on torch tensors."""
    if layout in ("nhwc", "flat"):
        x = x.permute(0, 2, 3, 1)
    if layout == "flat":
        x = x.reshape(x.shape[0], -1)
    return x * scale if scale != 1.0 else x


def _tf_layout(tf: Any, x: Any, layout: str, scale: float) -> Any:
    """Arena NCHW to the Keras model's layout, inside a tf.function."""
    if layout in ("nhwc", "flat"):
        x = tf.transpose(x, (0, 2, 3, 1))
    if layout == "flat":
        x = tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))
    return x * scale if scale != 1.0 else x


class TorchCall(nn.Module):
    """Keras-on-torch: the Keras model is a torch module; only layout and softmax handling."""

    def __init__(self, net: Any, *, layout: str, in_shape: list, scale: float, log: bool = False) -> None:
        super().__init__()
        self.net, self.layout, self.scale, self.log = net, layout, scale, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(_torch_layout(x, self.layout, self.scale), training=False).to(x.device)
        return out.clamp_min(TINY).log() if self.log else out


class TFCall(nn.Module):
    """Keras-on-TensorFlow: ``call_tf`` (plain forward) and ``call_grad_tf``, a forward whose
    recorded gradient is the input gradient only (a ``tf.custom_gradient`` with no variable
    gradients): TensorFlow's gradient of a function call would also compute every weight
    gradient. The backward reuses the forward's intermediates; it never recomputes them."""

    def __init__(self, net: Any, *, layout: str, in_shape: list, scale: float, log: bool = False) -> None:
        super().__init__()
        import tensorflow as tf

        def call(x: Any) -> Any:
            out = net(_tf_layout(tf, x, layout, scale), training=False)
            return tf.math.log(tf.maximum(out, TINY)) if log else out

        @tf.custom_gradient
        def call_input_grad(x: Any) -> Any:
            with tf.GradientTape() as inner:
                inner.watch(x)
                out = call(x)

            def grad(dy: Any, variables: Any = None) -> Any:
                gx = inner.gradient(out, x, output_gradients=dy)
                return gx if variables is None else (gx, [None] * len(variables))

            return out, grad

        known = layout != "flat" and None not in in_shape
        signature = [tf.TensorSpec([None, *in_shape], tf.float32)] if known else None
        self._net = net  # a plain attribute: TensorFlow variables are not torch parameters
        self.call_tf = tf.function(call, input_signature=signature, reduce_retracing=True)
        self.call_grad_tf = tf.function(call_input_grad, input_signature=signature, reduce_retracing=True)
        self.vjp_tf = tf.function(lambda x, g: _vjp(tf, call, x, g), reduce_retracing=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return TFBridge.apply(x, self)
        return to_torch(self.call_tf(to_tf(x)), x.device)


def _vjp(tf: Any, call: Any, x: Any, g: Any) -> Any:
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = call(x)
    return tape.gradient(out, x, output_gradients=g)


def to_tf(x: torch.Tensor) -> Any:
    """A TensorFlow copy of a torch tensor (float32, CPU)."""
    import tensorflow as tf

    return tf.convert_to_tensor(x.detach().to("cpu", torch.float32).contiguous().numpy())


def to_torch(t: Any, device: torch.device) -> torch.Tensor:
    """A torch copy of a TensorFlow tensor on ``device``."""
    return torch.from_numpy(np.array(t, dtype=np.float32, copy=True)).to(device)


class TFBridge(torch.autograd.Function):
    """Forward in TensorFlow under a ``tf.GradientTape``; backward is the tape's vector-Jacobian
    product ``d(sum(upstream * out)) / dx``. Each call records its own tape, used once and
    dropped; a second backward through the same graph (``retain_graph``) recomputes."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, call: TFCall) -> torch.Tensor:
        import tensorflow as tf

        x_tf = to_tf(x)
        with tf.GradientTape() as tape:
            tape.watch(x_tf)
            out = call.call_grad_tf(x_tf)
        ctx.call, ctx.tape, ctx.x_tf, ctx.out = call, tape, x_tf, out
        return to_torch(out, x.device)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        g = to_tf(grad)
        if ctx.tape is not None:
            gx = ctx.tape.gradient(ctx.out, ctx.x_tf, output_gradients=g)
            ctx.tape = ctx.out = None
        else:
            gx = ctx.call.vjp_tf(ctx.x_tf, g)
        return to_torch(gx, grad.device), None


@hookimpl
def arena_register_backends(register):
    register(KerasBackend)
