"""Evaluation sanity checks flag what they exist for, and stay quiet on a sound evaluation."""
from __future__ import annotations

import math

import torch
from torch import nn

from arena.checks import model_checks
from arena.leaderboard.flags import flags
from arena.tournament.store import MatchRow, Store


class Softmaxed(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


class Rounded(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x))


class Noisy(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return out + torch.randn_like(out)


def test_model_checks_on_known_models(model, batch):
    x, y = batch
    clean = model_checks(model, x, y)
    assert clean == {"zero_gradient_share": 0.0, "outputs_probabilities": False, "randomized": False,
                     "optimises_at_inference": False}
    assert model_checks(Softmaxed(model), x, y)["outputs_probabilities"]
    assert model_checks(Rounded(model), x, y)["zero_gradient_share"] == 1.0
    assert model_checks(Noisy(model), x, y)["randomized"]
    assert model_checks(Purified(model), x, y)["optimises_at_inference"]
    assert not model_checks(Purified(model), x, y)["randomized"]


class Purified(nn.Module):
    """An optimisation at inference time: two gradient steps on the input lowering its
    prediction's entropy before classifying it (a test-time "purification" defense)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        z = x.detach().clone()
        for _ in range(2):
            with torch.enable_grad():
                z.requires_grad_(True)
                p = self.inner(z).softmax(1)
                entropy = -(p * p.clamp_min(1e-12).log()).sum()
                (g,) = torch.autograd.grad(entropy, z)
            z = (z - 0.01 * g.sign()).clamp(0, 1).detach()
        return self.inner(z + (x - x.detach()))


def _store(tmp_path, rows, checks=None, provenance=None):
    store = Store(tmp_path / "c.db")
    run = store.start_run("c", "h", {"dataset": {"id": "digits"}}, None, None, 42, 0.0, {})
    store.save_model(run, defense="d", defense_id="standard", defense_kind="training-time", config={},
                     clean_accuracy=1.0, clean_mask="1111", false_positive_rate=None, cache_key=None,
                     train_seconds=0.0, checks=checks or {})
    for attack, knowledge, budget, mask, queries, success in rows:
        store.save_match(run, MatchRow(defense="d", attack=attack, budget=budget, attack_id=attack,
                                       attack_config={}, norm="linf", knowledge=knowledge, status="ok",
                                       robust_accuracy=mask.count("1") / 4, success_rate=success,
                                       robust_mask=mask, mean_queries=queries,
                                       provenance=(provenance or {}).get(attack, {})))
    return store.models(run), store.matches(run)


def _checks(found):
    return sorted({f.check for f in found})


def test_a_sound_evaluation_raises_no_flag(tmp_path):
    rows = [("fgsm", "white-box", 0.1, "1100", 1, 0.5), ("pgd", "white-box", 0.1, "1000", 20, 0.75),
            ("pgd", "white-box", 0.3, "0000", 20, 1.0), ("hsj", "black-box", 0.1, "1000", 500, 0.75)]
    assert flags(*_store(tmp_path, rows)) == []


def test_each_result_pattern_raises_its_flag(tmp_path):
    rows = [("fgsm", "white-box", 0.1, "1000", 1, 0.75),        # single step beats pgd
            ("pgd", "white-box", 0.1, "1100", 20, 0.5),
            ("pgd", "white-box", 0.3, "1110", 20, 0.25),        # accuracy rises with the budget
            ("hsj", "black-box", 0.1, "0100", 500, 0.75),       # breaks example 0, which white-box missed
            ("deepfool", "white-box", math.inf, "1000", 3, 0.75)]  # unbounded but not ~100% success
    found = flags(*_store(tmp_path, rows))
    assert _checks(found) == ["non-monotonic", "single-step-wins", "unbounded-fails", "weaker-access-wins"]
    text = "\n".join(map(str, found))
    assert "hsj (black-box) breaks 1 example at ε=0.1" in text and "suggests" in text


def test_weaker_access_flag_names_a_transfer_attack_as_transfer(tmp_path):
    """A transfer match is stored as black-box (the target is never queried); its flag says
    transfer, as the leaderboard's attack table does."""
    rows = [("pgd", "white-box", 0.1, "1100", 20, 0.5), ("transfer-pgd", "black-box", 0.1, "0100", 0, 0.75)]
    found = flags(*_store(tmp_path, rows, provenance={"transfer-pgd": {"surrogate": "standard"}}))
    assert [f.message for f in found if f.check == "weaker-access-wins"] == [
        "transfer-pgd (transfer) breaks 1 example at ε=0.1 that every white-box attack missed"]


def test_an_unbounded_attack_crafted_on_another_model_raises_no_unbounded_flag(tmp_path):
    """Carlini et al.'s check is for attacks on the judged model: transferred C&W examples from a
    surrogate, or gray-box ones from the base classifier, need not all carry over."""
    rows = [("cw-transfer", "black-box", math.inf, "1100", 0, 0.5), ("cw-gray", "gray-box", math.inf, "1100", 0, 0.5),
            ("hsj", "black-box", math.inf, "1000", 500, 0.75), ("deepfool", "white-box", math.inf, "1000", 3, 0.75)]
    found = flags(*_store(tmp_path, rows, provenance={"cw-transfer": {"surrogate": "resnet"}}))
    assert sorted(f.message.split(":")[0] for f in found if f.check == "unbounded-fails") == ["deepfool", "hsj"]


def test_model_probe_findings_become_flags(tmp_path):
    checks = {"zero_gradient_share": 0.5, "outputs_probabilities": True, "randomized": True,
              "optimises_at_inference": True}
    found = flags(*_store(tmp_path, [("pgd", "white-box", 0.1, "1000", 20, 0.75)], checks))
    assert _checks(found) == ["optimises-at-inference", "probabilities", "randomized-without-eot",
                              "zero-gradients"]
    assert any("eot" in f.suggestion for f in found)


def test_flags_come_in_a_fixed_order(tmp_path):
    """Flags are listed by budget, not in the iteration order of a set of (norm, budget) keys,
    which changes with the process's string-hash seed (leaderboard notes and sites reshuffled)."""
    budgets = [0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    rows = [("pgd", "white-box", b, "1000", 20, 0.75) for b in budgets]
    rows += [("hsj", "black-box", b, "0100", 500, 0.75) for b in budgets]
    found = [f for f in flags(*_store(tmp_path, rows)) if f.check == "weaker-access-wins"]
    assert [f.message.split("at ε=")[1].split(" ")[0] for f in found] == [f"{b:g}" for b in budgets]


def test_flags_do_not_claim_more_than_the_finished_matches_measured(tmp_path):
    """A white-box attack that timed out did not "miss" anything: the flag names it; an adaptive
    attack that failed was run, but did not finish."""
    _store(tmp_path, [("fgsm", "white-box", 0.1, "1100", 1, 0.5), ("hsj", "black-box", 0.1, "0100", 500, 0.75)],
           {"randomized": True})
    store = Store(tmp_path / "c.db")
    for attack, knowledge in (("pgd", "white-box"), ("eot", "adaptive")):
        store.save_match(1, MatchRow(defense="d", attack=attack, budget=0.1, attack_id=attack, attack_config={},
                                     norm="linf", knowledge=knowledge, status="timed-out", error="slow"))
    found = {f.check: f.message for f in flags(store.models(1), store.matches(1))}
    assert found["weaker-access-wins"] == ("hsj (black-box) breaks 1 example at ε=0.1 that every white-box attack "
                                           "that finished missed (not finished: pgd timed-out, eot timed-out)")
    assert found["randomized-without-eot"] == "outputs are randomised and no adaptive attack finished (eot timed-out)"


def _ensemble(square_broke):
    return {"autoattack": {"details": {"components": [
        {"name": "apgd-ce", "attacked": 400, "broken": 100}, {"name": "apgd-t", "attacked": 300, "broken": 5},
        {"name": "fab-t", "attacked": 295, "broken": 0}, {"name": "square", "attacked": 295, "broken": square_broke}]}}}


def test_square_breaking_what_the_white_box_components_left_is_flagged(tmp_path):
    rows = [("autoattack", "white-box", 0.1, "1000", 500, 0.75)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert flags(*_store(tmp_path / "a", rows, provenance=_ensemble(0))) == []
    found = flags(*_store(tmp_path / "b", rows, provenance=_ensemble(3)))
    assert [f.check for f in found] == ["score-based-wins"]
    assert "square broke 3 of 400 samples at ε=0.1" in found[0].message


def test_a_cascade_does_not_compare_conditional_accuracies(tmp_path):
    # pgd ran first on every sample, fgsm after it on the survivors only: its lower accuracy is
    # conditional, not a single-step attack beating an iterative one
    rows = [("pgd", "white-box", 0.1, "1100", 20, 0.5), ("fgsm", "white-box", 0.1, "1000", 1, 0.5)]
    models, matches = _store(tmp_path, rows)
    assert _checks(flags(models, matches)) == ["single-step-wins"]
    assert flags(models, matches, cascade=True) == []


def test_an_eot_ensemble_answers_the_randomised_outputs_flag(tmp_path):
    checks = {"randomized": True}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    rows = [("autoattack", "white-box", 0.1, "1000", 500, 0.75)]
    plain = flags(*_store(tmp_path / "a", rows, checks))
    assert [f.check for f in plain] == ["randomized-without-eot"]
    eot = {"autoattack": {"details": {"components": [], "eot_draws": 20}}}
    assert flags(*_store(tmp_path / "b", rows, checks, provenance=eot)) == []
