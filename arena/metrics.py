"""The papers' measurements of accuracy, robustness and smoothness.

Everything here works on plain tensors and ``nn.Module`` classifiers returning logits, and knows
nothing about any particular attack or defense:

* :func:`clean_accuracy`, :func:`adversarial_accuracy`, :func:`accuracy_over_budgets`;
* :func:`empirical_robustness` ρ = mean ‖δ‖₂ / (‖x‖₂ + ε) (seed 001 eq. 2, seed 002 ρ̂_adv);
* :func:`training_set_distance`, the mean nearest-neighbour L2 distance from adversarial
  examples to the training set (seed 001 Table 2);
* :func:`loss_sensitivity`, the mean ‖∇ₓ CE‖₂ (seed 001 §4, Table 3);
* :func:`mean_jacobian_frobenius`, the mean ‖J(x)‖_F of the logits (seed 002 Table 1), and
  :func:`logit_jacobian`, the exact Jacobian it is built on;
* :func:`detection_auc` (seed 003 Table 2) and :func:`davies_bouldin` (seed 003);
* :func:`exploitable_robustness`, 1 − P(exploitable space) (seed 004 §2).

Functions that run a model put it in eval mode and restore its mode afterwards; none of them
leaves gradients on the model's parameters.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from arena.model import frozen, model_device

TINY = 1e-12


def _batches(n: int, batch_size: int) -> Iterable[slice]:
    return (slice(i, i + batch_size) for i in range(0, n, batch_size))


def _mask(n: int, clean_correct: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    if clean_correct is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return clean_correct.to(device=device, dtype=torch.bool)


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    device = model_device(model, x.device)
    correct = 0
    with frozen(model), torch.no_grad():
        for s in _batches(len(x), batch_size):
            pred = model(x[s].to(device)).argmax(dim=1).to(y.device)
            correct += int((pred == y[s]).sum())
    return correct / max(len(x), 1)


def adversarial_accuracy(success: torch.Tensor, clean_correct: torch.Tensor | None = None) -> float:
    """Accuracy under attack: the share of samples classified correctly and not fooled.

    ``success`` is an attack's per-sample success; samples the model already misclassifies
    (``clean_correct`` False) count as not robust whatever the attack did.
    """
    robust = ~success.bool() & _mask(len(success), clean_correct, success.device)
    return float(robust.float().mean()) if len(success) else float("nan")


def accuracy_over_budgets(success: torch.Tensor, distance: torch.Tensor, budgets: Iterable[float],
                          clean_correct: torch.Tensor | None = None) -> dict[float, float]:
    """Accuracy under attack at each budget, read from one run's per-sample distances.

    A sample is fooled within ``eps`` when the attack succeeded with ``distance <= eps`` (a
    minimal attack answers every budget from one run; the relative tolerance is the harness's).
    """
    correct = _mask(len(success), clean_correct, success.device)
    curve = {}
    for eps in budgets:
        fooled = success.bool() & (distance <= eps * (1 + 1e-5) + 1e-7)
        curve[float(eps)] = float((correct & ~fooled).float().mean()) if len(success) else float("nan")
    return curve


def empirical_robustness(x: torch.Tensor, x_adv: torch.Tensor, success: torch.Tensor,
                         tiny: float = TINY) -> float:
    """ρ = mean over successful samples of ‖x_adv − x‖₂ / (‖x‖₂ + tiny).

    Seed 001 eq. 2 and seed 002's ρ̂_adv (DeepFool's minimal perturbations). Samples the attack
    did not fool have no minimal perturbation and are left out; NaN when none was fooled.
    """
    ok = success.bool()
    if not bool(ok.any()):
        return float("nan")
    delta = (x_adv[ok] - x[ok]).flatten(1).norm(dim=1)
    return float((delta / (x[ok].flatten(1).norm(dim=1) + tiny)).mean())


def training_set_distance(x_adv: torch.Tensor, train_x: torch.Tensor, chunk: int = 1024) -> float:
    """Mean L2 distance from each adversarial example to its nearest training sample (seed 001).

    Computed in chunks of ``chunk`` rows on both sides, so memory stays at ``chunk²`` floats.
    """
    a, b = x_adv.flatten(1).float(), train_x.flatten(1).float().to(x_adv.device)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    nearest = []
    for rows in _batches(len(a), chunk):
        best = torch.full((len(a[rows]),), float("inf"), device=a.device)
        for cols in _batches(len(b), chunk):
            best = torch.minimum(best, torch.cdist(a[rows], b[cols]).min(dim=1).values)
        nearest.append(best)
    return float(torch.cat(nearest).mean())


def _input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample ∇ₓ CE(model(x_i), y_i) (a summed loss separates per sample in eval mode)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def loss_sensitivity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Local loss sensitivity ℓ = mean ‖∇ₓ CE(θ, x_i, y_i)‖₂ (seed 001 §4, Table 3)."""
    device = model_device(model, x.device)
    norms = []
    with frozen(model), torch.enable_grad():
        for s in _batches(len(x), batch_size):
            grad = _input_gradients(model, x[s].to(device), y[s].to(device))
            norms.append(grad.flatten(1).norm(dim=1).detach())
    return float(torch.cat(norms).mean()) if norms else float("nan")


def logit_jacobian(logits: torch.Tensor, x: torch.Tensor, *, create_graph: bool = False) -> torch.Tensor:
    """The exact Jacobian ∂z_k/∂x of ``logits`` (N, K) w.r.t. ``x``: shape (N, K, *x.shape[1:]).

    One batched vector-Jacobian product with the K one-hot vectors (``is_grads_batched``), so
    K backward passes in one call; ``create_graph=True`` keeps it differentiable for training
    (double back-propagation). Row k of sample i only depends on sample i when the model treats
    samples independently (eval-mode batch norm).
    """
    n, k = logits.shape
    eye = torch.eye(k, device=logits.device, dtype=logits.dtype)
    rows = eye.unsqueeze(1).expand(k, n, k)
    (jac,) = torch.autograd.grad(logits, x, rows, is_grads_batched=True, create_graph=create_graph,
                                 retain_graph=True)
    return jac.transpose(0, 1)


def mean_jacobian_frobenius(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> float:
    """Mean Frobenius norm (1/N) Σᵢ ‖J(xᵢ)‖_F of the logits' Jacobian, exact (seed 002 Table 1).

    Evaluate on clean inputs and on attacked ones (``x_adv``) for both columns of the table.
    """
    device = model_device(model, x.device)
    norms = []
    with frozen(model), torch.enable_grad():
        for s in _batches(len(x), batch_size):
            xb = x[s].to(device).detach().requires_grad_(True)
            jac = logit_jacobian(model(xb), xb)
            norms.append(jac.flatten(1).norm(dim=1).detach())
    return float(torch.cat(norms).mean()) if norms else float("nan")


def detection_auc(scores_clean: torch.Tensor, scores_adv: torch.Tensor) -> float:
    """ROC-AUC of a detector whose higher scores mean "adversarial" (seed 003 Table 2).

    Equal to P(score_adv > score_clean) + ½ P(tie) (the Mann–Whitney statistic).
    """
    from sklearn.metrics import roc_auc_score

    clean = torch.as_tensor(scores_clean).detach().flatten().double().cpu()
    adv = torch.as_tensor(scores_adv).detach().flatten().double().cpu()
    if len(clean) == 0 or len(adv) == 0:
        raise ValueError("detection_auc needs at least one clean and one adversarial score")
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))])
    return float(roc_auc_score(labels.numpy(), torch.cat([clean, adv]).numpy()))


def davies_bouldin(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Davies–Bouldin index of ``embeddings`` (N, D) grouped by ``labels`` (lower = tighter,
    better separated clusters; seed 003 reports it for the embedding layer)."""
    from sklearn.metrics import davies_bouldin_score

    emb = torch.as_tensor(embeddings).detach().flatten(1).double().cpu().numpy()
    return float(davies_bouldin_score(emb, torch.as_tensor(labels).cpu().numpy()))


def exploitable_robustness(success: torch.Tensor, clean_correct: torch.Tensor | None = None) -> float:
    """Robustness 1 − P(E_{C,ε}) estimated from an attack at budget ε (seed 004 §2).

    The exploitable space E holds every sample the classifier already misclassifies
    (``clean_correct`` False) and every sample the attack fools within ε. The attack can only
    find part of E, so this is an upper bound on the true robustness (seed 004 says as much).
    Numerically it equals :func:`adversarial_accuracy` at that budget: seed 004's point is that
    robustness, so defined, is never above accuracy.
    """
    exploitable = success.bool() | ~_mask(len(success), clean_correct, success.device)
    return 1.0 - float(exploitable.float().mean()) if len(success) else float("nan")
