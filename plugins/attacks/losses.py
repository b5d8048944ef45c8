"""The objectives gradient attacks ascend: per-sample losses where larger is more adversarial.

``ce``: cross-entropy of the true class (untargeted) or minus that of the target (targeted).
``margin``: the C&W margin (Carlini & Wagner, 2017, f6 on logits): the best other logit minus
the true one (untargeted), or the target's logit minus the best other one (targeted).
``dlr``: the Difference of Logits Ratio (Croce & Hein, 2020, Eq. 5 and, targeted, Eq. 6), which
is invariant to shifting and scaling the logits, so a defense cannot hide behind their scale.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Loss = Literal["ce", "margin", "dlr"]
LOSSES: tuple[str, ...] = ("ce", "margin", "dlr")


def _other_best(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """The largest logit of each row other than that of class ``cls``."""
    masked = logits.scatter(1, cls.unsqueeze(1), float("-inf"))
    return masked.amax(dim=1)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                loss: str = "ce") -> torch.Tensor:
    """The per-sample objective (shape ``(N,)``) an attack maximises; see the module docstring."""
    if loss == "ce":
        if targets is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, targets, reduction="none")
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    if loss == "margin":
        if targets is None:
            return _other_best(logits, y) - true
        target = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        return target - _other_best(logits, targets)
    if loss == "dlr":
        if logits.shape[1] < 3 + (targets is not None):
            raise ValueError(f"the DLR loss needs at least {3 + (targets is not None)} classes, "
                             f"got {logits.shape[1]}")
        top = logits.sort(dim=1, descending=True).values
        if targets is None:
            # z_max_{i≠y} − z_y over z_π1 − z_π3 (Eq. 5, sign flipped: larger is more adversarial)
            return (_other_best(logits, y) - true) / (top[:, 0] - top[:, 2] + 1e-12)
        target = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        return (target - true) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def loss_and_gradient(model, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None,
                      loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's logits at ``x`` (detached), the per-sample objective and its input gradient."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    value = attack_loss(logits, y, targets, loss)
    (grad,) = torch.autograd.grad(value.sum(), x)
    return logits.detach(), value.detach(), grad
