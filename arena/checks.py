"""Evaluation sanity checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness" §5;
AutoAttack's flags): mistakes in an evaluation are detected and reported, not left to the reader.

:func:`model_checks` probes a defended model once, when it is built (zero input gradients,
probability outputs, randomised outputs); its findings are stored with the model. The flags
read from a run's results, these findings among them, are the leaderboard's:
:mod:`arena.leaderboard.flags`.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Probe ``model`` on a clean batch: share of zero input gradients, probability-like outputs,
    and whether two identical calls disagree (randomised outputs)."""
    was_training = model.training
    model.eval()
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xg)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg, allow_unused=True)
    with torch.no_grad():
        again = model(x)
    model.train(was_training)
    norms = grad.flatten(1).norm(dim=1) if grad is not None else torch.zeros(len(x))
    out = logits.detach()
    probabilities = bool(((out >= 0) & (out <= 1)).all() and torch.allclose(out.sum(1), torch.ones(len(x)).to(out),
                                                                          atol=1e-3))
    return {"zero_gradient_share": float((norms <= 1e-12).float().mean()),
            "outputs_probabilities": probabilities,
            "randomized": not torch.allclose(out, again)}
