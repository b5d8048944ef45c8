"""The Python API: ``arena.evaluate`` runs through the tournament's harness and store, and
``arena.Tournament`` is ``arena run`` / ``arena leaderboard`` from Python."""
from __future__ import annotations

import json
import subprocess
import sys
import types
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

import arena
from arena import testing
from arena.attack import FixedBudgetAttack
from arena.errors import ConfigError
from arena.leaderboard import tables
from arena.threat import within
from arena.tournament.store import Store

BUDGETS = [0.1, 0.2]
PGD = {"id": "pgd", "params": {"steps": 5}}
MEAN, STD = [0.3], [0.4]


@pytest.fixture(scope="module")
def samples():
    test = testing.digits().test
    return test.x[:40].clone(), test.y[:40].clone()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, samples):
    """FGSM and PGD at two budgets against the small digits CNN, into a kept database."""
    db = tmp_path_factory.mktemp("api") / "eval.db"
    model = testing.trained_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = arena.evaluate(model, *samples, attacks=["fgsm", PGD], budgets=BUDGETS, db=db, name="cnn")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model given is untouched
    return result, db


def test_evaluate_reads_what_the_store_holds(evaluated, samples):
    result, db = evaluated
    x, y = samples
    store = Store(db, readonly=True)
    run = store.run(result.run_id)
    assert run.status == "finished" and run.dataset == "tensors" and result.db == str(db)
    (model_row,) = store.models(result.run_id)
    rows = {(m.attack, m.budget): m for m in store.matches(result.run_id)}
    assert set(rows) == {(a, b) for a in ("fgsm", "pgd") for b in BUDGETS}
    assert result.samples == 40 and all(len(m.robust_mask) == 40 for m in rows.values())
    with torch.no_grad():  # clean accuracy over every given sample
        expected = float((testing.trained_model()(x).argmax(1) == y).float().mean())
    assert result.clean_accuracy == model_row.clean_accuracy == pytest.approx(expected)
    assert result.robust_accuracy == {a: {b: rows[(a, b)].robust_accuracy for b in BUDGETS} for a in ("fgsm", "pgd")}
    assert result.status == {"fgsm": "ok", "pgd": "ok"} and result.complete and not result.incomplete
    board = tables.build(store, result.run_id)
    assert result.leaderboard().render("json") == board.render("json")
    for b in BUDGETS:
        at_b = [m for m in rows.values() if m.budget == b]
        worst = result.worst_case["linf"][b]
        assert worst == tables.worst_case(model_row, at_b)
        assert worst == next(w["robust_accuracy"] for w in board.worst_cases if w["budget"] == b)
        assert all(worst <= m.robust_accuracy for m in at_b)  # the per-example worst case
        both = [c and f and p for c, f, p in zip(model_row.clean_mask, rows[("fgsm", b)].robust_mask,
                                                rows[("pgd", b)].robust_mask)]
        assert worst == sum(both) / 40
        for m in at_b:  # the stored distance respects the budget
            assert m.mean_distance is None or bool(within(torch.tensor(m.mean_distance), b))
            assert result.attacks[m.attack].mean_distance[b] == m.mean_distance
    store.close()


def test_evaluate_scores_as_the_harness_does(evaluated, samples):
    """FGSM (deterministic) called by hand on the correctly classified samples gives the same
    robust accuracy: the samples, the model and the judging are those given."""
    result, _ = evaluated
    x, y = samples
    model = testing.trained_model()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    fgsm = testing.registry().make_attack("fgsm")
    for b in BUDGETS:
        out = fgsm(model, x[correct], y[correct], b, seed=42)
        assert result.robust_accuracy["fgsm"][b] == pytest.approx(float((~out.success).sum()) / 40)


def test_json_round_trips_and_markdown_shows_the_numbers(evaluated):
    result, _ = evaluated
    text = result.to_json()
    assert json.loads(text) == result.to_dict()
    again = arena.Evaluation.from_json(text)
    assert again == result and again.worst_case["linf"][0.1] == result.worst_case["linf"][0.1]
    assert again.leaderboard().render("json") == result.leaderboard().render("json")  # read again from db
    md = result.to_markdown()
    assert "fgsm" in md and "pgd" in md and "worst case" in md and "cnn" in md
    for label, by_budget in result.robust_accuracy.items():
        for acc in by_budget.values():
            assert f"{100 * acc:.1f}" in md
    assert f"clean accuracy: {100 * result.clean_accuracy:.1f}" in md


class Explodes(FixedBudgetAttack):
    """Test attack that always raises."""

    id: ClassVar[str] = "explodes"

    def run(self, model, x, y, eps, targets):
        raise RuntimeError("kaboom")


def test_a_failed_attack_is_surfaced_not_complete(samples):
    module = types.ModuleType("api_test_plugins")
    module.arena_register_attacks = arena.hookimpl(lambda register: register(Explodes))
    reg = arena.load_plugins(extra=[("api-test-plugins", module)])
    result = arena.evaluate(testing.trained_model(), *samples, attacks=["fgsm", "explodes"], budgets=[0.1],
                            registry=reg)
    assert result.db is None  # a temporary database, gone; the leaderboard was kept
    assert result.status == {"fgsm": "ok", "explodes": "failed"} and not result.complete
    assert result.errors == {"explodes": {0.1: "RuntimeError: kaboom"}}
    assert result.robust_accuracy["explodes"] == {0.1: None}
    assert result.incomplete == [{"norm": "linf", "budget": 0.1,
                                  "missing": [{"attack": "explodes", "status": "failed"}]}]
    assert result.worst_case["linf"][0.1] == pytest.approx(result.robust_accuracy["fgsm"][0.1])  # upper bound, marked
    linf = next(s for s in result.leaderboard().sections if s.norm.lower().replace("∞", "inf") == "linf")
    assert linf.marks and not json.loads(result.to_json())["complete"]
    assert "incomplete" in result.to_markdown() and "kaboom" in result.to_markdown()


class OnNormalised(nn.Module):
    """A network that expects normalised inputs: the digits CNN behind the inverse normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.net = testing.trained_model()

    def forward(self, z):
        return self.net(z * STD[0] + MEAN[0])


def test_normalize_puts_the_normalisation_in_front(samples):
    x, y = samples
    model = OnNormalised().eval()
    result = arena.evaluate(model, x, y, attacks=["fgsm"], budgets=[0.1], normalize={"mean": MEAN, "std": STD})
    with torch.no_grad():
        expected = float((model((x - MEAN[0]) / STD[0]).argmax(1) == y).float().mean())
    assert result.clean_accuracy == pytest.approx(expected)
    assert expected > 0.8  # and the model does classify the normalised inputs


def test_numpy_inputs_are_accepted(samples):
    x, y = samples
    result = arena.evaluate(testing.trained_model(), x[:20].numpy().astype(np.float64), y[:20].numpy(),
                            attacks=[{"id": "fgsm", "name": "fgsm-0.1", "budgets": [0.1]}])
    assert list(result.robust_accuracy) == ["fgsm-0.1"] and result.samples == 20


def _bad(samples):
    x, y = samples
    return [
        ("x must have shape (N, C, H, W)", dict(x=x[:, 0])),
        ("x must lie in [0, 1]", dict(x=x * 2)),
        ("x must hold floating-point images", dict(x=(x * 255).to(torch.uint8))),
        ("x has 40 samples but y has 39 labels", dict(y=y[:39])),
        ("label 10 is out of range for 10 classes", dict(y=torch.cat([y[:-1], torch.tensor([10])]))),
        ("unknown attack 'pgdd' (did you mean 'pgd'?)", dict(attacks=["pgdd"])),
        ("fixed-budget attack 'pgd' needs at least one budget", dict(attacks=["pgd"], budgets=None)),
        ("num_classes is 9 but the model returns 10 logits", dict(num_classes=9)),
        ("normalize.mean has 3 value(s) for images of 1 channel(s)",
         dict(normalize={"mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]})),
        ("unknown executor 'locl' (did you mean 'local'?)", dict(executor="locl")),
    ]


def test_input_mistakes_are_one_line_config_errors(samples):
    model = testing.trained_model()
    for message, change in _bad(samples):
        args = {"x": samples[0], "y": samples[1], "attacks": ["fgsm"], "budgets": [0.1], **change}
        with pytest.raises(ConfigError) as info:
            arena.evaluate(model, args.pop("x"), args.pop("y"), **args)
        text = str(info.value)
        assert message in text and "\n" not in text and text.startswith("arena.evaluate: "), text


def test_local_executor_runs_the_model_in_worker_processes(samples):
    """The digits CNN's class is importable (a built-in architecture), so it goes to workers."""
    x, y = samples
    model = testing.trained_model()
    kwargs = dict(attacks=["fgsm"], budgets=[0.1], name="cnn")
    local = arena.evaluate(model, x[:20], y[:20], executor="local", **kwargs)
    inline = arena.evaluate(model, x[:20], y[:20], **kwargs)
    assert local.robust_accuracy == inline.robust_accuracy and local.clean_accuracy == inline.clean_accuracy
    assert local.worst_case == inline.worst_case and local.complete

    class NotImportable(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]

    with pytest.raises(ConfigError, match="use executor='inline'") as info:
        arena.evaluate(NotImportable(), x, y, executor="local", **kwargs)
    assert "\n" not in str(info.value)


TINY = """
name = "tiny-api"
dataset = "digits"
architecture = "digits-cnn"
samples = 20

[training]
epochs = 1

[[defenses]]
id = "standard"

[[attacks]]
id = "fgsm"
budgets = [0.1]
"""


def test_tournament_from_toml_runs_and_leaderboard_equals_the_cli(tmp_path):
    from click.testing import CliRunner

    from arena.cli import cli

    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    tournament = arena.Tournament.from_toml(path)
    assert [d.label for d in tournament.plan.defenses] == ["standard"]
    assert tournament.default_db().name == "tiny.db"
    db = tmp_path / "tiny.db"
    result = tournament.run(db=db, executor="inline", cache_dir=tmp_path / "cache")
    assert result.run_id == 1 and result.complete
    stored = Store(db, readonly=True)
    assert stored.run(1).source == str(path) and stored.run(1).source_text == TINY
    stored.close()
    for fmt, rendered in (("json", result.to_json()), ("markdown", result.to_markdown())):
        printed = CliRunner().invoke(cli, ["leaderboard", str(db), "--format", fmt])
        assert printed.exit_code == 0 and printed.output == rendered + "\n"
    import tomllib

    same = arena.Tournament.from_dict(tomllib.loads(TINY))
    assert same.plan.digest() == tournament.plan.digest()
    with pytest.raises(ConfigError, match="did you mean 'fgsm'"):
        arena.Tournament.from_dict({**tomllib.loads(TINY), "attacks": [{"id": "fgsn", "budgets": [0.1]}]})


def test_import_arena_stays_light():
    code = "import sys, arena; print('arena.api' in sys.modules, 'torch' in sys.modules, 'evaluate' in dir(arena))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "True"]  # the Python API is imported on first access only
    assert arena.evaluate is arena.api.evaluate and arena.Tournament is arena.api.Tournament
