"""A network defined outside the arena, entered by its import path: the ``import`` architecture.

``factory`` names a callable as ``module:attribute`` (a dotted attribute after the colon is
allowed: ``mypkg.nets:Zoo.wide_resnet``); ``kwargs`` are passed to it, and so are
``input_shape`` (``(C, H, W)``) and ``num_classes`` when its signature names them (a value in
``kwargs`` wins). It must return a ``torch.nn.Module`` mapping ``(N, C, H, W)`` inputs to
``(N, num_classes)`` logits. A network trained on normalised inputs gives ``normalize`` (one
``mean`` and one ``std`` per channel): the arena puts a :class:`arena.model.Normalize` layer in
front of it, so that the model takes [0, 1] pixels and every attack budget stays in pixel space.

Every training-time defense can then train the network, and ``model-file`` can load weights of it
(a weights file holds the network's own state dict, without the normalisation)::

    dataset = "cifar10"
    architecture = { id = "import", params = {
        factory = "mypkg.nets:wide_resnet",
        kwargs = { depth = 28, widen_factor = 10 },
        normalize = { mean = [0.4914, 0.4822, 0.4465], std = [0.2471, 0.2435, 0.2616] } } }

    [[defenses]]
    id = "standard"                    # trains mypkg.nets.wide_resnet(depth=28, ...)

    [[defenses]]
    name = "mine"
    id = "model-file"                  # loads weights trained elsewhere into the same network
    params = { path = "wrn-28-10.safetensors" }

The module must be importable where the arena runs (installed, on ``PYTHONPATH``, or on
``sys.path`` of the driver, which the tournament's worker processes inherit). The factory is
imported when the tournament file is validated, so a wrong path is a one-line error then, and
the tournament builds each architecture once and runs one forward pass on two inputs before
anything trains, so a wrong input shape or class count is one too. Trained models are cached
by the params, not by the factory's code: change ``revision`` (any text) after editing it.
"""
from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from torch import nn

from arena import hookimpl
from arena.errors import ConfigError, did_you_mean
from arena.model import Architecture, with_normalization
from arena.plugin import PluginConfig

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
FACTORY = re.compile(rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$")


class NormalizeConfig(PluginConfig):
    """Per-channel input normalisation ``(x - mean) / std`` applied before a network."""

    mean: tuple[float, ...] = Field(min_length=1, description="one mean per input channel")
    std: tuple[float, ...] = Field(min_length=1, description="one standard deviation per channel, > 0")

    @model_validator(mode="after")
    def _one_value_per_channel(self) -> "NormalizeConfig":
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} value(s) and std {len(self.std)}; give one of each "
                             "per input channel")
        if not all(math.isfinite(v) for v in self.mean):
            raise ValueError(f"mean must be finite, got {list(self.mean)}")
        if not all(math.isfinite(v) and v > 0 for v in self.std):
            raise ValueError(f"std must be finite and positive, got {list(self.std)}")
        return self

    def check_channels(self, channels: int, where: str) -> None:
        """ConfigError naming ``where`` unless there is one value per channel of the inputs."""
        if len(self.mean) != channels:
            raise ConfigError(f"{where}: normalize has {len(self.mean)} value(s) per statistic, but the "
                              f"inputs have {channels} channel(s)")


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The callable ``module:attr.path`` names; ValueError saying what is wrong otherwise."""
    if not FACTORY.match(spec):
        raise ValueError(f"'{spec}' is not an import path of the form 'module:callable' "
                         "(e.g. 'mypkg.nets:wide_resnet')")
    module_name, _, attr_path = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"{spec}: cannot import module '{module_name}' ({exc}); install the package or put "
                         "it on PYTHONPATH") from None
    except Exception as exc:  # the user's module raised while importing
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{spec}: importing module '{module_name}' raised {type(exc).__name__}: {first}") from None
    where = module_name
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ValueError(f"{spec}: '{where}' has no attribute '{part}'{did_you_mean(part, names)}")
        obj, where = getattr(obj, part), f"{where}.{part}"
    if not callable(obj):
        raise ValueError(f"{spec}: '{where}' is a {type(obj).__name__}, not callable")
    return obj


def named_parameters(fn: Callable[..., Any]) -> set[str]:
    """The parameter names ``fn`` accepts by keyword (none when its signature is unknown)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class ImportedArchitecture(Architecture):
    """A network from the user's own code: ``factory(**kwargs)``, by import path.

    Not from a paper: the way to enter any PyTorch network (a wide ResNet of one's own, a model
    zoo's constructor) into the arena. ``input_shape`` and ``num_classes`` are passed when the
    factory's signature names them; ``normalize`` puts a per-channel normalisation layer first,
    so the model takes [0, 1] pixels. See the module docstring for a tournament file.
    """

    id: ClassVar[str] = "import"

    class Config(PluginConfig):
        factory: str = Field(description="import path 'module:callable' of a function or class returning "
                             "an nn.Module")
        kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
        normalize: NormalizeConfig | None = Field(
            None, description="{mean, std} per channel: the network was trained on (x - mean) / std")
        revision: str = Field("", description="free text in the cache key: change it when the factory's "
                              "code changes, so models are trained again")

        @field_validator("factory")
        @classmethod
        def _importable(cls, v: str) -> str:
            """Imported when the file is validated: a wrong path is an error before anything runs."""
            resolve_factory(v)
            return v

    @property
    def where(self) -> str:
        """How messages name this architecture: ``architecture 'import' (mypkg.nets:f)``."""
        return f"architecture '{self.id}' ({self.config.factory})"

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        cfg = self.config
        try:
            factory = resolve_factory(cfg.factory)
        except ValueError as exc:
            raise ConfigError(f"architecture '{self.id}': {exc}") from None
        shape = tuple(int(s) for s in input_shape)
        if cfg.normalize is not None:
            cfg.normalize.check_channels(shape[0] if shape else 0, self.where)
        accepted = named_parameters(factory)
        args = {name: value for name, value in (("input_shape", shape), ("num_classes", int(num_classes)))
                if name in accepted}
        args.update(cfg.kwargs)
        try:
            model = factory(**args)
        except TypeError as exc:
            raise ConfigError(f"{self.where}: calling it with {_show(args)} raised TypeError: "
                              f"{_first_line(exc)}") from None
        except Exception as exc:  # the user's code refused its arguments or failed: a config problem
            raise ConfigError(f"{self.where}: calling it with {_show(args)} raised {type(exc).__name__}: "
                              f"{_first_line(exc)}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{self.where}: returned a {type(model).__name__}, not a torch.nn.Module")
        if cfg.normalize is not None:
            model = with_normalization(model, cfg.normalize.mean, cfg.normalize.std)
        return model


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _show(args: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")" if args else "no arguments"


@hookimpl
def arena_register_architectures(register) -> None:
    register(ImportedArchitecture)
