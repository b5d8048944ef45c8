"""The ``autoattack`` ensemble: the reference's versions, a cascade whose worst case is exact, its
components' breakdown, and a randomised model judged by the majority of its passes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from arena import testing
from arena.errors import ConfigError
from arena.threat import Norm
from arena_builtins.attacks.autoattack import components


def make(**params):
    return testing.registry().make_attack("autoattack", **params)


@pytest.fixture(scope="module")
def data():
    return testing.trained_model(), *testing.attack_batch(48)


def test_the_versions_are_the_references():
    names = lambda version, norm=Norm.LINF: [c[0] for c in components(version, norm, 100, 5000, 20)]  # noqa: E731
    assert names("standard") == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert names("plus") == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert names("rand") == ["apgd-ce", "apgd-dlr"]
    standard = {c[0]: c[2] for c in components("standard", Norm.LINF, 100, 5000, 20)}
    assert standard["apgd-t"]["n_target_classes"] == 9 and standard["fab-t"]["n_target_classes"] == 9
    assert standard["square"]["max_queries"] == 5002 and standard["square"]["p_init"] == 0.8
    assert all(c[2]["eot_iter"] == 20 for c in components("rand", Norm.LINF, 100, 5000, 20))
    plus = {c[0]: c[2] for c in components("plus", Norm.LINF, 100, 5000, 20)}
    assert plus["apgd-ce"]["restarts"] == plus["fab"]["restarts"] == 5
    l1 = {c[0]: c[2] for c in components("standard", Norm.L1, 100, 5000, 20)}
    assert list(l1) == ["apgd-ce", "apgd-t", "fab-t"] and l1["apgd-ce"]["large_eps"]
    # the built ensemble holds exactly those attacks, configured so
    ensemble = make(steps=7)
    assert [(n, a.id) for n, a in ensemble.components] == [
        ("apgd-ce", "apgd"), ("apgd-t", "apgd-t"), ("fab-t", "fab-t"), ("square", "square")]
    assert all(a.config.steps == 7 for n, a in ensemble.components if n != "square")


def test_the_cascade_is_an_exact_per_example_worst_case(data):
    model, x, y = data
    fgsm = testing.registry().make_attack("fgsm")
    bim = testing.registry().make_attack("bim", steps=10)
    alone = fgsm(model, x, y, 0.2, seed=0).success | bim(model, x, y, 0.2, seed=0).success
    ensemble = make(version="custom", attacks=[{"name": "fgsm", "attack": "fgsm"},
                                               {"name": "bim", "attack": {"id": "bim", "params": {"steps": 10}}}])
    result = ensemble(model, x, y, 0.2, seed=0)
    assert torch.equal(result.success, alone)  # a sample is broken iff one of the two breaks it
    first, second = result.details["components"]
    # bim attacked only what fgsm left robust; the breakdown adds up
    assert second["attacked"] == first["attacked"] - first["broken"] == len(x) - first["broken"]
    assert first["broken"] + second["broken"] == int(result.success.sum())
    assert 0 < first["broken"] and 0 < second["broken"]
    assert float(result.distance.max()) <= 0.2 + 1e-6


def test_standard_beats_pgd_and_counts_squares_queries(data):
    model, x, y = data
    ensemble = make(steps=20, square_iterations=100)
    result = ensemble(model, x, y, 0.1, seed=0)
    pgd = testing.registry().make_attack("pgd", steps=20)(model, x, y, 0.1, seed=0)
    assert float(result.success.float().mean()) >= float(pgd.success.float().mean())
    comps = {c["name"]: c for c in result.details["components"]}
    assert [c["attacked"] for c in result.details["components"]] == sorted(
        (c["attacked"] for c in result.details["components"]), reverse=True)
    # the samples Square attacked spent its queries, counted by the oracle's ledger (at most 102 each)
    robust_after_fab = comps["square"]["attacked"]
    if robust_after_fab:
        assert int(result.queries.max()) > 100
    assert float(result.distance.max()) <= 0.1 + 1e-6


def test_fab_gets_the_budget_of_the_call(data):
    model, x, y = data
    ensemble = make(steps=5, square_iterations=10)
    fab = dict(ensemble.components)["fab-t"]
    assert fab.config.eps is None
    assert ensemble._at_budget(fab, 0.1).config.eps == 0.1
    assert ensemble._at_budget(fab, 0.1) is ensemble._at_budget(fab, 0.1)  # built once per budget


class Coin(nn.Module):
    """A randomised model: each answer is a wrong class with probability 0.3."""

    randomized = True

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        logits = self.base(x)
        flip = torch.rand(len(x)) < 0.3
        boost = nn.functional.one_hot((logits.argmax(1) + 1) % logits.shape[1], logits.shape[1]) * 1e3
        return torch.where(flip.unsqueeze(1), logits + boost, logits)


def test_a_randomised_model_is_judged_by_the_majority_of_passes(data):
    model, x, y = data
    noisy = Coin(model)
    identity = [{"name": "none", "attack": {"id": "pgd", "params": {"steps": 1, "step_size": 1e-9,
                                                                     "random_start": False}}}]
    lucky = make(version="custom", attacks=identity, passes=1)(noisy, x, y, 0.01, seed=0)
    fair = make(version="custom", attacks=identity, passes=21)(noisy, x, y, 0.01, seed=0)
    # one pass: about 30% look broken by luck; 21 passes: a break needs 11 wrong answers
    assert lucky.details["components"][0]["broken"] >= 6
    assert fair.details["components"][0]["broken"] <= 2
    assert "eot_draws" not in fair.details  # a PGD step averages nothing
    rand = make(version="rand", steps=2, eot_iter=3)(noisy, x[:8], y[:8], 0.01, seed=0)
    assert rand.details["eot_draws"] == 3


@pytest.mark.parametrize("params, message", [
    ({"version": "custom"}, "'attacks' lists the components"),
    ({"attacks": [{"name": "a", "attack": "fgsm"}]}, "'attacks' lists the components"),
    ({"version": "custom", "attacks": [{"name": "a", "attack": "fgsm"}, {"name": "a", "attack": "pgd"}]},
     "distinct"),
    ({"version": "custom", "attacks": [{"name": "a", "attack": "no-such-attack"}]}, "no-such-attack"),
    ({"norm": "l0"}, "l1"),
    ({"version": "best"}, "version"),
])
def test_bad_configs_are_one_line_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        make(**params)


def test_its_match_page_shows_the_components(tmp_path):
    from arena.leaderboard.site import publish
    from arena.tournament.executors import InlineExecutor
    from arena.tournament.plan import load_tournament
    from arena.tournament.runner import Runner
    from arena.tournament.store import Store

    path = tmp_path / "t.toml"
    path.write_text("""
name = "aa"
dataset = "digits"
architecture = "digits-cnn"
samples = 30
[training]
epochs = 3
[[defenses]]
id = "standard"
[[attacks]]
id = "autoattack"
params = { steps = 10, square_iterations = 20 }
budgets = [0.1]
""")
    store = Store(tmp_path / "r.db")
    run_id = Runner(load_tournament(path, testing.registry()), store, cache_dir=tmp_path / "cache",
                    progress=False, executor=InlineExecutor()).run()
    (row,) = store.matches(run_id)
    comps = row.provenance["details"]["components"]
    assert [c["name"] for c in comps] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert sum(c["broken"] for c in comps) == round(row.success_rate * comps[0]["attacked"])
    publish(store, run_id, tmp_path / "site")
    page = next((tmp_path / "site" / "matches").glob("standard--autoattack--*.html")).read_text()
    assert "Components (cascade)" in page and "<td class=\"name\">fab-t</td>" in page
