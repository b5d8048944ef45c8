"""Defense base classes: training-time, inference-time and detector defenses.

* A :class:`TrainingDefense` produces a trained model from an architecture and a dataset
  (or fine-tunes a pretrained one); its loss is the plugin's business.
* An :class:`InferenceDefense` wraps a trained model into a :class:`DefendedModel`
  (preprocessing, randomised outputs, sanitiser networks); ``base`` is the bare classifier that
  gray-box attacks see.
* A :class:`PretrainedDefense` enters a ready-made model file (torch or Keras).
* A :class:`DetectorDefense` scores inputs as adversarial; the tournament counts a detected
  adversarial example as defended and reports the clean false-positive rate.
"""
from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar, Literal, Protocol

import torch
from pydantic import Field
from torch import nn

from arena import training
from arena.data import DataSplits, Split
from arena.model import Architecture
from arena.plugin import Plugin, PluginConfig


class DefenseKind(str, Enum):
    TRAINING = "training-time"
    PRETRAINED = "pretrained"
    INFERENCE = "inference-time"
    DETECTOR = "detector"


class EntrantBuilder(Protocol):
    """What turns a defense into a defended model, one method per kind of defense (the
    tournament's entrant builder, the contract tests' fixture builder). A defense picks its
    method in :meth:`Defense.enter`, so no caller dispatches on the kind."""

    def train(self, defense: "TrainingDefense") -> Any: ...

    def load(self, defense: "PretrainedDefense") -> Any: ...

    def wrap(self, defense: "InferenceDefense") -> Any: ...

    def detect(self, defense: "DetectorDefense") -> Any: ...


class Defense(Plugin):
    """Base of all defense plugins; ``defense_kind`` says which of the kinds it is.

    ``wraps_model``: the defense protects another entrant's trained model (named by ``on`` in a
    tournament) instead of bringing a model of its own. ``trains``: it takes the tournament's
    ``[training]`` settings.
    """

    kind: ClassVar[str] = "defense"
    defense_kind: ClassVar[DefenseKind]
    wraps_model: ClassVar[bool] = False
    trains: ClassVar[bool] = False

    def enter(self, builder: EntrantBuilder) -> Any:
        """Build this defense's entrant with the ``builder`` method of its kind."""
        raise NotImplementedError


class TrainingConfig(PluginConfig):
    """Training hyper-parameters shared by training-time defenses.

    ``finetune_*`` apply when the defense post-processes a pretrained model (seeds 000 and 002
    fine-tune with Adam at lr 1e-4).
    """

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    finetune_epochs: int = Field(5, ge=1)
    finetune_lr: float = Field(1e-4, gt=0)


class TrainingDefense(Defense):
    """A defense applied while training; override :meth:`loss` (and :meth:`build` if the
    defense changes the network, such as bounded ReLUs)."""

    defense_kind: ClassVar[DefenseKind] = DefenseKind.TRAINING
    trains: ClassVar[bool] = True

    class Config(TrainingConfig):
        pass

    def enter(self, builder: EntrantBuilder) -> Any:
        return builder.train(self)

    def build(self, architecture: Architecture, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """A fresh network for this defense."""
        return architecture.build(input_shape, num_classes)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective on one batch."""
        raise NotImplementedError

    def train(self, model: nn.Module, data: DataSplits, *, seed: int = 42, finetune: bool = False,
              progress: bool = False) -> nn.Module:
        """Train ``model`` (fresh, or pretrained when ``finetune``) in place and return it."""
        cfg = self.config
        torch.manual_seed(seed)
        return training.fit(
            model, data.train, self.loss, seed=seed, progress=progress, desc=self.id,
            epochs=cfg.finetune_epochs if finetune else cfg.epochs,
            lr=cfg.finetune_lr if finetune else cfg.lr,
            batch_size=cfg.batch_size, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay,
        )


class DefendedModel(nn.Module):
    """A classifier wrapped by inference-time parts; ``base`` is the classifier alone.

    Adaptive hooks (what adaptive attacks may ask for, instead of reaching into internals):
    ``randomized`` says the outputs change between calls (attack with EOT), and
    :meth:`bpda_forward` is a differentiable stand-in for ``forward`` (BPDA, Athalye et al.
    2018), by default ``forward`` itself.
    """

    randomized: ClassVar[bool] = False

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - subclasses define it
        return self.base(x)

    def bpda_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same outputs as ``forward`` with useful gradients through non-differentiable parts."""
        return self(x)


class PretrainedDefense(Defense):
    """An entrant whose model comes ready-made (a model file of any backend), not trained here.

    :meth:`load` returns the model; the tournament neither trains nor caches it, and
    inference-time and detector defenses can wrap it through ``on``.
    """

    defense_kind: ClassVar[DefenseKind] = DefenseKind.PRETRAINED

    def enter(self, builder: EntrantBuilder) -> Any:
        return builder.load(self)

    def load(self, architecture: Architecture, data: DataSplits) -> nn.Module:
        raise NotImplementedError


class InferenceDefense(Defense):
    """A defense that changes how a trained model answers; :meth:`wrap` returns the defended model."""

    defense_kind: ClassVar[DefenseKind] = DefenseKind.INFERENCE
    wraps_model: ClassVar[bool] = True
    #: ``wrap`` trains parameters of its own (a sanitiser network). Such a defense's ``wrap``
    #: also accepts ``train=False``, returning the same structure untrained, so that a
    #: tournament can restore the trained state from its model cache instead of training again.
    learned: ClassVar[bool] = False

    def enter(self, builder: EntrantBuilder) -> Any:
        return builder.wrap(self)

    def wrap(self, model: nn.Module, data: DataSplits, *, seed: int = 42) -> DefendedModel:
        raise NotImplementedError


class DetectorDefense(Defense):
    """A detector of adversarial inputs, fitted on a trained model and clean training data.

    :meth:`score` returns a per-sample score (higher = more likely adversarial); the threshold
    is set so that a ``fpr`` share of clean training inputs is flagged.
    """

    defense_kind: ClassVar[DefenseKind] = DefenseKind.DETECTOR
    wraps_model: ClassVar[bool] = True

    class Config(PluginConfig):
        fpr: float = Field(0.05, gt=0, lt=1)

    threshold: float = float("inf")

    def enter(self, builder: EntrantBuilder) -> Any:
        return builder.detect(self)

    def fit(self, model: nn.Module, data: Split, *, seed: int = 42) -> None:
        """Fit the detector; subclasses call :meth:`calibrate` at the end."""
        raise NotImplementedError

    def score(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def calibrate(self, model: nn.Module, clean: torch.Tensor) -> None:
        """Set the threshold at the (1 - fpr) quantile of clean scores."""
        scores = self.score(model, clean).float()
        self.threshold = float(torch.quantile(scores, 1 - self.config.fpr))

    def detect(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Boolean flags: which inputs the detector calls adversarial."""
        return self.score(model, x) > self.threshold
