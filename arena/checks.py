"""Evaluation sanity checks (Carlini et al. 2019, "On Evaluating Adversarial Robustness" §5;
AutoAttack's flags): mistakes in an evaluation are detected and reported, not left to the reader.

:func:`model_checks` probes a defended model once, when it is built (zero input gradients,
probability outputs, randomised outputs); its findings are stored with the model. The flags
read from a run's results, these findings among them, are the leaderboard's:
:mod:`arena.leaderboard.flags`.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


# The functions whose call during a plain forward pass betrays an optimisation at inference time
# (AutoAttack's check_dynamic: a defense that runs gradient steps on its input or itself).
_AUTOGRAD_CALLS = {"grad", "backward", "_make_grads"}


def _optimises_at_inference(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether one forward pass of ``model`` on ``x`` calls autograd (traced: every Python call of
    torch.autograd's ``grad``/``backward`` is seen, whatever the defense calls them through)."""
    seen = []

    def trace(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name in _AUTOGRAD_CALLS \
                and "torch" in frame.f_code.co_filename and "autograd" in frame.f_code.co_filename:
            seen.append(frame.f_code.co_name)
        return None

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        model(x)
    finally:
        sys.settrace(previous)
    return bool(seen)


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Probe ``model`` on a clean batch: share of zero input gradients, probability-like outputs,
    whether two identical calls disagree (randomised outputs), and whether the forward pass
    runs autograd (an optimisation at inference time)."""
    was_training = model.training
    model.eval()
    dynamic = _optimises_at_inference(model, x[:8].detach().clone())
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
            "randomized": not torch.allclose(out, again), "optimises_at_inference": dynamic}
