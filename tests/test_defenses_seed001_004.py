"""Seed 001's bounded ReLU and baselines (feature squeezing, label smoothing) and seed 004's DLN and
NAC: each shows the effect its paper claims on digits (seed 42), against ``standard`` trained on
the same schedule (``arena.testing.trained_model()``). Contract rows: tests/test_contracts.py."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from arena import ConfigError, testing
from arena.metrics import loss_sensitivity
from arena.training import accuracy
from arena_builtins.defenses.activations import BoundedReLU
from arena_builtins.defenses.preprocessing import median_filter
from arena_builtins.defenses.smoothing import smoothed_targets

# the schedule of arena.testing.trained_model(), so that it is the `standard` baseline
SCHEDULE = {"epochs": 8, "batch_size": 64, "lr": 2e-3}


def train(defense_id: str, **params) -> nn.Module:
    """``defense_id`` trained on digits with the baseline's schedule and seed."""
    reg, data = testing.registry(), testing.digits()
    defense = reg.make_defense(defense_id, **SCHEDULE, **params)
    torch.manual_seed(42)
    model = defense.build(reg.make_architecture("digits-cnn"), data.input_shape, data.num_classes)
    return defense.train(model, data, seed=42)


@functools.lru_cache(maxsize=None)
def trained(defense_id: str) -> nn.Module:
    return train(defense_id)


def fgsm_train_examples() -> tuple[torch.Tensor, torch.Tensor]:
    """FGSM (L∞, ε = 0.3) of the undefended classifier on the digits training set: DLN's data."""
    train = testing.digits().train
    attack = testing.registry().make_attack("fgsm", norm="linf")
    return attack(testing.trained_model(), train.x, train.y, 0.3, seed=42).x_adv, train.y


# ----------------------------------------------------------------------- bounded ReLU
def test_brelu_replaces_every_relu_and_bounds_every_activation():
    model, data = trained("brelu"), testing.digits()
    bounded = [m for m in model.modules() if isinstance(m, BoundedReLU)]
    assert bounded and not any(type(m) is nn.ReLU for m in model.modules())
    peaks: list[float] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: peaks.append(float(out.max()))) for m in bounded]
    with torch.no_grad():
        model(data.test.x)
    for h in hooks:
        h.remove()
    assert len(peaks) == len(bounded) and max(peaks) <= 1.0
    assert accuracy(model, data.test) > 0.85


def test_brelu_refuses_an_architecture_without_relu_modules():
    class NoReLU(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    class Arch:
        def build(self, input_shape, num_classes):
            return NoReLU()

    with pytest.raises(ConfigError, match="brelu.*no nn.ReLU"):
        testing.registry().make_defense("brelu").build(Arch(), (1, 8, 8), 10)


def test_gda_brelu_bounds_at_t_and_trains_on_gda_loss():
    reg = testing.registry()
    defense = reg.make_defense("gda-brelu", t=0.5, copies=3)
    model = defense.build(reg.make_architecture("digits-cnn"), (1, 8, 8), 10)
    ts = {m.t for m in model.modules() if isinstance(m, BoundedReLU)}
    assert ts == {0.5}
    assert type(defense).loss is reg.defenses["gda"].loss


# ---------------------------------------------------------- Gaussian data augmentation
def test_gda_lowers_local_loss_sensitivity():
    """Seed 001 Table 3: GDA + ReLU 0.0244 against the CNN's 0.0609 on MNIST. On digits with this
    short schedule the direction holds by a small margin only (standard 0.611, gda 0.594)."""
    test = testing.digits().test
    standard = loss_sensitivity(testing.trained_model(), test.x, test.y)
    gda = loss_sensitivity(trained("gda"), test.x, test.y)
    assert gda < standard, f"loss sensitivity: standard {standard:.4f}, gda {gda:.4f}"


# --------------------------------------------------------------------- feature squeezing
def test_feature_squeezing_maps_inputs_to_its_bit_depth():
    reg, x = testing.registry(), testing.digits().test.x[:64]
    one = reg.make_defense("feature-squeezing").wrap(testing.trained_model(), testing.digits())
    assert set(one.squeeze(x).unique().tolist()) <= {0.0, 1.0}
    three = reg.make_defense("feature-squeezing", bits=3, median=3).wrap(testing.trained_model(), testing.digits())
    levels = three.squeeze(x) * 7
    assert torch.equal(levels, levels.round()) and levels.unique().numel() > 2


def test_feature_squeezing_masks_gradients_and_bpda_restores_them():
    defended = testing.registry().make_defense("feature-squeezing").wrap(testing.trained_model(), testing.digits())
    x, y = testing.attack_batch(32)
    grads = {}
    for name, forward in (("forward", defended), ("bpda", defended.bpda_forward)):
        xg = x.clone().requires_grad_(True)
        (grads[name],) = torch.autograd.grad(F.cross_entropy(forward(xg), y), xg)
    assert float(grads["forward"].abs().max()) == 0.0
    assert float(grads["bpda"].abs().max()) > 0.0
    with torch.no_grad():
        assert torch.equal(defended(x), defended.bpda_forward(x))


@pytest.mark.parametrize("k", [2, 3])
def test_median_filter_matches_scipy(k):
    x = torch.rand(2, 3, 7, 6)
    expected = ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="reflect")
    assert torch.equal(median_filter(x, k), torch.from_numpy(expected))


# ---------------------------------------------------------------------- label smoothing
def test_label_smoothing_targets_are_0_9_and_the_rest_uniform():
    t = smoothed_targets(torch.tensor([3, 0]), 10, 0.9)
    assert torch.allclose(t[0, 3], torch.tensor(0.9)) and torch.allclose(t.sum(1), torch.ones(2))
    assert torch.allclose(t[0, torch.arange(10) != 3], torch.full((9,), 0.1 / 9))
    logits = t.log().requires_grad_(True)  # the minimiser: softmax(logits) == targets
    defense = testing.registry().make_defense("label-smoothing")
    (grad,) = torch.autograd.grad(defense.loss(lambda _x: logits, None, torch.tensor([3, 0])), logits)
    assert float(grad.abs().max()) < 1e-6


def test_label_smoothing_trains_to_targets_of_0_9():
    """On the training points each model fits, the true class's probability settles near the
    target: 0.9 for label smoothing, 1 for plain cross-entropy (median, as the hard examples
    of a short schedule pull the mean down: standard 0.947, label smoothing 0.816)."""
    train, model = testing.digits().train, trained("label-smoothing")
    medians = {}
    for name, m in (("standard", testing.trained_model()), ("label-smoothing", model)):
        with torch.no_grad():
            probs = m(train.x).softmax(1)
        fitted = probs.argmax(1) == train.y
        medians[name] = float(probs.gather(1, train.y[:, None])[fitted].median())
    assert abs(medians["label-smoothing"] - 0.9) < 0.05 and medians["standard"] > 0.95, medians


# ---------------------------------------------------------------------------------- NAC
def test_nac_keeps_clean_accuracy_and_changes_logits_at_every_call():
    data = testing.digits()
    base = testing.trained_model()
    nac = testing.registry().make_defense("nac").wrap(base, data).eval()
    assert nac.randomized and nac.base is base
    torch.manual_seed(0)
    assert abs(accuracy(nac, data.test) - accuracy(base, data.test)) <= 0.03
    with torch.no_grad():
        first, second, clean = nac(data.test.x), nac(data.test.x), base(data.test.x)
    assert bool((first != second).any(dim=1).all()) and bool((first != clean).any(dim=1).all())
    assert abs(float((first - clean).std()) - 1.0) < 0.05


# ---------------------------------------------------------------------------------- DLN
@functools.lru_cache(maxsize=None)
def dln(defense_id: str = "dln", seed_tag: int = 0, **params) -> nn.Module:
    """A DLN-defended trained_model() (cached; ``seed_tag`` forces a separate training)."""
    defense = testing.registry().make_defense(defense_id, **params)
    return defense.wrap(testing.trained_model(), testing.digits(), seed=42)


def test_dln_recovers_fgsm_examples_it_was_trained_on():
    x_adv, y = fgsm_train_examples()
    defended, classifier = dln(), testing.trained_model()
    with torch.no_grad():
        acc_c = float((classifier(x_adv).argmax(1) == y).float().mean())
        acc_dc = float((defended(x_adv).argmax(1) == y).float().mean())
    assert acc_dc > acc_c, f"FGSM(C, train): C {acc_c:.3f}, D->C {acc_dc:.3f}"
    assert defended.history[0]["attacked_accuracy"] == pytest.approx(acc_c)
    assert defended.history[0]["sanitized_accuracy"] == pytest.approx(acc_dc)


def test_dln_prepends_a_shape_keeping_sanitiser_to_a_frozen_classifier():
    defended, classifier = dln(), testing.trained_model()
    x = testing.digits().test.x[:8]
    assert defended.sanitizer(x).shape == x.shape
    for a, b in zip(defended.base.state_dict().values(), classifier.state_dict().values()):
        assert torch.equal(a, b)
    assert all(p.requires_grad for p in defended.base.parameters())
    with torch.no_grad():
        assert torch.equal(defended(x), defended.base(defended.sanitizer(x)))


def repeated_dln_by_round(rounds: int) -> tuple[nn.Module, list[nn.Module]]:
    """A repeated DLN (``rounds`` rounds) on trained_model(), and seed 004 Table 3's
    classifiers C_0 = C, C_i = D_i→C for i = 1..rounds (D_i: the sanitiser after i rounds of
    training, from a snapshot taken at the end of each round)."""
    defense = testing.registry().make_defense("dln", rounds=rounds)
    snapshots: list[dict[str, torch.Tensor]] = []
    train_sanitizer = defense._train_sanitizer

    def snapshotting(defended, *args, **kwargs):
        train_sanitizer(defended, *args, **kwargs)
        snapshots.append(copy.deepcopy(defended.sanitizer.state_dict()))

    defense._train_sanitizer = snapshotting
    defended = defense.wrap(testing.trained_model(), testing.digits(), seed=42)
    classifiers: list[nn.Module] = [testing.trained_model()]
    for state in snapshots:
        c_i = copy.deepcopy(defended)
        c_i.sanitizer.load_state_dict(state)
        classifiers.append(c_i.eval())
    return defended, classifiers


@pytest.mark.slow
def test_repeated_dln_grows_its_training_set_and_gains_robustness_over_rounds():
    """Seed 004 Table 3 ("DLN trained repeatedly against FGSM for MNIST"): the accuracy of C_i
    on FGSM(C_i, OTD), the *test* set attacked through the round's own classifier, rises over
    rounds (0.72% -> 13.70% -> 24.86% -> 43.39% at round 3), while the accuracy on the clean
    test set stays within 2 points of C's (99.36% -> 97.95%). Here on the digits test set
    (FGSM L∞ ε = 0.3, the DLN's own attack), C_0 = C to C_3 (measured: 0.0% -> 0.7% -> 42.9%
    -> 54.9%, clean 96.2% -> 97.1%); the training-set history (the DLN's attacks on its own
    training data) is checked for the set's growth and the fresh attack of round 1 only."""
    defended, classifiers = repeated_dln_by_round(3)
    n = len(testing.digits().train)
    assert [h["examples"] for h in defended.history] == [2 * n, 4 * n, 6 * n]
    # round 1 attacks D_0→C, not C: its fresh examples fool it far more than round 0's did
    attacked = [h["attacked_accuracy"] for h in defended.history]
    assert attacked[1] < defended.history[0]["sanitized_accuracy"], defended.history
    test, fgsm = testing.digits().test, testing.registry().make_attack("fgsm", norm="linf")
    clean, robust = [], []
    for c_i in classifiers:
        clean.append(accuracy(c_i, test))
        robust.append(float((~fgsm(c_i, test.x, test.y, 0.3, seed=42).success).float().mean()))
    figures = f"Acc. OTD {[round(a, 4) for a in clean]}, Acc. FGSM(C_i, OTD) {[round(a, 4) for a in robust]}"
    assert robust[-1] > robust[0], figures
    assert all(later >= earlier for earlier, later in zip(robust, robust[1:])), figures
    assert clean[-1] >= clean[0] - 0.02, figures


def test_dln_is_deterministic_under_seed_and_checks_its_attack():
    first, second = (dln(epochs=1, samples=200, seed_tag=tag) for tag in (1, 2))
    for a, b in zip(first.sanitizer.state_dict().values(), second.sanitizer.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="fgsmm"):
        testing.registry().make_defense("dln", attack="fgsmm").wrap(testing.trained_model(), testing.digits())


def test_dln_nac_is_a_randomised_dln():
    defended = dln("dln-nac", epochs=1, samples=300)
    x = testing.digits().test.x[:16]
    with torch.no_grad():
        first, second = defended(x), defended(x)
        clean = defended.base(defended.sanitizer(x))
    assert defended.randomized and not dln().randomized
    assert bool((first != second).any(dim=1).all())
    assert abs(float((first - clean).std()) - 1.0) < 0.15
    assert len(defended.history) == 1 and defended.history[0]["examples"] == 600


# ------------------------------------------------------------- seed 003's RCE baseline
# (the activation fix of issue 14; seed 003's own tests are in tests/test_defenses_seed003.py)
def test_rce_baseline_uses_seed_003s_leaky_relu():
    """Seed 003 compares "standard training of ResNet-56 [...] and ResNet-56 equipped with the
    RCE defense" to PDM (§4) under one table of classifier hyper-parameters (Appendix B:
    "Activation Leaky-Relu (0.1)"): `rce` swaps every ReLU for LeakyReLU(0.1), as `pdm` does.
    On digits test images, after a short RCE training, every activation of the model returns
    its input where it is positive and 0.1 times it elsewhere (negative outputs included)."""
    reg, data = testing.registry(), testing.digits()
    arch = reg.make_architecture("digits-cnn")
    defense = reg.make_defense("rce", epochs=1, batch_size=64, lr=2e-3)
    assert defense.config.negative_slope == reg.make_defense("pdm").config.negative_slope == 0.1
    torch.manual_seed(42)
    model = defense.train(defense.build(arch, data.input_shape, data.num_classes), data, seed=42)
    leaky = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and not any(type(m) is nn.ReLU for m in model.modules())
    assert {m.negative_slope for m in leaky} == {0.1}
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda _m, inp, out: seen.append((inp[0], out))) for m in leaky]
    with torch.no_grad():
        model(data.test.x[:128])
    for h in hooks:
        h.remove()
    assert len(seen) == len(leaky)
    for inp, out in seen:
        assert torch.allclose(out, torch.where(inp > 0, inp, 0.1 * inp))
        assert bool((out < 0).any())
    plain = reg.make_defense("rce", negative_slope=0).build(arch, data.input_shape, data.num_classes)
    assert any(type(m) is nn.ReLU for m in plain.modules())
