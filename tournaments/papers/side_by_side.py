"""The papers' headline tables next to the arena's figures, read from a results database.

    python tournaments/papers/side_by_side.py seed003 results/seed003-pdm.db [--run N]

prints, for the paper (``seed000`` … ``seed004``; ``seed000-targeted``, ``seed001-cw`` and
``seed004-eot`` for the targeted half of seed 000's Table III, seed 001's C&W column of Table 4
and seed 004's Table 5, which have files of their own), each
headline table with the published value and the arena's next to each other (``published /
arena``), then each headline direction the paper claims with its published figures, the arena's,
and whether it reproduces. The
directions are the statements docs/reproductions.md discusses; the mapping from a published
cell to the tournament file's entries is written out below, next to the numbers, so that a
reader can check it against the paper.

A cell is one of:

* ``("clean", defense)``: the clean accuracy of an entry (%);
* ``("acc", defense, attack, budget)``: the robust accuracy of a match (%);
* ``("instance", defense, attack, budget)``: for a targeted match, the accuracy over its
  (sample, target) attack instances as a paper that counts instances reports it, estimated as
  clean accuracy × (1 − the share of instances that reach their target) (%): an instance that
  misses its target but lands on a third class counts as correct here;
* ``("metric", metric, defense, attack, budget)``: a metric's value (``attack`` "" and
  ``budget`` 0 for a model metric).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INF = math.inf
Cell = tuple


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[tuple[str, list[tuple[float | None, Cell | None]]]]  # (label, [(published, cell)])


@dataclass
class Direction:
    text: str
    left: Cell
    op: str  # ">" or "<" (or ">=" / "<=")
    right: Cell
    published: tuple[float | None, float | None]  # None: not legible in the paper


def _acc(d: str, a: str, b: float) -> Cell:
    return ("acc", d, a, b)


def _m(metric: str, d: str, a: str = "", b: float = 0.0) -> Cell:
    return ("metric", metric, d, a, b)


# ----------------------------------------------------------------------------- seed 000
S000_COLS = ["standard", "jacobian-reg", "ns-loss", "combined"]
S000_T3 = {  # Table III (MNIST), robust accuracy % at L2 ε = 1 | 5, columns as S000_COLS
    "CW-L2": [(3, 1), (27, 4), (11, 11), (75, 10)], "CW-L2 high confidence": [(17, 1), (94, 4), (95, 34), (96, 69)],
    "CW-L2 strong": [(2, 1), (26, 4), (11, 11), (73, 10)], "PGD-L2": [(58, 29), (55, 3), (35, 9), (84, 31)],
    "HopSkipJump": [(71, 69), (93, 78), (56, 49), (97, 89)]}
S000_T5 = {  # Table V (MNIST), transfer from the undefended model, ε = 1 | 5: jacobian-reg, ns-loss, combined
    "CW-L2": [(95, 95), (87, 87), (96, 96)], "CW-L2 high confidence": [(94, 94), (81, 79), (96, 96)],
    "CW-L2 strong": [(95, 95), (90, 90), (96, 96)], "PGD-L2": [(93, 86), (81, 44), (95, 84)]}
S000_ATTACK = {"CW-L2": "cw-l2", "CW-L2 high confidence": "cw-l2-hc", "CW-L2 strong": "cw-l2-strong",
               "PGD-L2": "pgd-l2", "HopSkipJump": "hopskipjump"}


def _s000(d: str, row: str, b: float) -> Cell:
    """The white-box match of a Table III cell; the undefended column reads the transfer entry,
    which crafts on `standard` itself (the file runs the white-box attacks against the defenses
    only), except for HopSkipJump, which the file runs against every entry."""
    attack = S000_ATTACK[row]
    if d == "standard" and attack != "hopskipjump":
        attack += "-transfer"
    return _acc(d, attack, b)


SEED000 = {
    "tables": [
        Table("Table III (MNIST): adversarial test accuracy (%), untargeted (HopSkipJump: see the note), L2 ε = 1 | 5",
              [f"{d} ε={b:g}" for d in S000_COLS for b in (1, 5)],
              [(row, [(pub, _s000(d, row, b)) for d, pair in zip(S000_COLS, S000_T3[row]) for pub, b in zip(pair, (1.0, 5.0))])
               for row in S000_T3]),
        Table("Table V (MNIST): transfer from the undefended model (%), untargeted, L2 ε = 1 | 5",
              [f"{d} ε={b:g}" for d in S000_COLS[1:] for b in (1, 5)],
              [(row, [(pub, _acc(d, S000_ATTACK[row] + "-transfer", b)) for d, pair in zip(S000_COLS[1:], S000_T5[row])
                      for pub, b in zip(pair, (1.0, 5.0))]) for row in S000_T5]),
        Table("Table I (MNIST): clean accuracy (%)", S000_COLS,
              [("clean", [(99.25, ("clean", "standard")), (94.95, ("clean", "jacobian-reg")),
                          (95.65, ("clean", "ns-loss")), (96.22, ("clean", "combined"))])]),
    ],
    "directions": [
        Direction("combined beats the undefended model under CW-L2 (ε = 1)", _s000("combined", "CW-L2", 1.0), ">",
                  _s000("standard", "CW-L2", 1.0), (75, 3)),
        Direction("ns-loss beats the undefended model under CW-L2 (ε = 1)", _s000("ns-loss", "CW-L2", 1.0), ">",
                  _s000("standard", "CW-L2", 1.0), (11, 3)),
        Direction("jacobian-reg beats the undefended model under HopSkipJump (ε = 5)",
                  _s000("jacobian-reg", "HopSkipJump", 5.0), ">", _s000("standard", "HopSkipJump", 5.0), (78, 69)),
        Direction("combined beats the undefended model under HopSkipJump (ε = 5)",
                  _s000("combined", "HopSkipJump", 5.0), ">", _s000("standard", "HopSkipJump", 5.0), (89, 69)),
        Direction("combined beats jacobian-reg under CW-L2 (ε = 1)", _s000("combined", "CW-L2", 1.0), ">",
                  _s000("jacobian-reg", "CW-L2", 1.0), (75, 27)),
        Direction("transfer from the undefended model is weaker than white-box CW-L2 against combined (ε = 1)",
                  _acc("combined", "cw-l2-transfer", 1.0), ">", _s000("combined", "CW-L2", 1.0), (96, 75)),
        Direction("ns-loss is weaker than jacobian-reg against transferred PGD-L2 (ε = 5)",
                  _acc("ns-loss", "pgd-l2-transfer", 5.0), "<", _acc("jacobian-reg", "pgd-l2-transfer", 5.0), (44, 86)),
    ],
}

S000_T3_TARGETED = {  # Table III (MNIST), targeted rows, ε = 1 | 5, columns as S000_COLS
    "CW-L2": [(17, 4), (54, 33), (64, 0), (94, 60)], "CW-L2 high confidence": [(48, 8), (97, 5), (97, 51), (99, 78)],
    "CW-L2 strong": [(9, 1), (64, 0), (48, 26), (94, 52)], "PGD-L2": [(53, 6), (80, 0), (37, 11), (88, 16)],
    "HopSkipJump": [(71, 69), (93, 78), (56, 49), (97, 89)]}


def _s000t(kind: str, d: str, row: str, b: float) -> Cell:
    """A targeted Table III cell: the targeted file runs every attack against every entry."""
    return (kind, d, S000_ATTACK[row] + "-t", b)


SEED000_TARGETED = {
    "tables": [
        Table("Table III (MNIST), targeted rows: adversarial test accuracy over the (sample, target) instances (%), "
              "the arena's estimated as clean × (1 − targets reached), L2 ε = 1 | 5",
              [f"{d} ε={b:g}" for d in S000_COLS for b in (1, 5)],
              [(row, [(pub, _s000t("instance", d, row, b)) for d, pair in zip(S000_COLS, S000_T3_TARGETED[row])
                      for pub, b in zip(pair, (1.0, 5.0))]) for row in S000_T3_TARGETED]),
        Table("The same matches as the arena scores them: robust accuracy (%), a sample broken when any of its "
              "9 targeted examples is misclassified (a lower bound on the row above)",
              [f"{d} ε={b:g}" for d in S000_COLS for b in (1, 5)],
              [(row, [(pub, _s000t("acc", d, row, b)) for d, pair in zip(S000_COLS, S000_T3_TARGETED[row])
                      for pub, b in zip(pair, (1.0, 5.0))]) for row in S000_T3_TARGETED]),
        Table("Fig. 1a (CIFAR-10 in the paper): C&W-L2 targeted with restarts against the combination, per instance (%)",
              ["ε=1", "ε=5"],
              [("CW-L2", [(None, ("instance", "combined", "cw-l2-t", b)) for b in (1.0, 5.0)]),
               ("CW-L2 with 10 restarts", [(None, ("instance", "combined", "cw-restarts-t", b)) for b in (1.0, 5.0)])]),
    ],
    "directions": [
        Direction("combined beats the undefended model under targeted CW-L2 (ε = 1)",
                  _s000t("instance", "combined", "CW-L2", 1.0), ">", _s000t("instance", "standard", "CW-L2", 1.0), (94, 17)),
        Direction("jacobian-reg beats the undefended model under targeted CW-L2 (ε = 5)",
                  _s000t("instance", "jacobian-reg", "CW-L2", 5.0), ">", _s000t("instance", "standard", "CW-L2", 5.0),
                  (33, 4)),
        Direction("combined beats the undefended model under targeted CW-L2 high confidence (ε = 5)",
                  _s000t("instance", "combined", "CW-L2 high confidence", 5.0), ">",
                  _s000t("instance", "standard", "CW-L2 high confidence", 5.0), (78, 8)),
        Direction("ns-loss beats the undefended model under targeted CW-L2 high confidence (ε = 5)",
                  _s000t("instance", "ns-loss", "CW-L2 high confidence", 5.0), ">",
                  _s000t("instance", "standard", "CW-L2 high confidence", 5.0), (51, 8)),
        Direction("combined beats jacobian-reg under targeted CW-L2 high confidence (ε = 5)",
                  _s000t("instance", "combined", "CW-L2 high confidence", 5.0), ">",
                  _s000t("instance", "jacobian-reg", "CW-L2 high confidence", 5.0), (78, 5)),
        Direction("combined beats the undefended model under targeted PGD-L2 (ε = 1)",
                  _s000t("instance", "combined", "PGD-L2", 1.0), ">", _s000t("instance", "standard", "PGD-L2", 1.0), (88, 53)),
        Direction("combined beats the undefended model under HopSkipJump (ε = 5)",
                  _s000t("instance", "combined", "HopSkipJump", 5.0), ">",
                  _s000t("instance", "standard", "HopSkipJump", 5.0), (89, 69)),
        Direction("jacobian-reg beats the undefended model under HopSkipJump (ε = 5)",
                  _s000t("instance", "jacobian-reg", "HopSkipJump", 5.0), ">",
                  _s000t("instance", "standard", "HopSkipJump", 5.0), (78, 69)),
    ],
}

# ----------------------------------------------------------------------------- seed 002
S002_DEF = [("No defense", "no-defense"), ("AT", "adv-training"), ("IG", "input-grad"), ("IG & AT", "input-grad-at"),
            ("CL", "cross-lipschitz"), ("CL & AT", "cross-lipschitz-at"), ("Jacobian", "jacobian"),
            ("Jacobian & AT", "jacobian-at")]
S002_RHO = {"No defense": 20.67, "AT": 22.38, "IG": 23.43, "IG & AT": 23.49, "CL": 29.03, "CL & AT": 32.38,
            "Jacobian": 34.24, "Jacobian & AT": 36.29}  # Table 3, ρ_adv × 10⁻² (MNIST)

SEED002 = {
    "tables": [
        Table("Table 1 (MNIST): mean ‖J‖_F of the logits, clean and at DeepFool's examples",
              ["‖J‖_F clean", "‖J‖_F perturbed"],
              [(label, [(pub[0], _m("jacobian-norm", d)), (pub[1], _m("jacobian-norm-adv", d, "deepfool", INF))])
               for (label, d), pub in zip([S002_DEF[0], S002_DEF[1], S002_DEF[6], S002_DEF[7],
                                           ("Jacobian, eq. 4 with the CE averaged (not in the paper)", "jacobian-eq4-mean")],
                                          [(0.14, 0.1877), (0.141, 0.143), (0.0315, 0.055), (0.0301, 0.0545), (None, None)])]),
        Table("Table 3 (MNIST): DeepFool ρ_adv (×10⁻² in the paper; the arena's ρ × 100)",
              ["ρ_adv"], [(label, [(S002_RHO[label], _m("rho-adv", d, "deepfool", INF))]) for label, d in S002_DEF]
              + [("Jacobian, eq. 4 with the CE averaged (not in the paper)",
                  [(None, _m("rho-adv", "jacobian-eq4-mean", "deepfool", INF))])]),
        Table("Table 2 (MNIST): post-processing vs regular training, ρ_adv",
              ["ρ_adv"], [(label, [(pub, _m("rho-adv", d, "deepfool", INF))]) for label, d, pub in [
                  ("IG regular", "input-grad-regular", 23.43), ("IG post", "input-grad", 24.03),
                  ("CL regular", "cross-lipschitz-regular", 29.03), ("CL post", "cross-lipschitz", 29.99),
                  ("Jacobian regular", "jacobian-regular", 32.89), ("Jacobian post", "jacobian", 34.24)]]),
    ],
    "scale": {"rho-adv": 100.0},
    "directions": [
        Direction("Jacobian reg. raises DeepFool's ρ_adv over no defense", _m("rho-adv", "jacobian", "deepfool", INF),
                  ">", _m("rho-adv", "no-defense", "deepfool", INF), (34.24, 20.67)),
        Direction("... and over the same post-processing without a regulariser (our control)",
                  _m("rho-adv", "jacobian", "deepfool", INF), ">", _m("rho-adv", "no-defense-post", "deepfool", INF),
                  (34.24, 20.67)),
        Direction("Jacobian reg. beats adversarial training on ρ_adv", _m("rho-adv", "jacobian", "deepfool", INF),
                  ">", _m("rho-adv", "adv-training", "deepfool", INF), (34.24, 22.38)),
        Direction("Jacobian reg. beats cross-Lipschitz on ρ_adv", _m("rho-adv", "jacobian", "deepfool", INF), ">",
                  _m("rho-adv", "cross-lipschitz", "deepfool", INF), (34.24, 29.03)),
        Direction("cross-Lipschitz beats input-gradient on ρ_adv", _m("rho-adv", "cross-lipschitz", "deepfool", INF),
                  ">", _m("rho-adv", "input-grad", "deepfool", INF), (29.03, 23.43)),
        Direction("adding AT to Jacobian reg. raises ρ_adv", _m("rho-adv", "jacobian-at", "deepfool", INF), ">",
                  _m("rho-adv", "jacobian", "deepfool", INF), (36.29, 34.24)),
        Direction("Jacobian reg. lowers the clean ‖J‖_F", _m("jacobian-norm", "jacobian"), "<",
                  _m("jacobian-norm", "no-defense"), (0.0315, 0.14)),
        Direction("Jacobian reg. lowers ‖J‖_F at DeepFool's examples", _m("jacobian-norm-adv", "jacobian", "deepfool", INF),
                  "<", _m("jacobian-norm-adv", "no-defense", "deepfool", INF), (0.055, 0.1877)),
        Direction("eq. 4 with the cross-entropy averaged (not the printed form) lowers the clean ‖J‖_F",
                  _m("jacobian-norm", "jacobian-eq4-mean"), "<", _m("jacobian-norm", "no-defense"), (0.0315, 0.14)),
        Direction("eq. 4 with the cross-entropy averaged raises DeepFool's ρ_adv over no defense",
                  _m("rho-adv", "jacobian-eq4-mean", "deepfool", INF), ">", _m("rho-adv", "no-defense", "deepfool", INF),
                  (34.24, 20.67)),
        Direction("post-processing beats regular training (Jacobian) on ρ_adv", _m("rho-adv", "jacobian", "deepfool", INF),
                  ">", _m("rho-adv", "jacobian-regular", "deepfool", INF), (34.24, 32.89)),
    ],
}

# ----------------------------------------------------------------------------- seed 003
S003_ATTACKS = [("FGSM-0.05", "fgsm", 0.05), ("FGSM-0.1", "fgsm", 0.1), ("BIM-0.05", "bim", 0.05), ("BIM-0.1", "bim", 0.1),
                ("C&W", "cw", INF), ("C&W-hc", "cw-hc", INF), ("JSMA", "jsma", INF)]
S003_AUC = {  # Table 2, MNIST: baseline, RCE, PDM
    "FGSM-0.05": (0.981, 0.983, 0.988), "FGSM-0.1": (0.988, 0.99, 0.995), "BIM-0.05": (0.983, 0.967, 0.987),
    "BIM-0.1": (0.945, 0.92, 0.99), "C&W": (0.994, 1.0, 1.0), "C&W-hc": (0.88, 0.98, 1.0), "JSMA": (0.995, 1.0, 1.0)}
S003_DEF = ["baseline-kde", "rce-kde", "pdm-kde"]

SEED003 = {
    "tables": [
        Table("Table 1 (MNIST): clean accuracy (%)", ["CE", "RCE", "PDM"],
              [("clean", [(99.33, ("clean", "baseline")), (99.32, ("clean", "rce")), (99.52, ("clean", "pdm"))])]),
        Table("Table 2 (MNIST): detection AUC of the KDE detector, gray-box", ["Baseline", "RCE", "PDM"],
              [(label, [(pub, _m("detection-auc", d, a, b)) for pub, d in zip(S003_AUC[label], S003_DEF)])
               for label, a, b in S003_ATTACKS]),
        Table("Table 3 (MNIST): white-box C&W-wb distortion (mean ‖δ‖₂/√n)", ["Baseline", "RCE", "PDM"],
              [("distortion", [(pub, _m("distortion", d, "cw-wb", INF)) for pub, d in
                               zip((0.087, 0.104, 0.162), ("baseline-kde-wb", "rce-kde-wb", "pdm-kde-wb"))])]),
        Table("Table 4 (MNIST): black-box (proxy) detection AUC", ["Baseline", "RCE", "PDM"],
              [("AUC", [(pub, _m("detection-auc", d, "substitute-cw", 28.0)) for pub, d in zip((0.88, 0.94, 0.99), S003_DEF)])]),
    ],
    "directions": [
        Direction("PDM detects C&W-hc better than the baseline", _m("detection-auc", "pdm-kde", "cw-hc", INF), ">",
                  _m("detection-auc", "baseline-kde", "cw-hc", INF), (1.0, 0.88)),
        Direction("PDM detects BIM-0.1 better than RCE", _m("detection-auc", "pdm-kde", "bim", 0.1), ">",
                  _m("detection-auc", "rce-kde", "bim", 0.1), (0.99, 0.92)),
        Direction("RCE detects C&W-hc better than the baseline", _m("detection-auc", "rce-kde", "cw-hc", INF), ">",
                  _m("detection-auc", "baseline-kde", "cw-hc", INF), (0.98, 0.88)),
        Direction("white-box C&W-wb needs more distortion against PDM than against RCE",
                  _m("distortion", "pdm-kde-wb", "cw-wb", INF), ">", _m("distortion", "rce-kde-wb", "cw-wb", INF),
                  (0.162, 0.104)),
        Direction("... and against RCE than against the baseline", _m("distortion", "rce-kde-wb", "cw-wb", INF), ">",
                  _m("distortion", "baseline-kde-wb", "cw-wb", INF), (0.104, 0.087)),
        Direction("black-box AUC: PDM above the baseline", _m("detection-auc", "pdm-kde", "substitute-cw", 28.0), ">",
                  _m("detection-auc", "baseline-kde", "substitute-cw", 28.0), (0.99, 0.88)),
        Direction("PDM's clean accuracy is at least CE's", ("clean", "pdm"), ">=", ("clean", "baseline"), (99.52, 99.33)),
        Direction("PDM's embedding has a lower Davies–Bouldin index than the baseline's (Figure 2, CIFAR-10; "
                  "the baseline's value is not legible)", _m("davies-bouldin", "pdm"), "<",
                  _m("davies-bouldin", "baseline"), (0.23, None)),
        Direction("PDM detects gray-box FGSM-0.1 at least as well as the baseline",
                  _m("detection-auc", "pdm-kde", "fgsm", 0.1), ">=", _m("detection-auc", "baseline-kde", "fgsm", 0.1),
                  (0.995, 0.988)),
    ],
}

# ----------------------------------------------------------------------------- seed 004
SEED004 = {
    "tables": [
        Table("Table 1 (MNIST): attacks on the undefended classifier, accuracy (%)", ["FGSM", "CW"],
              [("C_M", [(0.72, _acc("standard", "fgsm", 0.3)), (0.03, _acc("standard", "cw", INF))])]),
        Table("Table 2 (MNIST): DLN-prepended C¹, accuracy (%)", ["transfer (examples of C_M)", "fresh white-box"],
              [("DLN trained on FGSM", [(88.5, _acc("dln-fgsm-r1", "fgsm-transfer", 0.3)), (13.75, _acc("dln-fgsm-r1", "fgsm", 0.3))]),
               ("DLN trained on CW", [(95.42, _acc("dln-cw", "cw-transfer", INF)), (0.14, _acc("dln-cw", "cw", INF))])]),
        Table("Table 3 (MNIST): DLN repeated against FGSM, accuracy (%)", ["clean", "FGSM"],
              [(f"round {k}", [(pub[0], ("clean", d)), (pub[1], _acc(d, "fgsm", 0.3))]) for k, d, pub in [
                  (0, "standard", (99.36, 0.72)), (1, "dln-fgsm-r1", (97.70, 13.70)), (2, "dln-fgsm-r2", (97.61, 24.86)),
                  (3, "dln-fgsm-r3", (97.95, 43.39)), (4, "dln-fgsm-r4", (97.79, 52.88)), (5, "dln-fgsm-r5", (97.77, 56.57))]]),
        Table("Table 4 (MNIST): NAC, accuracy (%)", ["clean", "CW", "FGSM"],
              [("NAC", [(99.36, ("clean", "nac")), (93.60, _acc("nac", "cw", INF)), (0.74, _acc("nac", "fgsm", 0.3))])]),
        Table("Table 6 (MNIST): repeated DLN + NAC, accuracy (%)", ["clean", "FGSM", "CW"],
              [(f"round {k}", [(pub[0], ("clean", d)), (pub[1], _acc(d, "fgsm", 0.3)), (pub[2], _acc(d, "cw", INF))])
               for k, d, pub in [(1, "dln-nac-r1", (97.70, 13.72, 93.7)), (2, "dln-nac-r2", (97.73, 24.28, 84.7)),
                                 (3, "dln-nac-r3", (97.60, 43.20, 83.3)), (4, "dln-nac-r4", (97.64, 53.17, 79.0)),
                                 (5, "dln-nac-r5", (97.73, 56.45, 79.3))]]),
    ],
    "directions": [
        Direction("a DLN trained on FGSM examples of C_M recovers them (transfer)", _acc("dln-fgsm-r1", "fgsm-transfer", 0.3),
                  ">", _acc("standard", "fgsm", 0.3), (88.5, 0.72)),
        Direction("a fresh white-box FGSM still breaks C¹", _acc("dln-fgsm-r1", "fgsm", 0.3), "<",
                  _acc("dln-fgsm-r1", "fgsm-transfer", 0.3), (13.75, 88.5)),
        Direction("repeating DLN raises the FGSM accuracy (round 5 vs round 1)", _acc("dln-fgsm-r5", "fgsm", 0.3), ">",
                  _acc("dln-fgsm-r1", "fgsm", 0.3), (56.57, 13.70)),
        Direction("NAC resists C&W far better than the undefended classifier", _acc("nac", "cw", INF), ">",
                  _acc("standard", "cw", INF), (93.60, 0.03)),
        Direction("DLN-NAC after 5 rounds resists FGSM better than NAC alone", _acc("dln-nac-r5", "fgsm", 0.3), ">",
                  _acc("nac", "fgsm", 0.3), (56.45, 0.74)),
    ],
}

# Table 5 (seed004-learning-masking-eot.toml): C&W on logits averaged over n queries of NAC;
# the arena's n is the paper's / 100 (5 and 50 for 500 and 5,000), see the file's header.
SEED004_EOT = {
    "tables": [
        Table("Table 5 (MNIST): NAC against C&W on logits averaged over n queries (arena: n / 100)",
              ["adversarial accuracy (%)", "distortion"],
              [(f"n = {n} (arena {n // 100})", [(pub[0], _acc("nac", a, INF)), (pub[1], _m("distortion", "nac", a, INF))])
               for n, a, pub in [(500, "eot-cw-n5", (95.14, 1.51)), (5000, "eot-cw-n50", (82.07, 1.51))]]),
        Table("Tables 1 and 4 (MNIST): plain C&W, one query per step, accuracy (%)", ["C_M", "NAC"],
              [("CW", [(0.03, _acc("standard", "cw", INF)), (93.60, _acc("nac", "cw", INF))])]),
    ],
    "directions": [
        Direction("averaging the logits over more queries makes C&W stronger against NAC (n = 5,000 vs 500)",
                  _acc("nac", "eot-cw-n50", INF), "<", _acc("nac", "eot-cw-n5", INF), (82.07, 95.14)),
        Direction("C&W on logits averaged over 5,000 queries beats plain C&W against NAC",
                  _acc("nac", "eot-cw-n50", INF), "<", _acc("nac", "cw", INF), (82.07, 93.60)),
        Direction("NAC resists the averaged-logits C&W far better than the undefended classifier resists C&W",
                  _acc("nac", "eot-cw-n50", INF), ">", _acc("standard", "cw", INF), (82.07, 0.03)),
    ],
}

# ----------------------------------------------------------------------------- seed 001
S001_DEF = [("CNN", "standard"), ("Feature squeezing", "feature-squeezing"), ("Label smoothing", "label-smoothing"),
            ("FGSM adv. training", "fgsm-at"), ("VAT", "vat"), ("GDA+RELU", "gda"), ("GDA+BRELU", "gda-brelu")]
S001_T2 = {"CNN": (52.07, 0.202, 3.90, 0.0609), "Feature squeezing": (35.61, 0.143, 3.01, 0.1215),
           "Label smoothing": (37.06, 0.152, 3.18, 0.2289), "FGSM adv. training": (56.44, 0.226, 4.33, 0.0748),
           "VAT": (73.32, 0.308, 6.64, 0.0741), "GDA+RELU": (73.96, 0.440, 10.36, 0.0244),
           "GDA+BRELU": (69.56, 0.471, 9.31, 0.0753)}
S001_T4 = {"CNN": (94.46, 40.70, 92.95, 97.95), "Feature squeezing": (96.31, 91.09, 96.68, 97.48),
           "Label smoothing": (86.79, 20.28, 84.58, 95.86), "FGSM adv. training": (91.86, 49.77, 85.91, 98.62),
           "VAT": (97.53, 74.35, 96.03, 98.26), "GDA+RELU": (98.47, 80.25, 97.84, 98.96),
           "GDA+BRELU": (98.08, 75.50, 98.00, 98.88)}

SEED001 = {
    "tables": [
        Table("Tables 2-3 (MNIST): minimal FGSM (capped at ε = 0.3), white-box", [
            "accuracy (%)", "ρ", "training-set distance", "loss sensitivity"],
            [(label, [(S001_T2[label][0], _acc(d, "fgsm-minimal", 0.3)),
                      (S001_T2[label][1], _m("robustness", d, "fgsm-minimal", 0.3)),
                      (S001_T2[label][2], _m("training-set-distance", d, "fgsm-minimal", 0.3)),
                      (S001_T2[label][3], _m("loss-sensitivity", d))]) for label, d in S001_DEF]),
        Table("Table 4 (MNIST): black-box, examples crafted on the undefended ResNet, accuracy (%)", [
            "FGSM (0.1)", "Rand+FGSM (0.1)", "DeepFool", "JSMA"],
            [(label, [(S001_T4[label][0], _acc(d, "fgsm-transfer", 0.1)),
                      (S001_T4[label][1], _acc(d, "rand-fgsm-transfer", 0.1)),
                      (S001_T4[label][2], _acc(d, "deepfool-transfer", INF)),
                      (S001_T4[label][3], _acc(d, "jsma-transfer", INF))]) for label, d in S001_DEF]),
    ],
    "directions": [
        Direction("GDA+RELU has a higher ρ than the CNN", _m("robustness", "gda", "fgsm-minimal", 0.3), ">",
                  _m("robustness", "standard", "fgsm-minimal", 0.3), (0.440, 0.202)),
        Direction("GDA+BRELU has a higher ρ than VAT", _m("robustness", "gda-brelu", "fgsm-minimal", 0.3), ">",
                  _m("robustness", "vat", "fgsm-minimal", 0.3), (0.471, 0.308)),
        Direction("label smoothing has a lower ρ than the CNN", _m("robustness", "label-smoothing", "fgsm-minimal", 0.3),
                  "<", _m("robustness", "standard", "fgsm-minimal", 0.3), (0.152, 0.202)),
        Direction("GDA's examples lie farther from the training set than the CNN's",
                  _m("training-set-distance", "gda", "fgsm-minimal", 0.3), ">",
                  _m("training-set-distance", "standard", "fgsm-minimal", 0.3), (10.36, 3.90)),
        Direction("GDA+RELU lowers the loss sensitivity", _m("loss-sensitivity", "gda"), "<",
                  _m("loss-sensitivity", "standard"), (0.0244, 0.0609)),
        Direction("label smoothing raises the loss sensitivity", _m("loss-sensitivity", "label-smoothing"), ">",
                  _m("loss-sensitivity", "standard"), (0.2289, 0.0609)),
        Direction("GDA+RELU resists transferred FGSM better than the CNN", _acc("gda", "fgsm-transfer", 0.1), ">",
                  _acc("standard", "fgsm-transfer", 0.1), (98.47, 94.46)),
        Direction("GDA+RELU has a higher accuracy under minimal FGSM (ε ≤ 0.3) than the CNN",
                  _acc("gda", "fgsm-minimal", 0.3), ">", _acc("standard", "fgsm-minimal", 0.3), (73.96, 52.07)),
    ],
}

S001_T4_CW = {"CNN": 93.10, "Feature squeezing": 96.75, "Label smoothing": 84.81, "FGSM adv. training": 97.71,
              "VAT": 96.11, "GDA+RELU": 97.87, "GDA+BRELU": 98.03}  # Table 4's C&W column (MNIST)

SEED001_CW = {
    "tables": [
        Table("Table 4 (MNIST), C&W column: black-box, C&W-L2 (κ = 2.3) crafted on the undefended ResNet, accuracy (%)",
              ["C&W"], [(label, [(S001_T4_CW[label], _acc(d, "cw-transfer", INF))]) for label, d in S001_DEF]),
        Table("Clean accuracy (%) of the same entries on the file's samples (not in the paper's table)",
              ["clean"], [(label, [(None, ("clean", d))]) for label, d in S001_DEF]),
    ],
    "directions": [
        Direction("GDA+RELU resists transferred C&W better than the CNN", _acc("gda", "cw-transfer", INF), ">",
                  _acc("standard", "cw-transfer", INF), (97.87, 93.10)),
        Direction("GDA+BRELU resists transferred C&W better than the CNN", _acc("gda-brelu", "cw-transfer", INF), ">",
                  _acc("standard", "cw-transfer", INF), (98.03, 93.10)),
        Direction("feature squeezing resists transferred C&W better than the CNN",
                  _acc("feature-squeezing", "cw-transfer", INF), ">", _acc("standard", "cw-transfer", INF), (96.75, 93.10)),
        Direction("label smoothing resists transferred C&W worse than the CNN",
                  _acc("label-smoothing", "cw-transfer", INF), "<", _acc("standard", "cw-transfer", INF), (84.81, 93.10)),
        Direction("GDA+RELU resists transferred C&W better than FGSM adversarial training",
                  _acc("gda", "cw-transfer", INF), ">", _acc("fgsm-at", "cw-transfer", INF), (97.87, 97.71)),
    ],
}

PAPERS: dict[str, dict[str, Any]] = {
    "seed000": SEED000, "seed000-targeted": SEED000_TARGETED, "seed001": SEED001, "seed001-cw": SEED001_CW,
    "seed002": SEED002, "seed003": SEED003, "seed004": SEED004, "seed004-eot": SEED004_EOT}
#: The Fashion-MNIST file whose results each paper's tables read.
FILES = {"seed000": "seed000-nsloss-jacobian.toml", "seed000-targeted": "seed000-nsloss-jacobian-targeted.toml",
         "seed001": "seed001-efficient-defenses.toml",
         "seed001-cw": "seed001-efficient-defenses-cw.toml", "seed002": "seed002-jacobian-reg.toml",
         "seed003": "seed003-pdm.toml", "seed004": "seed004-learning-masking.toml",
         "seed004-eot": "seed004-learning-masking-eot.toml"}


def cells(paper: str) -> list[Cell]:
    """Every cell the paper's tables and directions read."""
    spec = PAPERS[paper]
    out = [c for t in spec["tables"] for _, row in t.rows for _, c in row if c is not None]
    return out + [c for d in spec["directions"] for c in (d.left, d.right)]


# ----------------------------------------------------------------------------- reading a database

class Results:
    """The figures of one run, by cell."""

    def __init__(self, db: Path, run_id: int | None = None, scale: dict[str, float] | None = None) -> None:
        from arena.tournament.store import Store

        store = Store(db, readonly=True)
        try:
            self.run_id = run_id if run_id is not None else store.latest_run()
            self.models = {m.defense: m for m in store.models(self.run_id)}
            self.matches = {(m.defense, m.attack, m.budget): m for m in store.matches(self.run_id)}
            self.metrics = {(v.metric, v.defense, v.attack, v.budget): v for v in store.metrics(self.run_id)}
            self.name = store.run(self.run_id).name
        finally:
            store.close()
        self.scale = scale or {}

    def value(self, cell: Cell | None) -> float | str | None:
        """The arena's figure of ``cell`` (accuracies in %), a status where it is not ok, None
        where the run has no such entry."""
        if cell is None:
            return None
        kind = cell[0]
        if kind == "clean":
            m = self.models.get(cell[1])
            return None if m is None else 100 * m.clean_accuracy
        if kind == "acc":
            m = self.matches.get(tuple(cell[1:]))
            if m is None:
                return None
            return 100 * m.robust_accuracy if m.ok and m.robust_accuracy is not None else m.status
        if kind == "instance":
            m, model = self.matches.get(tuple(cell[1:])), self.models.get(cell[1])
            if m is None or model is None:
                return None
            if not m.ok or m.success_rate is None:
                return m.status
            return 100 * model.clean_accuracy * (1 - m.success_rate)
        v = self.metrics.get(tuple(cell[1:]))
        if v is None:
            return None
        return v.value * self.scale.get(cell[1], 1.0) if v.ok else v.status


def _fmt(v: float | str | None) -> str:
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}" if abs(v) < 10 else f"{v:.1f}"


def holds(a: Any, op: str, b: Any) -> bool | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return None
    return {">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]


def report(paper: str, results: Results) -> str:
    spec = PAPERS[paper]
    out = [f"Run {results.run_id} of {results.name}: published / arena\n"]
    for t in spec["tables"]:
        out.append(f"**{t.title}**\n")
        out.append("| | " + " | ".join(t.columns) + " |")
        out.append("|---|" + "---|" * len(t.columns))
        for label, cells in t.rows:
            out.append(f"| {label} | " + " | ".join(f"{_fmt(p)} / {_fmt(results.value(c))}" for p, c in cells) + " |")
        out.append("")
    out.append("**Headline directions** (published figures, then the arena's)\n")
    out.append("| direction | published | arena | reproduces |")
    out.append("|---|---|---|---|")
    for d in spec["directions"]:
        a, b = results.value(d.left), results.value(d.right)
        verdict = holds(a, d.op, b)
        shown = "n/a" if verdict is None else "yes" if verdict else "**no**"
        out.append(f"| {d.text} | {_fmt(d.published[0])} {d.op} {_fmt(d.published[1])} | "
                   f"{_fmt(a)} {d.op} {_fmt(b)} | {shown} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paper", choices=sorted(PAPERS))
    parser.add_argument("db", type=Path)
    parser.add_argument("--run", type=int, default=None)
    args = parser.parse_args(argv)
    if not args.db.exists():
        print(f"{args.db}: no such results database; run the paper's file first", file=sys.stderr)
        return 2
    print(report(args.paper, Results(args.db, args.run, PAPERS[args.paper].get("scale"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
