"""The regulariser, NsLoss and adversarial-training defenses: the maths of each loss on models
whose answer is known, and the effect each paper reports, measured on digits against ``standard``
fine-tuned on the same schedule. Contract rows: tests/test_contracts.py."""
from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from arena import ArenaError, ConfigError, metrics, testing
from arena.data import DataSplits
from arena_builtins.defenses import adversarial, nsloss, regularizers

FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- the losses' maths


def linear(k: int = 3, d: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, k))


def small_relu_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def inputs(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 1, 2, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(True)


def test_exact_jacobian_penalty_of_a_linear_model_is_half_the_squared_weight_norm():
    model, x = linear(), inputs()
    w = model[1].weight.detach()
    value = float(regularizers.jacobian_penalty(model(x), x).detach())   # Hoffman's ½‖J‖²_F
    assert value == pytest.approx(0.5 * float(w.pow(2).sum().detach()), rel=1e-6)
    eq4 = regularizers.jacobian_penalty(model(x), x, form="eq4")   # √(N‖W‖²) / N
    assert float(eq4.detach()) == pytest.approx(float(w.norm().detach()) / math.sqrt(5), rel=1e-6)
    with pytest.raises(ValueError, match="form"):
        regularizers.jacobian_penalty(model(x), x, form="mean-squared")


def hoffman_jacobian_reg(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``JacobianReg(n=-1).forward(x, y)`` of Hoffman et al.'s implementation
    (facebookresearch/jacobian_regularizer, jacobian/jacobian.py), written out: "computes
    (1/2) tr |dy/dx|^2" as R = ½·Σ_proj C‖Jv‖² / (num_proj·B), with num_proj = C one-hot v
    (the exact case)."""
    b, c = y.shape
    j2 = 0
    for ii in range(c):
        v = torch.zeros(b, c)
        v[:, ii] = 1
        (jv,) = torch.autograd.grad(y.reshape(-1), x, v.reshape(-1), retain_graph=True, create_graph=True)
        j2 = j2 + c * jv.norm() ** 2 / (c * b)
    return 0.5 * j2


def test_jacobian_reg_loss_is_ce_plus_lambda_times_hoffmans_criterion_on_digits(registry):
    """Seed 000 §III-C takes its Jacobian term "as implemented in [14]" (Hoffman et al.): on a
    digits batch and the trained digits CNN, `jacobian-reg`'s loss (default form, and the
    seed000-mnist preset) and `combined`'s with λ1 = 0 are CE + λ·JacobianReg(n=-1)(x, y),
    that is CE + λ·½·mean ‖J‖²_F."""
    model = testing.trained_model()
    x, y = testing.attack_batch(16)
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    ce = float(F.cross_entropy(logits, y).detach())
    reference = float(hoffman_jacobian_reg(xg, logits).detach())
    half_mean = 0.5 * float(metrics.logit_jacobian(logits, xg).flatten(1).pow(2).sum(1).mean())
    assert reference == pytest.approx(half_mean, rel=1e-5) and reference > 1.0

    def loss(defense_id: str, **params) -> float:
        return float(registry.make_defense(defense_id, **params).loss(model, x, y).detach())

    assert loss("jacobian-reg", lam=0.1) == pytest.approx(ce + 0.1 * reference, rel=1e-5)
    assert loss("jacobian-reg", preset="seed000-mnist") == pytest.approx(ce + 0.01 * reference, rel=1e-5)
    assert loss("combined", lam_ns=0.0, lam_jac=0.01) == pytest.approx(ce + 0.01 * reference, rel=1e-5)
    # the projected estimator is unbiased for the same ½‖J‖²_F (mean over 400 one-projection draws)
    torch.manual_seed(0)
    draws = [float(regularizers.jacobian_penalty(logits, xg, projections=1).detach()) for _ in range(400)]
    assert sum(draws) / len(draws) == pytest.approx(reference, rel=0.1)


def test_seed002_preset_is_eq4_on_digits(registry):
    """The seed002-mnist preset is seed 002 §4's MNIST setting with eq. 4's penalty: λ = 0.1,
    mini-batches of 500, and on a digits batch the loss is mean CE + λ·√(Σᵢ ‖J(xᵢ)‖²_F) / N
    (eq. 4 divided by N), not ½·mean ‖J‖²_F."""
    defense = registry.make_defense("jacobian-reg", preset="seed002-mnist")
    assert (defense.config.form, defense.config.lam, defense.config.batch_size) == ("eq4", 0.1, 500)
    model = testing.trained_model()
    x, y = testing.attack_batch(16)
    xg = x.clone().requires_grad_(True)
    logits = model(xg)
    sq = metrics.logit_jacobian(logits, xg).flatten(1).pow(2).sum(1)
    expected = float(F.cross_entropy(logits, y).detach()) + 0.1 * float(sq.sum().sqrt()) / len(x)
    assert float(defense.loss(model, x, y).detach()) == pytest.approx(expected, rel=1e-5)
    assert float(sq.sum().sqrt()) / len(x) != pytest.approx(0.5 * float(sq.mean()), rel=0.1)
    # the other reading of eq. 4 (cross-entropy averaged, the square root of the batch sum kept)
    other = registry.make_defense("jacobian-reg", preset="seed002-mnist", form="eq4-mean")
    expected = float(F.cross_entropy(logits, y).detach()) + 0.1 * float(sq.sum().sqrt())
    assert float(other.loss(model, x, y).detach()) == pytest.approx(expected, rel=1e-5)


def test_random_projection_estimator_is_unbiased():
    model, x = small_relu_net(), inputs()
    exact = regularizers.jacobian_sq_norm(model(x), x)
    torch.manual_seed(0)
    estimate = regularizers.jacobian_sq_norm(model(x), x, projections=4000)
    assert torch.allclose(estimate, exact, rtol=0.08)
    one = regularizers.jacobian_sq_norm(model(x), x, projections=1)
    assert one.shape == exact.shape and one.requires_grad


def test_jacobian_penalty_is_differentiable_in_the_weights():
    model, x = small_relu_net(), inputs()
    regularizers.jacobian_penalty(model(x), x).backward()
    assert model[1].weight.grad is not None and model[1].weight.grad.abs().sum() > 0


def test_input_gradient_penalty_of_a_linear_model_matches_the_closed_form():
    model, x = linear(), inputs()
    y = torch.tensor([0, 1, 2, 0, 1])
    w, b = model[1].weight.detach(), model[1].bias.detach()
    p = F.softmax(x.detach().flatten(1) @ w.T + b, dim=1)
    grads = (p - F.one_hot(y, 3).float()) @ w
    value = regularizers.input_gradient_penalty(model(x), x, y).detach()
    assert float(value) == pytest.approx(float(grads.pow(2).sum(dim=1).mean()), rel=1e-5)


def test_cross_lipschitz_penalty_matches_the_pairwise_sum():
    model, x = small_relu_net(), inputs()
    jac = metrics.logit_jacobian(model(x), x).flatten(2)
    k = jac.shape[1]
    pairs = sum((jac[:, i] - jac[:, j]).pow(2).sum(dim=1) for i in range(k) for j in range(k))
    value = regularizers.cross_lipschitz_penalty(model(x), x).detach()
    assert float(value) == pytest.approx(float(pairs.mean() / k**2), rel=1e-5)


def literal_algorithm_1(layers, radius: float) -> torch.Tensor:
    """Seed 000 Algorithm 1 written out: LayerSensitivity, MeanXLayerActivations, Σ LS • MLA."""
    total = torch.zeros(())
    for clean, perturbed in layers:
        n_copies, n = perturbed.shape[:2]
        diff_sums = (perturbed - clean).abs().sum(dim=(0, 1))
        mla = clean.abs().sum(dim=0) / n
        ls = diff_sums / (n * n_copies * radius * mla.numel() * mla)
        total = total + torch.nan_to_num(ls * mla, nan=0.0).sum()   # dead neurons: weight 0
    return total


def test_ns_loss_is_algorithm_1_and_batched_equals_sequential():
    model, x = small_relu_net(), inputs(8).detach()
    torch.manual_seed(3)
    layers, logits = nsloss.layer_activations(model, x, 0.5, copies=4, batched=True)
    torch.manual_seed(3)
    seq_layers, seq_logits = nsloss.layer_activations(model, x, 0.5, copies=4, batched=False)
    assert len(layers) == 3                                  # two ReLUs and the logits
    pairs = [nsloss.clean_and_perturbed(layer, 4) for layer in layers]
    assert pairs[0][1].shape == (4, 8, 6) and torch.allclose(logits, seq_logits, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(layers, seq_layers))
    value = nsloss.ns_loss(layers, 0.5, 4).detach()
    assert float(value) == pytest.approx(float(literal_algorithm_1(pairs, 0.5).detach()), rel=1e-5)
    assert float(nsloss.ns_loss(seq_layers, 0.5, 4).detach()) == pytest.approx(float(value), rel=1e-5)
    assert not any(m._forward_hooks for m in model.modules())


def test_ns_loss_gradient_is_autograds():
    """The hand-written backward of the sensitivity term equals autograd's on Algorithm 1."""
    model, x = small_relu_net(), inputs(8).detach()
    torch.manual_seed(5)
    layers, _ = nsloss.layer_activations(model, x, 0.5, copies=3)
    fused = torch.autograd.grad(nsloss.ns_loss(layers, 0.5, 3), list(model.parameters()))
    torch.manual_seed(5)
    layers, _ = nsloss.layer_activations(model, x, 0.5, copies=3)
    pairs = [nsloss.clean_and_perturbed(layer, 3) for layer in layers]
    literal = torch.autograd.grad(literal_algorithm_1(pairs, 0.5), list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(fused, literal))
    assert any(float(g.abs().sum()) > 0 for g in fused)


def dropout_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 8), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(8, 3)).train()


def test_dropout_masks_are_shared_by_a_sample_and_its_copies():
    """With dropout in training mode, a vanishing perturbation gives a vanishing NsLoss (one mask
    per sample, applied to all its copies), batched and sequential passes agree under one seed,
    each mask drops and rescales like the module itself, and the modules are left as they were."""
    model, x = dropout_net(), inputs(64).detach()
    torch.manual_seed(4)
    layers, _ = nsloss.layer_activations(model, x, 1e-6, copies=3)
    assert float(nsloss.ns_loss(layers, 1.0, 3).detach()) < 1e-5
    torch.manual_seed(4)
    layers, logits = nsloss.layer_activations(model, x, 0.5, copies=3, batched=True)
    torch.manual_seed(4)
    seq_layers, seq_logits = nsloss.layer_activations(model, x, 0.5, copies=3, batched=False)
    assert torch.allclose(logits, seq_logits, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(layers, seq_layers))
    clean, _ = nsloss.clean_and_perturbed(layers[1], 3)   # after the first dropout: 0 or rescaled
    dropped = (clean == 0).float().mean()
    assert 0.3 < float(dropped) < 0.8
    assert not any("forward" in vars(m) for m in model.modules())
    plain = model(x)  # dropout draws independently again outside NsLoss
    assert not torch.allclose(plain, model(x))


def test_dropout_is_left_alone_in_eval_mode():
    model, x = dropout_net().eval(), inputs(8).detach()
    torch.manual_seed(0)
    layers, logits = nsloss.layer_activations(model, x, 0.5, copies=2)
    assert torch.allclose(logits, model(x), atol=1e-6)


def test_perturbed_copies_lie_on_the_sphere():
    x = torch.rand(6, 1, 3, 3)
    xp = nsloss.sphere(x, 1.5, copies=4)
    assert xp.shape == (4, 6, 1, 3, 3)
    assert torch.allclose((xp - x).flatten(2).norm(dim=2), torch.full((4, 6), 1.5))


def test_presets_follow_table_1_and_explicit_fields_win(registry):
    ns = registry.make_defense("ns-loss", preset="cifar10").config
    assert (ns.lam, ns.ns_eps, ns.copies, ns.finetune_epochs, ns.finetune_lr) == (10.0, 3.0, 10, 100, 1e-4)
    combined = registry.make_defense("combined", preset="mnist", lam_ns=1.0).config
    assert (combined.lam_ns, combined.lam_jac, combined.ns_eps, combined.copies) == (1.0, 0.01, 1.0, 5)
    assert registry.make_defense("jacobian-reg", preset="seed000-mnist").config.lam == 0.01
    assert registry.make_defense("jacobian-reg").config.lam == 0.1


def test_bounded_search_finds_the_largest_passing_lambda_within_a_decade():
    tried = []

    def ok(lam):
        tried.append(lam)
        return lam < 2.0

    lam = nsloss.bounded_search(ok, 1.0, trials=6)
    assert 1.0 <= lam < 2.0 and lam > 1.8 and len(tried) == 6
    assert all(1 / math.sqrt(10) <= t <= math.sqrt(10) for t in tried)
    assert nsloss.bounded_search(lambda lam: False, 1.0, trials=3) == pytest.approx(1 / math.sqrt(10))


def tiny_data(n: int = 128) -> DataSplits:
    d = testing.digits()
    return DataSplits(d.name, d.train.take(n, 0), d.test.take(64, 0), d.num_classes)


def test_auto_lambda_follows_the_calibration_protocol(registry):
    """Seed 000 §III-C: "compute the values of Ri on 10 random batches from the training and
    validation sets and store the average value as Ri0", then λi0 = log2 K / Ri0 and a search
    in which each trial trains for an epoch. On 128 digits, a quarter held out as the
    validation set: R_0 averages 10 training batches and the 4 validation batches (all the
    validation set has), each drawn from its own part; λ_0 = log2 K / R_0; the trials train
    on the training part only and record their validation accuracy."""
    defense = registry.make_defense("ns-loss", lam="auto", copies=2, batch_size=8, auto_trials=2,
                                    auto_trial_batches=2, auto_validation=0.25)
    with pytest.raises(ArenaError, match="auto"):
        defense.loss(testing.trained_model().train(), *testing.attack_batch(4))
    data = tiny_data()
    fit_part, validation = defense.calibration_split(data.train, seed=0)
    assert (len(fit_part), len(validation)) == (96, 32)
    rows = {name: {bytes(r.numpy()) for r in split.x} for name, split in
            (("train", fit_part), ("validation", validation))}
    assert not rows["train"] & rows["validation"]

    phase, seen = [""], []
    terms, calibrate, trial = defense.terms, defense.calibrate, defense.trial

    def spy_terms(model, x, y, which):
        ce, regs = terms(model, x, y, which)
        seen.append((phase[0], {bytes(r.cpu().numpy()) for r in x}, float(regs["ns"].detach())))
        return ce, regs

    def spy_calibrate(*args, **kwargs):
        phase[0] = "reference"
        lam = calibrate(*args, **kwargs)
        phase[0] = "final training"
        return lam

    def spy_trial(*args, **kwargs):
        phase[0] = "trial"
        return trial(*args, **kwargs)

    defense.terms, defense.calibrate, defense.trial = spy_terms, spy_calibrate, spy_trial
    defense.train(testing.trained_model(), data, seed=0, finetune=True)
    record = defense.calibration["ns"]
    reference = [(batch, value) for p, batch, value in seen if p == "reference"]
    assert record["batches"] == {"train": 10, "validation": 4} and len(reference) == 14
    assert all(batch <= rows["train"] for batch, _ in reference[:10])
    assert all(batch <= rows["validation"] for batch, _ in reference[10:])
    assert set().union(*(batch for batch, _ in reference[10:])) == rows["validation"]
    values = [value for _, value in reference]
    assert record["r0"] == pytest.approx(sum(values) / 14)
    assert record["r0_validation"] == pytest.approx(sum(values[10:]) / 4)
    assert record["lam0"] == pytest.approx(math.log2(10) / record["r0"])
    trials = [batch for p, batch, _ in seen if p == "trial"]
    assert len(trials) == 4 and all(batch <= rows["train"] for batch in trials)  # 2 trials × 2 batches
    assert len(record["trials"]) == 2 and defense.lams["ns"] == record["lam"]
    assert all(0.0 <= acc <= 1.0 for _, _, acc in record["trials"])
    assert record["lam0"] / math.sqrt(10) <= record["lam"] <= record["lam0"] * math.sqrt(10)
    final = set().union(*(batch for p, batch, _ in seen if p == "final training"))
    assert final == rows["train"] | rows["validation"]   # the defense itself trains on all of it


def test_auto_lambda_refuses_an_empty_validation_set(registry):
    defense = registry.make_defense("combined", lam_jac="auto", lam_ns=0.0, auto_validation=0.01)
    with pytest.raises(ArenaError, match="auto_validation"):
        defense.train(testing.trained_model(), tiny_data(20), seed=0, finetune=True)


def test_adversarial_training_configs_are_checked(registry):
    with pytest.raises(ConfigError, match="did you mean 'pgd'"):
        registry.make_defense("adversarial-training", attack="pgdd")
    with pytest.raises(ConfigError, match="attack"):
        registry.make_defense("fgsm-at", attack="pgd")
    with pytest.raises(ConfigError, match="steps"):
        registry.make_defense("jacobian-reg", adversarial={"attack": {"id": "pgd", "params": {"stepz": 1}}})


def test_adversarial_training_with_ratio_one_is_cross_entropy_on_attacked_inputs(registry):
    model = testing.trained_model().train()
    x, y = testing.attack_batch(16)
    x_adv = registry.make_attack("fgsm")(model, x, y, 0.2).x_adv
    assert model.training                               # the harness restored training mode

    def loss(defense_id: str, **params) -> float:
        return float(registry.make_defense(defense_id, **params).loss(model, x, y).detach())

    with torch.no_grad():
        clean, adv = F.cross_entropy(model(x), y), F.cross_entropy(model(x_adv), y)
    assert loss("adversarial-training", attack="fgsm", eps=0.2, ratio=1.0) == pytest.approx(float(adv), rel=1e-5)
    half = loss("adversarial-training", attack="fgsm", eps=0.2)
    assert half == pytest.approx(float(0.5 * clean + 0.5 * adv), rel=1e-5)


def test_vat_perturbation_has_radius_eps_and_raises_the_kl_more_than_noise(registry):
    model = testing.trained_model()
    x, _ = testing.attack_batch(32)
    vat = registry.make_defense("vat", eps=0.5)
    with torch.no_grad():
        logits = model(x)
    torch.manual_seed(0)
    r = vat.virtual_adversarial(model, x, logits)
    assert torch.allclose(r.flatten(1).norm(dim=1), torch.full((32,), 0.5), atol=1e-5)
    noise = torch.randn_like(x)
    noise = 0.5 * noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        kl = [F.kl_div(F.log_softmax(model(x + d), 1), F.log_softmax(logits, 1), log_target=True,
                       reduction="batchmean") for d in (r, noise)]
    assert kl[0] > 2 * kl[1]


def test_vat_curvature_product_is_the_limit_of_miyatos_finite_difference():
    model = small_relu_net().double()
    x = torch.rand(6, 1, 2, 2, dtype=torch.float64)
    d = torch.randn_like(x)
    with torch.no_grad():
        logits = model(x)
    exact = adversarial._curvature_product(model, x, logits, d)
    xi = 1e-4
    r = (xi * d).requires_grad_(True)
    (fd,) = torch.autograd.grad(adversarial._kl(logits, model(x + r)) * x.shape[0], r)
    assert torch.allclose(fd / xi, exact, rtol=1e-3, atol=1e-8)


# ---------------------------------------------------------------- the papers' effects, on digits
# Protocol (seeds 000 and 002 post-process a trained model): the shared digits CNN of
# arena.testing (8 epochs of standard training, seed 42) is fine-tuned on the full digits
# training split with Adam, the same schedule for `standard` and for the defense, seed 42.
#
# Two directions do not reproduce and are marked xfail (not tuned), with the figures:
# * jacobian-reg (λ = 0.2 of ½·mean ‖J‖²_F, see PARAMS) divides the mean ‖J‖_F by 7 (26.4 -> 3.6)
#   but mostly by shrinking the logits: the mean gap between the two largest test logits falls by
#   the same factor (6.39 -> 0.89; gap/‖J‖_F 0.242 -> 0.249), and DeepFool's ρ, which is
#   scale-free, does not move (0.1535 -> 0.1467). The same holds after 10 epochs at lr 1e-4
#   (0.1516 -> 0.1477); trained from scratch (8 epochs) ρ rises (0.155 -> 0.189) but clean
#   accuracy falls 7.6 points. On seed 002's own architecture (the TensorFlow-tutorial CNN) and
#   an MNIST-like dataset, with seed 002's eq. 4 (seed002-mnist preset), ‖J‖_F falls but ρ does
#   not rise at the test's scale either: see the seed_002s_network tests below.
# * ns-loss lowers ‖J‖_F (26.4 -> 6.6) and raises robustness to FGSM and DeepFool's ρ, but the
#   loss gradient at training points grows (0.365 -> 0.700): the logits flatten, the predictions
#   lose confidence, and ‖Jᵀ(p − y)‖ grows with (p − y). On seed 000's own network it does
#   reproduce: see test_ns_loss_flattens_the_loss_gradient_on_seed_000s_network below.

SCHEDULE = {"finetune_epochs": 3, "finetune_lr": 1e-3, "batch_size": 64}
# jacobian-reg at λ = 0.2 of Hoffman's ½·mean ‖J‖²_F: the strength these tests were written and
# measured with (λ = 0.1 of mean ‖J‖²_F, before issue 14 gave the default form its ½). At the
# default λ = 0.1 (half that strength) clean accuracy falls 2.9 points (97.1% -> 94.2%), beyond
# the 2 points the accuracy test allows, with ‖J‖_F 26.4 -> 4.0.
PARAMS = {"jacobian-reg": {"lam": 0.2}}


@functools.lru_cache(maxsize=None)
def finetuned(defense_id: str, **params) -> nn.Module:
    params = {**PARAMS.get(defense_id, {}), **params}
    defense = testing.registry().make_defense(defense_id, **SCHEDULE, **params)
    return defense.train(testing.trained_model().train(), testing.digits(), seed=42, finetune=True).eval()


@functools.lru_cache(maxsize=None)
def correct_test_points(defense_id: str, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    model, test = finetuned(defense_id), testing.digits().test
    with torch.no_grad():
        keep = model(test.x).argmax(dim=1) == test.y
    return test.x[keep][:n], test.y[keep][:n]


def minimal_fgsm_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest L2 FGSM step (on a geometric grid of ε, 0.1 to 7.9) that fools each sample."""
    attack = testing.registry().make_attack("fgsm", norm="l2")
    best, found = x.clone(), torch.zeros(len(x), dtype=torch.bool)
    for eps in (0.1 * 1.2**i for i in range(25)):
        result = attack(model, x, y, eps)
        new = result.success & ~found
        best[new], found = result.x_adv[new], found | result.success
    return best, found


def rho(defense_id: str, attack: str) -> float:
    model, (x, y) = finetuned(defense_id), correct_test_points(defense_id)
    if attack == "deepfool":
        result = testing.registry().make_attack("deepfool")(model, x, y)
        x_adv, success = result.x_adv, result.success
    else:
        x_adv, success = minimal_fgsm_l2(model, x, y)
    return metrics.empirical_robustness(x, x_adv, success)


def sensitivity(defense_id: str, split: str) -> float:
    data = getattr(testing.digits(), split)
    return metrics.loss_sensitivity(finetuned(defense_id), data.x, data.y)


def figures(name: str, std: float, defended: float) -> str:
    return f"{name}: standard {std:.4f}, defense {defended:.4f}"


def test_jacobian_reg_lowers_the_jacobian_norm_and_keeps_clean_accuracy():
    test = testing.digits().test
    std, jac = (metrics.mean_jacobian_frobenius(finetuned(d), test.x) for d in ("standard", "jacobian-reg"))
    assert jac < std, figures("mean ‖J‖_F", std, jac)
    acc_std, acc_jac = (metrics.clean_accuracy(finetuned(d), test.x, test.y)
                        for d in ("standard", "jacobian-reg"))
    assert acc_jac >= acc_std - 0.02, figures("clean accuracy", acc_std, acc_jac)


def test_jacobian_reg_raises_the_minimal_fgsm_perturbation():
    std, jac = rho("standard", "fgsm"), rho("jacobian-reg", "fgsm")
    assert jac > std, figures("ρ (minimal L2 FGSM)", std, jac)


@pytest.mark.xfail(reason="does not reproduce on digits (ρ standard 0.1535, jacobian-reg 0.1467): see the "
                          "notes above the effect tests", raises=AssertionError, strict=True)
def test_jacobian_reg_raises_deepfools_rho():
    if "deepfool" not in testing.registry().attacks:
        pytest.skip("the deepfool attack plugin is not installed")
    std, jac = rho("standard", "deepfool"), rho("jacobian-reg", "deepfool")
    assert jac > std, figures("ρ (DeepFool)", std, jac)


def post_processed(architecture_id: str, defenses: dict[str, dict]) -> tuple[DataSplits, dict[str, nn.Module]]:
    """The post-processing protocol of seeds 000 and 002 on a Fashion-MNIST slice (5,000 training
    and 500 test images, seed 42): ``architecture_id`` at a quarter of its width, trained normally
    for 5 epochs, then a copy fine-tuned by each of ``defenses`` (id -> params) for 3 epochs with
    Adam at lr 1e-4. Returns the data and the fine-tuned models, in eval mode."""
    registry = testing.registry()
    data = registry.make_dataset("fashion-mnist", train_size=5000, test_size=500).load(seed=42)
    architecture = registry.make_architecture(architecture_id, width=0.25)
    torch.manual_seed(42)
    standard = registry.make_defense("standard", epochs=5, batch_size=64)
    pretrained = standard.train(standard.build(architecture, data.input_shape, data.num_classes), data, seed=42)
    models = {}
    for defense_id, params in defenses.items():
        defense = registry.make_defense(defense_id, **params, finetune_epochs=3, finetune_lr=1e-4)
        models[defense_id] = defense.train(copy.deepcopy(pretrained).train(), data, seed=42, finetune=True).eval()
    return data, models


# Seed 002's eq. 4 on its own network (the seed002-mnist preset against the same post-processing
# without the regulariser, ‖J‖_F and DeepFool's ρ) is tested on the paper's tournament file, in
# tests/test_paper_directions.py (seed002 fixture), which trains those models once.


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_ns_loss_flattens_the_loss_gradient_on_seed_000s_network():
    """Seed 000's MNIST network (the Keras example CNN, two dropout layers; here at a quarter of
    the width) trained normally on 5,000 Fashion-MNIST images (5 epochs), then post-processed
    with Table I's MNIST setting (λ 2, NsEps 1, N 5; Adam at lr 1e-4, 3 epochs here), against
    the same post-processing without NsLoss: the loss gradient at training points shrinks and
    clean accuracy stays within 3 points (measured: 0.3548 -> 0.3076, accuracy 78.2% -> 78.4%;
    before dropout masks were shared between a sample and its copies, 20.4% accuracy)."""
    data, models = post_processed("keras-mnist-cnn", {"standard": {}, "ns-loss": {"preset": "mnist"}})
    found = {defense_id: (metrics.clean_accuracy(model, data.test.x, data.test.y),
                          metrics.loss_sensitivity(model, data.train.x[:500], data.train.y[:500]))
             for defense_id, model in models.items()}
    (acc_std, sens_std), (acc_ns, sens_ns) = found["standard"], found["ns-loss"]
    assert sens_ns < sens_std, figures("loss sensitivity on training points", sens_std, sens_ns)
    assert abs(acc_ns - acc_std) <= 0.03, figures("clean accuracy", acc_std, acc_ns)


@pytest.mark.xfail(reason="does not reproduce on digits (standard 0.365, ns-loss 0.700 on training points): "
                          "see the notes above the effect tests", raises=AssertionError, strict=True)
def test_ns_loss_flattens_the_loss_gradient_on_training_points():
    std, ns = sensitivity("standard", "train"), sensitivity("ns-loss", "train")
    assert ns < std, figures("loss sensitivity on training points", std, ns)


def test_input_gradient_reg_lowers_the_loss_sensitivity():
    std, ig = sensitivity("standard", "test"), sensitivity("input-gradient-reg", "test")
    assert ig < std, figures("loss sensitivity on test points", std, ig)


def test_fgsm_adversarial_training_raises_the_accuracy_under_fgsm():
    fgsm, test = testing.registry().make_attack("fgsm"), testing.digits().test
    for eps in (0.1, 0.3):
        acc = []
        for d in ("standard", "fgsm-at"):
            model = finetuned(d)
            with torch.no_grad():
                correct = model(test.x).argmax(dim=1) == test.y
            acc.append(metrics.adversarial_accuracy(fgsm(model, test.x, test.y, eps).success, correct))
        assert acc[1] > acc[0], figures(f"accuracy under FGSM ε={eps}", *acc)
