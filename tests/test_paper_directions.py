"""The papers' headline directions, tested on their own tournament files (issue 14).

Each test runs a paper's Fashion-MNIST reproduction file (tournaments/papers/) cut down to a
few of its entries, fewer samples and a shorter training (``reduced``), and checks directions
of ``side_by_side.py`` (the statements docs/reproductions.md reports) on the results. The
protocol (the defenses' and attacks' settings) is the file's; only the scale is the test's. A
direction that does not hold at this scale is an ``xfail(strict=True)`` with the measured
figures in its reason. Results are the same from run to run at a given torch thread count
(``make test`` runs one); a direction whose margin is a sample or two at a smaller scale is
given enough samples that it does not flip with the thread count.
"""
from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

PAPERS = Path(__file__).parent.parent / "tournaments" / "papers"
FASHION = Path("/usr/share/datasets/fashion-mnist")
spec = importlib.util.spec_from_file_location("side_by_side", PAPERS / "side_by_side.py")
side = importlib.util.module_from_spec(spec)
sys.modules["side_by_side"] = side
spec.loader.exec_module(side)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")]


def reduced(name: str, *, defenses: list[str], attacks: list[str], samples: int, train_size: int,
            epochs: int | None = None, finetune_epochs: int | None = None,
            params: dict[str, dict[str, Any]] | None = None, metrics: list[str] | None = None) -> dict[str, Any]:
    """The paper's file ``name`` with only the entries named, ``samples`` evaluated samples,
    ``train_size`` training images, ``epochs`` of training and ``finetune_epochs`` of
    post-processing (when given) and ``params`` overriding some entries' params (by entry name)."""
    data = tomllib.loads((PAPERS / name).read_text())  # a fresh dict: edited in place below
    data["samples"] = samples
    data["dataset"].setdefault("params", {})["train_size"] = train_size
    if epochs is not None:
        data.setdefault("training", {})["epochs"] = epochs
    if finetune_epochs is not None:
        data.setdefault("training", {})["finetune_epochs"] = finetune_epochs
    label = lambda e: e.get("name") or e["id"]  # noqa: E731
    data["defenses"] = [e for e in data["defenses"] if label(e) in defenses]
    data["attacks"] = [e for e in data["attacks"] if label(e) in attacks]
    for e in data["attacks"]:
        if e.get("against"):
            e["against"] = [d for d in e["against"] if d in defenses]
    data["metrics"] = [e for e in data.get("metrics", []) if label(e) in (metrics or [])]
    for e in data["metrics"]:
        for key, kept in (("against", defenses), ("attacks", attacks)):
            if e.get(key):
                e[key] = [n for n in e[key] if n in kept]
    for e in data["defenses"] + data["attacks"]:
        if label(e) in (params or {}):
            e["params"] = {**e.get("params", {}), **params[label(e)]}
    return data


def run(data: dict[str, Any], registry, tmp: Path):
    plan = parse_tournament(data, registry, source="reduced")
    store = Store(tmp / "r.db")
    run_id = Runner(plan, store, cache_dir=tmp / "cache", progress=False).run()
    store.close()
    return side.Results(tmp / "r.db", run_id, side.PAPERS[data["name"].split("-")[0]].get("scale"))


def direction(paper: str, text: str):
    return next(d for d in side.PAPERS[paper]["directions"] if d.text == text)


def check(results, d) -> None:
    a, b = results.value(d.left), results.value(d.right)
    assert side.holds(a, d.op, b), f"{d.text}: arena {a} {d.op} {b} (published {d.published[0]} {d.op} {d.published[1]})"


# ----------------------------------------------------------------------------- seed 004

@pytest.fixture(scope="module")
def seed004(tmp_path_factory, registry):
    data = reduced("seed004-learning-masking.toml", defenses=["standard", "dln-fgsm-r1", "nac"],
                   attacks=["fgsm", "fgsm-transfer", "cw"], samples=40, train_size=5000, epochs=3,
                   # C&W cut to 200 steps; D trained for the plugin's 5 epochs (the file's 1 epoch,
                   # a time saving over 2,000 samples, leaves D too weak at 5,000 training images:
                   # transfer and fresh FGSM both 17.5%)
                   params={"cw": {"steps": 200}, "dln-fgsm-r1": {"epochs": 5}})
    return run(data, registry, tmp_path_factory.mktemp("seed004"))


def test_seed004_a_dln_recovers_the_fgsm_examples_it_was_trained_against(seed004):
    """Table 2: D trained on FGSM examples of C_M restores them (88.5% vs 0.72% on MNIST)."""
    check(seed004, direction("seed004", "a DLN trained on FGSM examples of C_M recovers them (transfer)"))


def test_seed004_a_fresh_white_box_fgsm_still_breaks_the_dln(seed004):
    """Table 2: FGSM run again through D breaks C¹ (13.75% vs 88.5%)."""
    check(seed004, direction("seed004", "a fresh white-box FGSM still breaks C¹"))


def test_seed004_nac_resists_cw(seed004):
    """Table 4: logit noise defeats C&W (93.6% vs 0.03%)."""
    check(seed004, direction("seed004", "NAC resists C&W far better than the undefended classifier"))


# ----------------------------------------------------------------------------- seed 000

@pytest.fixture(scope="module")
def seed000(tmp_path_factory, registry):
    # 120 samples: at 40 the C&W direction tied (65.0% vs 65.0% with one torch thread, as in make
    # test; 65.0 vs 62.5 with two: the weights differ with the thread count, and are the same
    # from run to run at a given count). Measured at 120: 64.2 vs 62.5 (one thread), 64.2 vs 61.7
    # (two), 87 s on two cores; at 240: 59.6 vs 57.1 and 58.8 vs 57.9. A margin of 1-2.5 points,
    # where the paper has 75 vs 3: the direction holds at this scale, barely.
    cw = {"steps": 100, "binary_search_steps": 4}  # Table II: 1,000 steps, 9 binary-search steps
    data = reduced("seed000-nsloss-jacobian.toml", defenses=["standard", "combined"],
                   attacks=["cw-l2", "cw-l2-transfer"], samples=120, train_size=5000,
                   params={"cw-l2": cw, "cw-l2-transfer": cw})
    return run(data, registry, tmp_path_factory.mktemp("seed000"))


def test_seed000_combined_beats_the_undefended_model_under_cw(seed000):
    """Table III: combined 75% vs standard 3% under C&W-L2 at ε = 1 (MNIST)."""
    check(seed000, direction("seed000", "combined beats the undefended model under CW-L2 (ε = 1)"))


def test_seed000_transfer_from_the_undefended_model_is_weaker_than_white_box(seed000):
    """Tables III and V: 96% under transferred C&W vs 75% white-box (combined, ε = 1)."""
    check(seed000, direction("seed000", "transfer from the undefended model is weaker than white-box CW-L2 "
                                        "against combined (ε = 1)"))


# ----------------------------------------------------------------------------- seed 001

@pytest.fixture(scope="module")
def seed001(tmp_path_factory, registry):
    # 3,000 images × 2 epochs (the file: 8,000 × 3): GDA's ten copies make its training ~10x a
    # standard one; this cuts the fixture from ~190 s to ~90 s on two cores. Measured (one torch
    # thread, as in make test): clean 78.7% (standard) / 72.0% (gda) on the 150 samples; at
    # 5,000 × 3 (two threads) the same directions held with similar margins (ρ 0.211 vs 0.186,
    # loss sensitivity 0.674 vs 0.721; clean 82.0% / 80.0%).
    data = reduced("seed001-efficient-defenses.toml", defenses=["standard", "gda", "resnet"],
                   attacks=["fgsm-minimal", "fgsm-transfer"], samples=150, train_size=3000, epochs=2,
                   metrics=["robustness", "training-set-distance", "loss-sensitivity"])
    return run(data, registry, tmp_path_factory.mktemp("seed001"))


def test_seed001_gda_raises_the_empirical_robustness(seed001):
    """Table 2: ρ of minimal FGSM 0.440 (GDA+RELU) vs 0.202 (CNN); measured 0.258 vs 0.225."""
    check(seed001, direction("seed001", "GDA+RELU has a higher ρ than the CNN"))


def test_seed001_gda_lowers_the_loss_sensitivity(seed001):
    """Table 3: 0.0244 (GDA+RELU) vs 0.0609 (CNN); measured 0.437 vs 0.465."""
    check(seed001, direction("seed001", "GDA+RELU lowers the loss sensitivity"))


def test_seed001_gda_resists_fgsm_transferred_from_the_resnet(seed001):
    """Table 4: FGSM (ε = 0.1) crafted on the undefended ResNet, 98.5% (GDA+RELU) vs 94.5% (CNN);
    measured 55.3% vs 52.7% (one torch thread) and 56.7% vs 54.0% (two): 4 of the 150 samples."""
    check(seed001, direction("seed001", "GDA+RELU resists transferred FGSM better than the CNN"))


# ----------------------------------------------------------------------------- seed 002

@pytest.fixture(scope="module")
def seed002(tmp_path_factory, registry):
    # 2 post-processing epochs (the file: 3) to save a third of the exact-Jacobian training; at 3
    # epochs every direction below came out the same way (‖J‖_F 4.78 vs 3.86, ρ 0.149 vs 0.173).
    data = reduced("seed002-jacobian-reg.toml",
                   defenses=["no-defense", "no-defense-post", "jacobian", "jacobian-eq4-mean"],
                   attacks=["deepfool"], samples=100, train_size=5000, finetune_epochs=2,
                   metrics=["jacobian-norm", "jacobian-norm-adv", "rho-adv"])
    return run(data, registry, tmp_path_factory.mktemp("seed002"))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "does not reproduce with eq. 4 as printed (the seed002-mnist preset, λ = 0.1, batches of 500, 2 "
    "post-processing epochs): mean ‖J‖_F 4.29 (jacobian, clean accuracy 82%) vs 3.86 (no defense, 79%: "
    "less training) on 100 Fashion-MNIST samples; "
    "λ·√(Σ‖J‖²_F) divided by the batch is about √500 times weaker than next to a batch-mean cross-entropy"))
def test_seed002_jacobian_reg_lowers_the_jacobian_norm(seed002):
    """Table 1: mean ‖J‖_F 0.0315 (Jacobian reg.) vs 0.14 (no defense) on clean inputs."""
    check(seed002, direction("seed002", "Jacobian reg. lowers the clean ‖J‖_F"))


def test_seed002_jacobian_reg_lowers_the_jacobian_norm_over_the_same_post_processing(seed002):
    """Table 1's fall of ‖J‖_F and §4's "a minimal change in the original network's accuracy",
    against the control the paper lacks: the same post-processing without the regulariser.
    Measured: ‖J‖_F 4.29 (jacobian) vs 4.48 (no-defense-post), clean accuracy 82% both. (DeepFool's
    ρ against the same control: 0.1612 vs 0.1603, a difference 100 samples do not resolve; not
    asserted either way.)"""
    value = lambda metric, d: seed002.value(side._m(metric, d))  # noqa: E731
    assert value("jacobian-norm", "jacobian") < value("jacobian-norm", "no-defense-post"), (
        value("jacobian-norm", "jacobian"), value("jacobian-norm", "no-defense-post"))
    clean = seed002.value(("clean", "jacobian")), seed002.value(("clean", "no-defense-post"))
    assert abs(clean[0] - clean[1]) <= 2, clean


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "does not reproduce with eq. 4 as printed: DeepFool's ρ 0.161 (jacobian) vs 0.173 (no defense) on 100 "
    "Fashion-MNIST samples (same settings as the Jacobian-norm test)"))
def test_seed002_jacobian_reg_raises_deepfools_rho(seed002):
    """Table 3: ρ_adv 34.24 vs 20.67 (×10⁻²)."""
    check(seed002, direction("seed002", "Jacobian reg. raises DeepFool's ρ_adv over no defense"))


def test_seed002_eq4_with_the_mean_cross_entropy_lowers_the_jacobian_norm(seed002):
    """Table 1's 4.4-fold drop of ‖J‖_F, with the other reading of eq. 4 (CE averaged)."""
    check(seed002, direction("seed002", "eq. 4 with the cross-entropy averaged (not the printed form) lowers "
                                        "the clean ‖J‖_F"))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "does not reproduce: with the CE averaged the penalty cuts ‖J‖_F sixfold (0.622 vs 3.86) but costs "
    "clean accuracy (74% vs 79% on the 100 samples) and DeepFool's ρ falls, 0.154 vs 0.173"))
def test_seed002_eq4_with_the_mean_cross_entropy_raises_deepfools_rho(seed002):
    """Table 3's rise of ρ_adv, with the other reading of eq. 4 (CE averaged)."""
    check(seed002, direction("seed002", "eq. 4 with the cross-entropy averaged raises DeepFool's ρ_adv over "
                                        "no defense"))


# ----------------------------------------------------------------------------- seed 003

@pytest.fixture(scope="module")
def seed003(tmp_path_factory, registry):
    data = reduced("seed003-pdm.toml", defenses=["baseline", "pdm", "baseline-kde", "pdm-kde"], attacks=["fgsm"],
                   samples=100, train_size=10000, metrics=["detection-auc", "davies-bouldin"])
    for a in data["attacks"]:
        a["budgets"] = [0.1]
    return run(data, registry, tmp_path_factory.mktemp("seed003"))


def test_seed003_pdm_tightens_the_embedding(seed003):
    """Figure 2: PDM's combined loss gives the lowest Davies–Bouldin index (0.23)."""
    check(seed003, direction("seed003", "PDM's embedding has a lower Davies–Bouldin index than the baseline's "
                                        "(Figure 2, CIFAR-10; the baseline's value is not legible)"))


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "does not reproduce at this scale: clean accuracy 83.0% (pdm) vs 88.0% (baseline) on the 100 samples, "
    "at one and at two torch threads (the file's run: 80.0 vs 85.0 of 20); 10 epochs over 10,000 "
    "Fashion-MNIST images, where the paper trains 80 epochs over 60,000 MNIST ones"))
def test_seed003_pdm_keeps_the_clean_accuracy(seed003):
    """Table 1: clean accuracy 99.52% (PDM) vs 99.33% (CE)."""
    check(seed003, direction("seed003", "PDM's clean accuracy is at least CE's"))


def test_seed003_pdm_detects_gray_box_fgsm_as_well_as_the_baseline(seed003):
    """Table 2: detection AUC 0.995 (PDM) vs 0.988 (baseline) for FGSM-0.1 (MNIST)."""
    check(seed003, direction("seed003", "PDM detects gray-box FGSM-0.1 at least as well as the baseline"))
