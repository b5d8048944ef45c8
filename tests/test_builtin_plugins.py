"""Every built-in attack and defense of the first tournament behaves as its method says on a small
trained model. Contract rows: tests/test_contracts.py."""
from __future__ import annotations

import pytest
import torch

from arena import testing
from arena.errors import ConfigError
from arena.threat import Norm


@pytest.mark.parametrize("attack_id", ["fgsm", "pgd", "bim", "fgsm-minimal", "deepfool", "hopskipjump"])
def test_l2_and_linf_attacks_refuse_l0_in_one_line(registry, attack_id):
    """An L2/L∞ step under an L0 budget would be cut to the ε largest pixels by the harness's
    projection and reported as an L0 attack: a config error instead, naming the field."""
    if attack_id not in registry.attacks:
        pytest.skip(f"{attack_id} is not installed")
    with pytest.raises(ConfigError, match=rf"^attack '{attack_id}': norm: this attack is defined in 'l2' and 'linf' only$"):
        registry.make_attack(attack_id, norm="l0")
    assert registry.make_attack(attack_id, norm="l2").threat_norm is Norm.L2


def test_pgd_at_a_large_budget_drives_accuracy_to_zero(registry, model):
    x, y = testing.attack_batch(64)
    result = registry.make_attack("pgd", steps=30)(model, x, y, eps=0.5, seed=0)
    assert float(result.success.float().mean()) == 1.0


def test_pgd_is_at_least_as_strong_as_fgsm(registry, model):
    x, y = testing.attack_batch(64)
    for norm, eps in ((Norm.LINF, 0.1), (Norm.L2, 0.75)):
        fgsm = registry.make_attack("fgsm", norm=norm)(model, x, y, eps)
        pgd = registry.make_attack("pgd", norm=norm, steps=20, rel_step_size=0.125)(model, x, y, eps, seed=0)
        assert pgd.success.sum() >= fgsm.success.sum()


def test_restarts_keep_a_success_found_by_any_restart(registry, model):
    x, y = testing.attack_batch(64)
    one = registry.make_attack("pgd", steps=5, restarts=1)(model, x, y, eps=0.08, seed=1)
    many = registry.make_attack("pgd", steps=5, restarts=4)(model, x, y, eps=0.08, seed=1)
    assert many.success.sum() >= one.success.sum()
    assert (many.success | ~one.success).all()  # restart 1 is the same run; later ones only add
    # A restart after the first runs only on samples not fooled yet: 5 steps and one judging
    # pass per non-final restart, and a sample fooled by the first restart never costs more.
    assert int(many.queries.max()) <= 3 * 6 + 5
    assert (many.queries[one.success] <= 6).all()


def test_pgd_early_stop_keeps_every_success_and_saves_passes(registry, model):
    x, y = testing.attack_batch(64)
    full = registry.make_attack("pgd", steps=20, early_stop=False)(model, x, y, eps=0.1, seed=3)
    early = registry.make_attack("pgd", steps=20)(model, x, y, eps=0.1, seed=3)
    # Same start, same steps up to the first fooling iterate, which early stopping keeps.
    assert (early.success | ~full.success).all()
    assert 0 < int(full.success.sum()) < 64
    assert int(early.queries.sum()) < int(full.queries.sum()) == 64 * 20
    assert float(early.distance.max()) <= 0.1 + 1e-6


def test_targeted_pgd_reaches_its_targets(registry, model):
    x, y = testing.attack_batch(32)
    targets = (y + 1) % 10
    result = registry.make_attack("pgd", steps=30)(model, x, y, eps=0.5, targets=targets, seed=0)
    with torch.no_grad():
        pred = model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets) and float(result.success.float().mean()) > 0.9


def test_gda_trains_on_noisy_copies_in_the_unit_box(registry):
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return torch.zeros(x.shape[0], 10, requires_grad=True)

    torch.manual_seed(0)
    x, y = torch.rand(5, 1, 8, 8), torch.arange(5)
    registry.make_defense("gda", sigma=0.3, copies=3).loss(Spy(), x, y)
    batch = seen[0]
    assert batch.shape == (20, 1, 8, 8) and torch.equal(batch[:5], x)
    assert float(batch.min()) >= 0 and float(batch.max()) <= 1
    # far from the box's faces (10 σ) nothing is clipped: the noise is N(0, σ²)
    mid = torch.full((5, 1, 8, 8), 0.5)
    registry.make_defense("gda", sigma=0.05, copies=3).loss(Spy(), mid, y)
    noise = seen[1][5:] - 0.5
    assert abs(float(noise.std()) - 0.05) < 0.005 and abs(float(noise.mean())) < 0.005


def test_pgd_runs_every_step_where_the_first_hit_proves_little(registry, model):
    """No early stop against a model that declares ``randomized`` (one call is not the judge's
    call), and none when crafting on another model than the judged one (``off_target``)."""
    from arena.attack import off_target

    class Declared(torch.nn.Module):
        randomized = True

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    x, y = testing.attack_batch(32)
    result = registry.make_attack("pgd", steps=10)(Declared(model), x, y, eps=0.3, seed=0)
    assert bool(result.success.any()) and torch.equal(result.queries, torch.full_like(result.queries, 10))
    pgd = registry.attacks["pgd"]
    assert off_target(pgd, {"steps": 5}) == {"steps": 5, "early_stop": False}
    assert off_target(pgd, {"early_stop": True}) == {"early_stop": True}
    assert off_target(registry.attacks["cw-l2"], {"steps": 5}) == {"steps": 5}
