"""Metric plugins in a tournament (issue 14): a file asks for metrics, the runner measures them
per model and per match, the store keeps them with provenance, and the leaderboard and the site
show them; a faulty metric fails its own row only."""
from __future__ import annotations

import json
import math
import types
from typing import ClassVar

import pytest
import torch

import arena
from arena import metrics as m
from arena.leaderboard import tables
from arena.leaderboard.site import publish
from arena.metric import Metric, Scope
from arena.tournament.executors import InlineExecutor
from arena.tournament.plan import load_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

FILE = """
name = "metrics"
dataset = "digits"
architecture = "digits-cnn"
seed = 42
samples = 48
save_examples = true

[training]
epochs = 4
lr = 0.003

[[defenses]]
id = "standard"

[[defenses]]
id = "kde"
on = "standard"
params = {{ per_class = 40 }}

[[attacks]]
name = "fgsm-linf"
id = "fgsm"
budgets = [0.3]

[[attacks]]
id = "deepfool"
params = {{ norm = "l2" }}

[[metrics]]
id = "jacobian-norm"

[[metrics]]
id = "loss-sensitivity"

[[metrics]]
id = "davies-bouldin"

[[metrics]]
id = "empirical-robustness"
attacks = ["deepfool"]

[[metrics]]
id = "training-set-distance"
attacks = ["fgsm-linf"]

[[metrics]]
id = "detection-auc"
attacks = ["fgsm-linf"]

[[metrics]]
id = "distortion"
attacks = ["deepfool"]

[[metrics]]
id = "exploitable-robustness"

{extra}
"""


class Explodes(Metric):
    """Test metric that always raises."""

    id: ClassVar[str] = "explodes"
    scope: ClassVar[Scope] = Scope.MATCH

    def measure(self, inputs):
        raise RuntimeError("kaboom")


class NotANumber(Metric):
    """Test metric that returns NaN."""

    id: ClassVar[str] = "not-a-number"

    def measure(self, inputs):
        return math.nan


class RowCount(Metric):
    """Test metric (a third-party plugin): the number of attacked rows that broke the model."""

    id: ClassVar[str] = "broken-rows"
    scope: ClassVar[Scope] = Scope.MATCH
    better: ClassVar[str | None] = "lower"

    def measure(self, inputs):
        return float(inputs.broken.sum())


test_metrics = types.ModuleType("test_metrics")
test_metrics.arena_register_metrics = arena.hookimpl(
    lambda register: (register(Explodes), register(NotANumber), register(RowCount)))
EXTRA = '[[metrics]]\nid = "explodes"\n\n[[metrics]]\nid = "not-a-number"\n\n[[metrics]]\nid = "broken-rows"'


@pytest.fixture(scope="module")
def reg():
    return arena.load_plugins(extra=[("test-metrics", test_metrics)])


@pytest.fixture(scope="module")
def done(tmp_path_factory, reg):
    tmp = tmp_path_factory.mktemp("metrics")
    path = tmp / "metrics.toml"
    path.write_text(FILE.format(extra=EXTRA))
    store = Store(tmp / "r.db")
    runner = Runner(load_tournament(path, reg), store, cache_dir=tmp / "cache", progress=False,
                    executor=InlineExecutor())
    run_id = runner.run()
    return tmp, store, run_id, runner


def _values(store, run_id):
    return {(v.metric, v.defense, v.attack, v.budget): v for v in store.metrics(run_id)}


def test_model_metrics_are_measured_on_the_evaluated_clean_samples(done):
    _, store, run_id, runner = done
    values = _values(store, run_id)
    entrant = runner.entrants["standard"]
    x, y = runner.eval.x, runner.eval.y
    jac = values[("jacobian-norm", "standard", "", 0.0)]
    assert jac.ok and jac.scope == "model"
    assert jac.value == pytest.approx(m.mean_jacobian_frobenius(entrant.model, x), rel=1e-5)
    sens = values[("loss-sensitivity", "standard", "", 0.0)]
    assert sens.value == pytest.approx(m.loss_sensitivity(entrant.model, x, y), rel=1e-5)
    with torch.no_grad():
        z = entrant.model.features(x).flatten(1)
    assert values[("davies-bouldin", "standard", "", 0.0)].value == pytest.approx(m.davies_bouldin(z, y), rel=1e-6)
    assert jac.provenance["samples"] == len(x) and "adversarial-arena" in jac.provenance["metric_plugin"]
    assert jac.provenance["better"] == "lower"


def test_match_metrics_are_measured_on_the_matchs_examples(done):
    tmp, store, run_id, runner = done
    values = _values(store, run_id)
    examples = torch.load(store.examples_dir(run_id) / "standard__deepfool.pt")
    rows = examples["index"]
    x = runner.eval.x[rows]
    with torch.no_grad():
        fooled = runner.entrants["standard"].model(examples["min"]).argmax(1) != runner.eval.y[rows]
    rho = values[("empirical-robustness", "standard", "deepfool", math.inf)]
    assert rho.ok and rho.scope == "match"
    assert rho.value == pytest.approx(m.empirical_robustness(x, examples["min"], fooled), rel=1e-5)
    d = ((examples["min"] - x)[fooled].flatten(1).norm(dim=1) / math.sqrt(x[0].numel())).mean()
    assert values[("distortion", "standard", "deepfool", math.inf)].value == pytest.approx(float(d), rel=1e-5)
    # only where asked: empirical robustness on deepfool only
    assert ("empirical-robustness", "standard", "fgsm-linf", 0.3) not in values
    # a larger perturbation lies farther from the training set
    far = values[("training-set-distance", "standard", "fgsm-linf", 0.3)]
    assert far.ok and far.value > 1.0


def test_exploitable_robustness_is_the_robust_accuracy(done):
    """Seed 004 §2: robustness as 1 − P(exploitable space) is never above accuracy, and read from
    an attack it is exactly the robust accuracy."""
    _, store, run_id, _ = done
    values = _values(store, run_id)
    for match in store.matches(run_id):
        if match.ok:
            v = values[("exploitable-robustness", match.defense, match.attack, match.budget)]
            assert v.value == pytest.approx(match.robust_accuracy)


def test_detection_auc_applies_to_detectors_only(done):
    _, store, run_id, _ = done
    values = _values(store, run_id)
    auc = values[("detection-auc", "kde", "fgsm-linf", 0.3)]
    assert auc.ok and 0.7 < auc.value <= 1.0  # KDE tells ε = 0.3 FGSM examples from clean digits
    na = values[("detection-auc", "standard", "fgsm-linf", 0.3)]
    assert na.status == "n/a" and na.value is None and "not a detector" in na.error


def test_a_faulty_metric_fails_its_own_row_only(done):
    _, store, run_id, _ = done
    values = _values(store, run_id)
    assert all(match.ok for match in store.matches(run_id))
    boom = values[("explodes", "standard", "fgsm-linf", 0.3)]
    assert boom.status == "failed" and "kaboom" in boom.error and boom.value is None
    nan = values[("not-a-number", "standard", "", 0.0)]
    assert nan.status == "failed" and "nan" in nan.error
    third = values[("broken-rows", "standard", "deepfool", math.inf)]  # deepfool breaks every sample it attacks
    standard = next(r for r in store.models(run_id) if r.defense == "standard")
    assert third.ok and third.value == sum(standard.clean_mask)


def test_the_leaderboard_shows_the_metrics(done):
    tmp, store, run_id, _ = done
    board = tables.build(store, run_id)
    text = board.render("table")
    assert "metrics per model:" in text and "jacobian-norm (↓)" in text
    assert "detection-auc (↑) per match:" in text and "n/a" in text
    assert any(n.startswith("metric explodes on fgsm-linf vs standard") and "kaboom" in n for n in board.notes)
    data = json.loads(board.render("json"))
    rho = [r for r in data["metrics"] if r["metric"] == "empirical-robustness" and r["defense"] == "kde"]
    assert rho and rho[0]["budget"] == "inf" and rho[0]["status"] == "ok"
    for fmt in ("markdown", "latex", "html"):
        assert "metrics per model" in board.render(fmt)
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(board.render("csv"))))
    auc = [r for r in rows if r["kind"] == "metric" and r["metric"] == "detection-auc" and r["defense"] == "kde"]
    assert auc and 0.7 < float(auc[0]["value"]) <= 1 and auc[0]["attack"] == "fgsm-linf"
    assert all(r["metric"] == "" for r in rows if r["kind"] == "match")
    index = publish(store, run_id, tmp / "site")
    html = index.read_text()
    assert "<h2 id=\"metrics\">Metrics</h2>" in html and "not a detector" in html
    page = (tmp / "site" / "defenses" / "standard.html").read_text()
    assert "<h2>Metrics</h2>" in page and "jacobian-norm" in page


BAD = [
    ('[[metrics]]\nid = "jacobain-norm"', "metrics[8].id: unknown metric 'jacobain-norm' (did you mean 'jacobian-norm'?)"),
    ('[[metrics]]\nid = "distortion"\nname = "d2"\nattacks = ["pgd"]', "metrics[8].attacks: no attack named 'pgd'"),
    ('[[metrics]]\nid = "jacobian-norm"\nname = "j2"\nattacks = ["deepfool"]',
     "metrics[8].attacks: 'jacobian-norm' is measured per model, not per match"),
    ('[[metrics]]\nid = "jacobian-norm"\nname = "j2"\nparams = { on = "both" }', "metrics[8].params"),
    ('[[metrics]]\nid = "jacobian-norm"', "have the same name 'jacobian-norm'"),
]


@pytest.mark.parametrize("extra,message", BAD)
def test_bad_metric_entries_are_one_line_errors(tmp_path, reg, extra, message):
    path = tmp_path / "bad.toml"
    path.write_text(FILE.format(extra=extra))
    with pytest.raises(arena.ConfigError) as err:
        load_tournament(path, reg)
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_file_without_metrics_keeps_its_digest(reg, tmp_path):
    """Older runs of a file resume: the metrics field adds nothing to the hash when empty."""
    import hashlib

    path = tmp_path / "plain.toml"
    path.write_text(FILE.format(extra="").split("[[metrics]]")[0])
    cfg = load_tournament(path, reg).config
    data = cfg.model_dump(mode="json")
    # the file as the schema before metrics dumped it: without the keys added since, at defaults
    for key in ("metrics", "rank_by", "shards", "speed"):
        del data[key]
    del data["resources"]["attacks"]
    for entry in data["defenses"]:
        del entry["paper"]
    assert cfg.digest() == hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def test_a_match_that_attacked_nothing_gets_n_a_rows(reg):
    """Every match metric on a match with no attacked row (an entrant that classifies no sample
    correctly) is n/a with the reason, not a failure inside the metric."""
    from arena.metric import MatchInputs, evaluate
    from arena.threat import Norm

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    model(torch.zeros(1, 1, 8, 8))
    empty = torch.zeros(0, 1, 8, 8)
    inputs = MatchInputs("d", model, model, object(), torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long),
                         torch.zeros(4, dtype=torch.bool), None, torch.device("cpu"), attack="a", norm=Norm.L2,
                         budget=1.0, x_rows=empty, y_rows=torch.zeros(0, dtype=torch.long), x_adv=empty,
                         broken=torch.zeros(0, dtype=torch.bool), distance=torch.zeros(0), targets=None,
                         row_sample=torch.zeros(0, dtype=torch.long))
    for metric_id, cls in reg.metrics.items():
        if cls.scope is Scope.MATCH:
            outcome = evaluate(reg.make_metric(metric_id), inputs)
            assert outcome["status"] == "n/a" and "attacked no sample" in outcome["error"], metric_id


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]], ids=["one-class", "one-sample-per-class"])
def test_davies_bouldin_is_n_a_where_the_index_is_undefined(reg, labels):
    """The index needs at least two classes and more samples than classes (sklearn raised a
    ValueError on 4 samples of 4 classes: seen at toy scale, a failed row instead of n/a)."""
    from arena.metric import ModelInputs, evaluate

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))

        def features(self, x):
            return self.body(x)

        def forward(self, x):
            return self.body(x)

    net = Net()
    y = torch.tensor(labels)
    inputs = ModelInputs("d", net, net, None, torch.rand(4, 1, 8, 8), y, torch.ones(4, dtype=torch.bool), None,
                         torch.device("cpu"))
    outcome = evaluate(reg.make_metric("davies-bouldin"), inputs)
    assert outcome["status"] == "n/a" and "Davies–Bouldin" in outcome["error"]
    inputs.y = torch.tensor([0, 0, 1, 1])
    assert evaluate(reg.make_metric("davies-bouldin"), inputs)["status"] == "ok"
