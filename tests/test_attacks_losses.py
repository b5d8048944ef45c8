"""The objectives of the gradient attacks (plugins/attacks/losses.py) and PGD/BIM's ``loss``."""
from __future__ import annotations

import pytest
import torch

from arena import testing
from arena.errors import ConfigError
from arena_builtins.attacks.losses import attack_loss


def test_dlr_is_invariant_to_shift_and_scale_of_the_logits():
    torch.manual_seed(0)
    z = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    t = (y + 1) % 10
    for targets in (None, t):
        base = attack_loss(z, y, targets, "dlr")
        assert torch.allclose(attack_loss(3.0 * z + 7.0, y, targets, "dlr"), base, atol=1e-5)
        # cross-entropy and the margin are not: scaling changes them
        assert not torch.allclose(attack_loss(3.0 * z, y, targets, "margin"), attack_loss(z, y, targets, "margin"))


def test_margin_and_dlr_known_values():
    z = torch.tensor([[4.0, 1.0, 2.0, 0.0]])
    y = torch.tensor([0])
    assert attack_loss(z, y, None, "margin").item() == pytest.approx(2.0 - 4.0)
    assert attack_loss(z, y, None, "dlr").item() == pytest.approx((2.0 - 4.0) / (4.0 - 1.0))
    t = torch.tensor([3])
    assert attack_loss(z, y, t, "margin").item() == pytest.approx(0.0 - 4.0)
    assert attack_loss(z, y, t, "dlr").item() == pytest.approx((0.0 - 4.0) / (4.0 - (1.0 + 0.0) / 2))
    # the sign: a misclassified point has a positive untargeted margin
    assert attack_loss(z, torch.tensor([1]), None, "margin").item() > 0


def test_dlr_needs_enough_classes():
    with pytest.raises(ValueError, match="at least 4 classes"):
        attack_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([1, 2]), "dlr")


@pytest.mark.parametrize("attack_id", ["pgd", "bim"])
def test_pgd_and_bim_ascend_each_loss_and_reach_targets(attack_id):
    model = testing.trained_model()
    x, y = testing.attack_batch(32)
    make = testing.registry().make_attack
    rates = {}
    for loss in ("ce", "margin", "dlr"):
        res = make(attack_id, loss=loss, steps=10)(model, x, y, 0.25, seed=0)
        rates[loss] = float(res.success.float().mean())
        assert float(res.distance.max()) <= 0.25 + 1e-6
    assert min(rates.values()) >= 0.5, rates  # every objective breaks most digits at ε = 0.25
    targets = (y + 1) % 10
    for loss in ("margin", "dlr"):
        res = make(attack_id, loss=loss, steps=20)(model, x, y, 0.3, targets, seed=0)
        with torch.no_grad():
            hit = model(res.x_adv).argmax(1) == targets
        assert torch.equal(hit, res.success) and float(hit.float().mean()) >= 0.5
    with pytest.raises(ConfigError, match="loss"):
        make(attack_id, loss="hinge")
