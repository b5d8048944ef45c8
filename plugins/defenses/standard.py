"""The undefended baseline: plain cross-entropy training."""
from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from arena import hookimpl
from arena.defense import TrainingDefense


class Standard(TrainingDefense):
    """Standard training with cross-entropy and no defense: the baseline every paper reports
    first (seed 000 Table III "no defense", seed 001 Table 2 "CNN", seed 002 "regular")."""

    id: ClassVar[str] = "standard"

    def loss(self, model, x, y):
        return F.cross_entropy(model(x), y)


@hookimpl
def arena_register_defenses(register):
    register(Standard)
