"""Metric plugins: measurements that a tournament stores next to its matches.

A metric is a plugin (hook ``arena_register_metrics``) that turns what a tournament has at hand
into one number. It declares:

* ``scope``: ``model`` (one value per entrant, measured on its model and the evaluated clean
  samples, e.g. the mean Jacobian norm) or ``match`` (one value per match, i.e. per defense,
  attack and budget, measured on that match's adversarial examples, e.g. the empirical
  robustness of DeepFool's perturbations);
* ``needs``: what else it reads, among ``train`` (the training split), ``features`` (the
  model's pre-logit embedding, ``model.features``) and ``detector`` (the entrant's detector and
  its scores). An entrant that lacks what a metric needs gets a ``n/a`` row saying why, not an
  error;
* ``better``: ``higher``, ``lower`` or None (no direction), for the tables.

:meth:`Metric.measure` receives :class:`ModelInputs` or :class:`MatchInputs` and returns a float.
A metric that raises or returns a non-finite value fails its own row only (status ``failed``,
with the error), never the match or the tournament; one that raises :class:`NotApplicable`
(the value does not exist for these inputs) gets a ``n/a`` row. The core knows no particular metric; the
built-in ones are in ``arena_builtins.metrics``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn

from arena.data import Split
from arena.plugin import Plugin
from arena.threat import Norm

NEEDS = ("train", "features", "detector")


class NotApplicable(Exception):
    """Raised by :meth:`Metric.measure` when the value does not exist for these inputs (a mean
    over the broken samples of a match that broke none): the row is ``n/a`` with the message."""


class Scope(str, Enum):
    MODEL = "model"
    MATCH = "match"


@dataclass
class ModelInputs:
    """An entrant as a model metric sees it: the defended model (what attacks face), its base
    classifier, its detector (or None), the evaluated clean samples ``x``, ``y`` with the mask of
    those it classifies correctly, and the training split (when the metric needs ``train``)."""

    defense: str
    model: nn.Module
    base: nn.Module
    detector: Any
    x: torch.Tensor
    y: torch.Tensor
    clean_correct: torch.Tensor
    train: Split | None
    device: torch.device


@dataclass
class MatchInputs(ModelInputs):
    """A match as a match metric sees it, on top of the entrant: the attack's label, norm and the
    budget, and one entry per attacked row (a sample, or a sample and a target in a targeted
    run): the clean input ``x_rows`` and label ``y_rows``, the example as it was judged at this
    budget ``x_adv`` (a minimal attack's example clipped to the budget), whether it broke the
    defended model (``broken``: misclassified, or the target reached, and not flagged by a
    detector), its distance in the attack's norm, the targets (None: untargeted) and the
    position of its sample among the evaluated ones (``row_sample``)."""

    attack: str
    norm: Norm
    budget: float
    x_rows: torch.Tensor
    y_rows: torch.Tensor
    x_adv: torch.Tensor
    broken: torch.Tensor
    distance: torch.Tensor
    targets: torch.Tensor | None
    row_sample: torch.Tensor


class Metric(Plugin):
    """Base of metric plugins (see the module docstring)."""

    kind: ClassVar[str] = "metric"
    scope: ClassVar[Scope] = Scope.MODEL
    needs: ClassVar[frozenset[str]] = frozenset()
    better: ClassVar[str | None] = None

    def measure(self, inputs: ModelInputs | MatchInputs) -> float:
        raise NotImplementedError

    def missing(self, inputs: ModelInputs) -> str | None:
        """Why this metric does not apply to ``inputs`` (None: it does)."""
        if isinstance(inputs, MatchInputs) and len(inputs.x_rows) == 0:
            return f"{inputs.attack} attacked no sample of '{inputs.defense}' (none is classified correctly)"
        if "train" in self.needs and inputs.train is None:
            return "the training split was not given"
        if "detector" in self.needs and inputs.detector is None:
            return f"'{inputs.defense}' is not a detector"
        if "features" in self.needs and not callable(getattr(inputs.base, "features", None)):
            return f"the model of '{inputs.defense}' has no `features` (pre-logit embedding)"
        return None


def evaluate(metric: Metric, inputs: ModelInputs | MatchInputs) -> dict[str, Any]:
    """Run one metric: ``{"status", "value", "error", "seconds"}``, never raising for the
    metric's own faults (status ``failed``), ``n/a`` where it does not apply."""
    reason = metric.missing(inputs)
    if reason is not None:
        return {"status": "n/a", "value": None, "error": reason, "seconds": 0.0}
    start = time.perf_counter()
    try:
        value = float(metric.measure(inputs))
    except NotApplicable as exc:
        return {"status": "n/a", "value": None, "error": str(exc), "seconds": time.perf_counter() - start}
    except Exception as exc:  # one metric's failure fails its own row only
        return {"status": "failed", "value": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    if not math.isfinite(value):
        return {"status": "failed", "value": None, "seconds": seconds,
                "error": f"metric '{metric.id}' returned {value} (no sample to measure it on?)"}
    return {"status": "ok", "value": value, "error": None, "seconds": seconds}
