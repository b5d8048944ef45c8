"""Carlini-Wagner L2 and DeepFool: behaviour on the small digits CNN that the papers predict
(Carlini and Wagner 2017 §V; Moosavi-Dezfooli et al. 2016 §2-§4). Contract rows:
tests/test_contracts.py."""
from __future__ import annotations

import pytest
import torch

from arena import testing
from arena.errors import ConfigError
from arena_builtins.attacks.deepfool import candidate_classes, difference_jacobian

# Short schedules that still fool every sample of the digits CNN (κ > 0 and targets need 100 steps).
CW = {"steps": 50, "binary_search_steps": 3, "initial_const": 1.0, "lr": 0.05}
CW_LONG = {**CW, "steps": 100}


def margin(model, x_adv, y):
    """``max_{i≠y} Z_i - Z_y``: positive when misclassified, ≥ κ for a κ-confident example."""
    with torch.no_grad():
        z = model(x_adv)
    return z.scatter(1, y[:, None], float("-inf")).amax(1) - z.gather(1, y[:, None]).squeeze(1)


def test_cw_distances_do_not_grow_with_more_binary_search_steps(registry, model):
    x, y = testing.attack_batch(32)
    medians, rates = [], []
    for bs in (1, 3, 5):
        result = registry.make_attack("cw-l2", **{**CW_LONG, "binary_search_steps": bs})(model, x, y)
        medians.append(float(result.distance.median()))
        rates.append(float(result.success.float().mean()))
    assert medians[0] >= medians[1] >= medians[2] and medians[2] < 0.9 * medians[0]
    assert rates == sorted(rates) and rates[-1] == 1.0


def test_cw_confidence_buys_margin_with_distance(registry, model):
    x, y = testing.attack_batch(32)
    plain = registry.make_attack("cw-l2", **CW_LONG)(model, x, y)
    confident = registry.make_attack("cw-l2", **CW_LONG, confidence=5.0)(model, x, y)
    assert plain.success.all() and confident.success.all()
    assert float(confident.distance.median()) > 1.2 * float(plain.distance.median())
    assert float(margin(model, confident.x_adv, y).min()) >= 5.0 - 1e-3
    assert float(margin(model, plain.x_adv, y).median()) < 1.0


def test_targeted_cw_reaches_its_targets(registry, model):
    x, y = testing.attack_batch(32)
    targets = (y + 1) % 10
    result = registry.make_attack("cw-l2", **CW_LONG)(model, x, y, targets=targets)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets) and bool(result.success.all())


@pytest.mark.parametrize("scope", ["batch", "sample"])
def test_cw_early_abort_saves_queries(registry, model, scope):
    x, y = testing.attack_batch(16)
    full = registry.make_attack("cw-l2", **CW, abort_early=False)(model, x, y)
    early = registry.make_attack("cw-l2", **CW, abort_scope=scope)(model, x, y)
    assert torch.equal(full.queries, torch.full_like(full.queries, 3 * 50))
    assert bool((early.queries <= full.queries).all())
    assert float(early.distance.median()) <= 1.05 * float(full.distance.median())
    if scope == "sample":
        assert early.queries.sum() < full.queries.sum()
    # A constant so small that the loss barely moves: the batch's summed loss stalls at the
    # first check and the whole batch stops together, as in the reference.
    tiny = {"steps": 50, "binary_search_steps": 1, "initial_const": 1e-6, "lr": 1e-4}
    stalled = registry.make_attack("cw-l2", **tiny, abort_scope=scope)(model, x, y)
    assert int(stalled.queries.max()) < 50
    if scope == "batch":
        assert torch.equal(stalled.queries, torch.full_like(stalled.queries, int(stalled.queries[0])))


def test_cw_presets_fill_only_unset_fields(registry):
    cfg = registry.make_attack("cw-l2", preset="high-confidence", preset_data="mnist", steps=20).config
    assert (cfg.steps, cfg.confidence, cfg.lr, cfg.initial_const, cfg.binary_search_steps) == (20, 5.0, 0.1, 10.0, 9)
    assert registry.make_attack("cw-l2", preset="standard").config.lr == 0.01  # CIFAR-10 column
    assert registry.make_attack("cw-l2", preset="strong").config.steps == 10_000
    assert registry.make_attack("cw-l2", preset="hc", confidence=7.0).config.confidence == 7.0
    assert registry.make_attack("cw-l2", preset="hc").config.confidence == 10.0
    assert registry.make_attack("cw-l2", preset="seed001").config.confidence == 2.3
    assert registry.make_attack("cw-l2").config.confidence == 0.0
    with pytest.raises(ConfigError, match="preset"):
        registry.make_attack("cw-l2", preset="hgih-confidence")


@pytest.mark.parametrize("attack_id, params, n", [
    ("cw-l2", {**CW, "abort_scope": "sample"}, 6), ("cw-l2", {**CW, "abort_early": False}, 6),
    ("deepfool", {"norm": "l2"}, 24), ("deepfool", {"norm": "linf"}, 24)])
def test_batched_run_matches_one_sample_at_a_time(registry, model, attack_id, params, n):
    x, y = testing.attack_batch(n)
    attack = registry.make_attack(attack_id, **params)
    batched = attack(model, x, y)
    single = [attack(model, x[i:i + 1], y[i:i + 1]) for i in range(n)]
    assert torch.allclose(batched.distance, torch.cat([r.distance for r in single]), rtol=1e-4, atol=1e-5)
    assert torch.equal(batched.queries, torch.cat([r.queries for r in single]))


def fgsm_minimal_l2(registry, model, x, y) -> torch.Tensor:
    """Seed 001 §4.4's minimal ε of FGSM-L2, per sample, from a grid of budgets (step 0.02)."""
    fgsm = registry.make_attack("fgsm", norm="l2")
    found = torch.full((x.shape[0],), float("inf"))
    for eps in torch.arange(2.5, 0.0, -0.02).tolist():
        result = fgsm(model, x, y, eps)
        found = torch.where(result.success, result.distance, found)
    return found


def test_deepfool_is_closer_than_minimal_eps_fgsm(registry, model):
    x, y = testing.attack_batch(32)
    deepfool = registry.make_attack("deepfool")(model, x, y)
    fgsm = fgsm_minimal_l2(registry, model, x, y)
    assert float(deepfool.distance.median()) < float(fgsm.median())


@pytest.mark.parametrize("params", [{"norm": "l2"}, {"norm": "linf"}, {"candidates": 3}])
def test_deepfool_fools_nearly_every_sample(registry, model, params):
    x, y = testing.attack_batch(64)
    result = registry.make_attack("deepfool", **params)(model, x, y)
    assert float(result.success.float().mean()) >= 0.98
    # one clean forward pass, then two per iteration (a Jacobian pass and a check)
    assert bool((result.queries % 2 == 1).all()) and int(result.queries.max()) <= 1 + 2 * 100


def test_deepfool_overshoot_lengthens_the_step(registry, model):
    x, y = testing.attack_batch(32)
    plain = registry.make_attack("deepfool", overshoot=0.0)(model, x, y)
    over = registry.make_attack("deepfool", overshoot=0.5)(model, x, y)
    assert float(over.distance.median()) > float(plain.distance.median())


def test_difference_jacobian_matches_per_class_gradients(model):
    x, y = testing.attack_batch(4)
    with torch.no_grad():
        classes = candidate_classes(model(x), y, None)
    f, grads = difference_jacobian(model, x, y, classes)
    assert classes.shape == (4, 9) and not bool((classes == y[:, None]).any())
    for j in range(classes.shape[1]):
        xr = x.clone().requires_grad_(True)
        z = model(xr)
        diff = z.gather(1, classes[:, j:j + 1]) - z.gather(1, y[:, None])
        (g,) = torch.autograd.grad(diff.sum(), xr)
        assert torch.allclose(grads[:, j], g, atol=1e-6) and torch.allclose(f[:, j], diff.squeeze(1).detach())


def test_deepfool_is_untargeted_and_l2_or_linf(registry, model):
    x, y = testing.attack_batch(4)
    with pytest.raises(ConfigError, match="targeted"):
        registry.make_attack("deepfool")(model, x, y, targets=(y + 1) % 10)
    with pytest.raises(ConfigError, match="norm"):
        registry.make_attack("deepfool", norm="l0")
    with pytest.raises(ConfigError, match="candidates"):
        registry.make_attack("deepfool", candidates=1)
