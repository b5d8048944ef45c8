"""arena.metrics on inputs whose answers are known in closed form."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena import metrics


def linear_model(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """logits = W·flatten(x) + b for 1×2×2 inputs."""
    k, d = weight.shape
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias if bias is not None else torch.zeros(k))
    return nn.Sequential(nn.Flatten(), lin)


class Square(nn.Module):
    """z = a ⊙ x² on flattened inputs (K = D): J(x) = diag(2 a ⊙ x), ‖J‖_F = ‖2 a ⊙ x‖₂."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, x):
        return self.a * x.flatten(1) ** 2


def test_clean_accuracy_of_a_known_classifier_and_mode_restored():
    model = linear_model(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])).train()
    x = torch.zeros(4, 1, 2, 2)
    x[0, 0, 0, 0] = x[1, 0, 0, 1] = x[2, 0, 0, 0] = x[3, 0, 0, 1] = 1.0
    y = torch.tensor([0, 1, 1, 1])                     # sample 2 is misclassified
    assert metrics.clean_accuracy(model, x, y, batch_size=3) == pytest.approx(0.75)
    assert model.training


def test_adversarial_accuracy_counts_misclassified_samples_as_not_robust():
    success = torch.tensor([True, False, False, False])
    correct = torch.tensor([True, True, False, True])
    assert metrics.adversarial_accuracy(success) == pytest.approx(0.75)
    assert metrics.adversarial_accuracy(success, correct) == pytest.approx(0.5)


def test_accuracy_over_budgets_reads_minimal_distances():
    success = torch.tensor([True, True, True, False])
    distance = torch.tensor([0.1, 0.5, 2.0, float("inf")])
    curve = metrics.accuracy_over_budgets(success, distance, [0.05, 0.1, 1.0, 10.0])
    assert curve == pytest.approx({0.05: 1.0, 0.1: 0.75, 1.0: 0.5, 10.0: 0.25})


def test_empirical_robustness_is_the_mean_relative_l2_perturbation_of_successes():
    x = torch.zeros(3, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([1.0, 0.5, 1.0])      # ‖x‖₂ = 1, 0.5, 1
    x_adv = x.clone()
    x_adv[0, 0, 1, 1] = 0.2                             # ‖δ‖/‖x‖ = 0.2
    x_adv[1, 0, 1, 0] = 0.2                             # 0.4
    x_adv[2, 0, 0, 1] = 0.9                             # failed: ignored
    success = torch.tensor([True, True, False])
    assert metrics.empirical_robustness(x, x_adv, success) == pytest.approx(0.3, rel=1e-6)
    assert math.isnan(metrics.empirical_robustness(x, x_adv, torch.zeros(3, dtype=torch.bool)))


def test_training_set_distance_is_the_mean_nearest_neighbour_distance():
    train = torch.zeros(5, 1, 2, 2)
    train[:, 0, 0, 0] = torch.arange(5.0)               # points at 0, 1, 2, 3, 4 on one axis
    adv = torch.zeros(3, 1, 2, 2)
    adv[0, 0, 0, 0] = 0.25                              # nearest: 0 at 0.25
    adv[1, 0, 0, 0], adv[1, 0, 0, 1] = 2.0, 0.75        # nearest: 2 at 0.75
    adv[2, 0, 0, 0] = 6.0                               # nearest: 4 at 2
    expected = (0.25 + 0.75 + 2.0) / 3
    assert metrics.training_set_distance(adv, train, chunk=2) == pytest.approx(expected)


def test_loss_sensitivity_of_a_linear_model_matches_the_closed_form():
    torch.manual_seed(0)
    w, b = torch.randn(3, 4), torch.randn(3)
    model = linear_model(w, b)
    x, y = torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    p = F.softmax(x.flatten(1) @ w.T + b, dim=1)
    grad = (p - F.one_hot(y, 3).float()) @ w              # ∇ₓ CE = Wᵀ(softmax − onehot)
    expected = float(grad.norm(dim=1).mean().detach())
    assert metrics.loss_sensitivity(model, x, y, batch_size=4) == pytest.approx(expected, rel=1e-5)
    assert all(p.grad is None for p in model.parameters())


def test_mean_jacobian_frobenius_of_a_linear_model_is_the_weight_norm():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    model = linear_model(w)
    value = metrics.mean_jacobian_frobenius(model, torch.rand(5, 1, 2, 2), batch_size=2)
    assert value == pytest.approx(float(w.norm()), rel=1e-6)


def test_mean_jacobian_frobenius_of_a_nonlinear_model_matches_the_closed_form():
    a = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = torch.rand(4, 1, 2, 2)
    expected = (2 * a * x.flatten(1)).norm(dim=1).mean()
    assert metrics.mean_jacobian_frobenius(Square(a), x) == pytest.approx(float(expected), rel=1e-6)


def test_logit_jacobian_rows_are_per_sample_gradients():
    a = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = torch.rand(3, 1, 2, 2, requires_grad=True)
    jac = metrics.logit_jacobian(Square(a)(x), x)
    assert jac.shape == (3, 4, 1, 2, 2)
    expected = torch.diag_embed(2 * a * x.detach().flatten(1))
    assert torch.allclose(jac.flatten(2), expected)


def test_detection_auc_of_hand_made_scores():
    clean = torch.tensor([0.1, 0.2, 0.3])
    adv = torch.tensor([0.25, 0.35, 0.4])
    assert metrics.detection_auc(clean, adv) == pytest.approx(8 / 9)     # 8 of 9 pairs ranked right
    assert metrics.detection_auc(clean, clean + 1) == pytest.approx(1.0)
    assert metrics.detection_auc(torch.ones(4), torch.ones(3)) == pytest.approx(0.5)  # all ties
    with pytest.raises(ValueError):
        metrics.detection_auc(torch.tensor([]), adv)


def test_davies_bouldin_of_two_known_clusters():
    # clusters {(-1,0),(1,0)} and {(9,0),(11,0)}: scatters 1 and 1, centroids 10 apart
    emb = torch.tensor([[-1.0, 0], [1, 0], [9, 0], [11, 0]])
    assert metrics.davies_bouldin(emb, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.2)


def test_exploitable_robustness_counts_misclassified_and_fooled_samples():
    success = torch.tensor([True, False, False, False, False])
    correct = torch.tensor([True, True, False, True, True])
    assert metrics.exploitable_robustness(success) == pytest.approx(0.8)
    assert metrics.exploitable_robustness(success, correct) == pytest.approx(0.6)
    assert metrics.exploitable_robustness(success, correct) <= float(correct.float().mean())
