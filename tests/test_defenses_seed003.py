"""Seed 003's defenses: reverse cross-entropy, PDM and the KDE detector on the embedding.

The losses on inputs whose answer is known, and the claimed effects on the
digits CNN (seed 42, one schedule for `standard` and the defense): RCE and PDM tighten the
class clusters of the embedding (lower Davies-Bouldin index, seed 003 §3.5), and the KDE
detector separates FGSM examples from clean inputs (ROC-AUC, seed 003 Table 2).
Contract rows: tests/test_contracts.py.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import davies_bouldin_score, roc_auc_score
from torch import nn

from arena.errors import ConfigError
from arena.testing import digits, registry, trained_model
from arena_builtins.defenses.embedding import (
    reduce_variance_loss, reverse_cross_entropy, siamese_loss, siamese_partners,
)

SCHEDULE = {"epochs": 8, "batch_size": 64, "lr": 3e-3}


# ------------------------------------------------------------------ the losses

def test_reverse_cross_entropy_is_ce_against_reverse_labels_on_negated_logits():
    torch.manual_seed(0)
    out, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    log_p = F.log_softmax(-out, dim=1)
    expected = torch.stack([-sum(log_p[i, j] for j in range(4) if j != int(y[i])) / 3 for i in range(6)]).mean()
    assert torch.allclose(reverse_cross_entropy(out, y), expected)
    # lower when the model's output (the inference logit) ranks the true class first
    confident = torch.full((1, 4), -5.0).index_fill_(1, torch.tensor([2]), 5.0)
    assert reverse_cross_entropy(confident, torch.tensor([2])) < reverse_cross_entropy(-confident, torch.tensor([2]))


@pytest.mark.parametrize("q", [0.0, 0.3, 1.0])
def test_siamese_partners_follow_q(q):
    torch.manual_seed(0)
    y = torch.arange(10).repeat(200)
    partner = siamese_partners(y, q, 10)
    same = (y[partner] == y).float()
    assert abs(float(same.mean()) - q) < 0.03
    assert not bool((partner == torch.arange(len(y))).any()), "a partner is another sample"


def test_siamese_partners_fall_back_when_no_partner_of_the_wanted_kind():
    y = torch.tensor([3, 3, 3])
    assert bool((y[siamese_partners(y, 0.0, 10)] == 3).all())  # no other class in the batch
    alone = torch.tensor([1, 2])
    assert torch.equal(siamese_partners(alone, 1.0, 10), torch.tensor([1, 0]))  # no same class


def test_siamese_loss_is_mean_absolute_cosine_error():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    def sl(y, partner):
        return float(siamese_loss(z, torch.tensor(y), torch.tensor(partner)))
    assert sl([0, 0, 1], [1, 0, 0]) == pytest.approx(0.0, abs=1e-6)  # targets met
    assert sl([0, 1, 1], [2, 2, 1]) == pytest.approx(2 / 3)  # same class, orthogonal: 1 each
    assert sl([0, 1, 0], [1, 0, 0]) == pytest.approx(1.0)  # every pair off by 1


def test_reduce_variance_loss_averages_per_class_variance():
    z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
    y = torch.tensor([0, 0, 3])
    # class 0: mean (1, 0), variance (1 + 1) / 2 = 1; class 3: a single point, 0
    assert float(reduce_variance_loss(z, y, 4)) == pytest.approx(0.5)


def test_pdm_builds_the_papers_leaky_relu():
    arch = registry().make_architecture("digits-cnn")
    model = registry().make_defense("pdm").build(arch, (1, 8, 8), 10)
    assert not any(type(m) is nn.ReLU for m in model.modules())
    assert {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)} == {0.1}
    plain = registry().make_defense("pdm", negative_slope=0).build(arch, (1, 8, 8), 10)
    assert any(type(m) is nn.ReLU for m in plain.modules())


def test_model_without_embedding_is_a_config_error():
    bare = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ConfigError, match="features"):
        registry().make_defense("pdm").loss(bare, torch.rand(4, 1, 8, 8), torch.arange(4))
    with pytest.raises(ConfigError, match="features"):
        registry().make_defense("kde").fit(bare, digits().train.take(50, 0))


# ------------------------------------------------------------------ the detector

def test_kde_log_density_matches_scikit_learn():
    from sklearn.neighbors import KernelDensity
    torch.manual_seed(0)
    points, z = torch.randn(40, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    kde = registry().make_defense("kde", bandwidth=0.8)
    kde.kernels, kde.kernel_ids = [points], [torch.arange(40)]
    reference = KernelDensity(kernel="gaussian", bandwidth=0.8).fit(points.numpy()).score_samples(z.numpy())
    assert torch.allclose(kde.log_density(z, 0), torch.from_numpy(reference), atol=1e-8)
    # leaving a point out equals the density of the other 39
    loo = kde.log_density(points[:1], 0, ids=torch.tensor([0]))
    assert float(loo) == pytest.approx(KernelDensity(bandwidth=0.8).fit(points[1:].numpy())
                                       .score_samples(points[:1].numpy())[0], abs=1e-8)


@functools.lru_cache(maxsize=1)
def fitted_kde():
    model, kde = trained_model(), registry().make_defense("kde")
    kde.fit(model, digits().train, seed=42)
    return model, kde


def test_kde_keeps_the_kernel_subset_and_a_clean_false_positive_rate_near_fpr():
    model, kde = fitted_kde()
    train = digits().train
    assert len(kde.kernels) == 10
    assert all(k.shape[0] == min(1000, int((train.y == c).sum())) for c, k in enumerate(kde.kernels))
    small = registry().make_defense("kde", per_class=5)
    small.fit(model, train, seed=1)
    assert all(k.shape[0] == 5 for k in small.kernels)
    test_fpr = float(kde.detect(model, digits().test.x).float().mean())
    assert abs(test_fpr - kde.config.fpr) < 0.04, test_fpr


def test_kde_score_is_differentiable_in_the_input():
    model, kde = fitted_kde()
    x = digits().test.x[:8].clone().requires_grad_(True)
    kde.score(model, x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def fgsm_detection(model: nn.Module, kde, eps: float) -> tuple[float, float]:
    """ROC-AUC of the KDE score, successful FGSM (L∞, ``eps``) examples against the clean
    test inputs the model classifies correctly; and FGSM's success rate."""
    test = digits().test
    with torch.no_grad():
        ok = model(test.x).argmax(1) == test.y
    x, y = test.x[ok], test.y[ok]
    result = registry().make_attack("fgsm", norm="linf")(model, x, y, eps, seed=0)
    clean, adv = kde.score(model, x), kde.score(model, result.x_adv[result.success])
    labels = [0] * len(clean) + [1] * len(adv)
    return float(roc_auc_score(labels, torch.cat([clean, adv]).numpy())), float(result.success.float().mean())


def test_kde_detects_fgsm_examples():
    model, kde = fitted_kde()
    auc, success = fgsm_detection(model, kde, eps=0.2)
    assert success > 0.5, "FGSM must succeed for the detection figure to mean anything"
    assert auc > 0.8, auc


# ------------------------------------------------------------------ embedding geometry

@functools.lru_cache(maxsize=None)
def trained(defense_id: str) -> nn.Module:
    """``defense_id`` trained on digits with the shared schedule, seed 42."""
    data = digits()
    defense = registry().make_defense(defense_id, **SCHEDULE)
    torch.manual_seed(42)
    model = defense.build(registry().make_architecture("digits-cnn"), data.input_shape, data.num_classes)
    return defense.train(model, data, seed=42)


def davies_bouldin(model: nn.Module) -> float:
    test = digits().test
    with torch.no_grad():
        z = model.features(test.x).flatten(1)
    return float(davies_bouldin_score(z.numpy(), test.y.numpy()))


@pytest.mark.parametrize("defense_id", ["rce", "pdm"])
def test_lowers_the_davies_bouldin_index_of_the_embedding(defense_id):
    standard, defended = davies_bouldin(trained("standard")), davies_bouldin(trained(defense_id))
    assert math.isfinite(defended) and defended < standard, (defended, standard)
