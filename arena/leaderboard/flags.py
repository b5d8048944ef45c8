"""Sanity flags read from a run's results (Carlini et al. 2019, "On Evaluating Adversarial
Robustness" §5; AutoAttack's flags): accuracy that rises with the budget, unbounded attacks on
the judged model that do not reach ~100% success, single-step attacks beating iterative ones,
black-box, transfer or gray-box attacks beating white-box ones on some examples, randomised
outputs evaluated without an adaptive (EOT) attack, and what the model probes of
:func:`arena.checks.model_checks` found.

Each flag says what it suggests and which attack to add. Flags read the matches that finished
``ok``; where one that would change a flag's claim did not (a white-box attack that timed out), the
flag says so rather than claim more than was measured.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from arena.leaderboard.labels import budget_label
from arena.tournament.store import MatchRecord, ModelRecord


@dataclass(frozen=True)
class Flag:
    defense: str
    check: str
    message: str
    suggestion: str

    def __str__(self) -> str:
        return f"{self.defense}: {self.message} — suggests {self.suggestion}"


def flags(models: list[ModelRecord], matches: list[MatchRecord], tolerance: float = 0.02,
          cascade: bool = False) -> list[Flag]:
    """All flags for one run (records from :class:`arena.tournament.store.Store`). In a cascade
    (``cascade``) the per-attack accuracies are conditional, so the flag that compares two
    attacks' accuracies (single-step beating iterative) is not raised."""
    found: list[Flag] = []
    for model in models:
        d = model.defense
        mine = [m for m in matches if m.defense == d and m.ok]
        unfinished = [m for m in matches if m.defense == d and not m.ok]
        found += _model_flags(d, model)
        found += _monotonic(d, mine, tolerance)
        found += _unbounded(d, mine, model.clean_accuracy)
        if not cascade:
            found += _single_step(d, mine, tolerance)
        found += _weaker_access(d, mine, unfinished)
        found += _score_based_component(d, mine)
        if model.checks.get("randomized") and not any(_averages_draws(m) for m in mine):
            tried = _unfinished_text(m for m in unfinished if m.knowledge == "adaptive")
            message = (f"outputs are randomised and no adaptive attack finished ({tried})" if tried else
                       "outputs are randomised but no adaptive attack was run")
            found.append(Flag(d, "randomized-without-eot", message,
                              "stochastic gradients; add an EOT attack (eot, cw-eot)"))
    return found


def _averages_draws(m: MatchRecord) -> bool:
    """An adaptive attack, or one that reports averaging its gradients over the model's draws
    (details ``eot_draws`` > 1: AutoAttack's ``rand`` version)."""
    draws = (m.provenance.get("details") or {}).get("eot_draws")
    return m.knowledge == "adaptive" or (isinstance(draws, int) and draws > 1)


def _model_flags(d: str, model: ModelRecord) -> list[Flag]:
    checks, out = model.checks, []
    if checks.get("optimises_at_inference"):
        out.append(Flag(d, "optimises-at-inference", "the forward pass runs autograd (an optimisation at "
                        "inference time)", "a dynamic defense that fixed attacks such as AutoAttack may not "
                        "evaluate; add an adaptive attack through its optimisation (bpda, eot)"))
    if checks.get("zero_gradient_share", 0) > 0.1:
        share = 100 * checks["zero_gradient_share"]
        out.append(Flag(d, "zero-gradients", f"the loss gradient is zero on {share:.0f}% of clean inputs",
                        "gradient masking or shattered gradients; add BPDA (bpda) and a decision-based attack "
                        "(hopskipjump)"))
    if checks.get("outputs_probabilities"):
        out.append(Flag(d, "probabilities", "the model outputs probabilities rather than logits",
                        "saturated softmax hides gradients; strip the softmax or attack the logits (cw-l2)"))
    return out


def _by_attack(matches: list[MatchRecord]) -> dict[tuple[str, str], list[MatchRecord]]:
    groups: dict[tuple[str, str], list[MatchRecord]] = {}
    for m in matches:
        groups.setdefault((m.attack, m.norm), []).append(m)
    return groups


def _monotonic(d: str, matches: list[MatchRecord], tol: float) -> list[Flag]:
    out = []
    for (attack, _), rows in _by_attack(matches).items():
        rows = sorted(rows, key=lambda m: m.budget)
        for small, large in zip(rows, rows[1:]):
            if large.robust_accuracy > small.robust_accuracy + tol:
                out.append(Flag(d, "non-monotonic", f"{attack}: accuracy rises from "
                                f"{100 * small.robust_accuracy:.1f}% at ε={budget_label(small.budget)} to "
                                f"{100 * large.robust_accuracy:.1f}% at ε={budget_label(large.budget)}",
                                "a weak or badly tuned attack, or gradient masking; add random restarts "
                                "and more steps (pgd restarts)"))
                break
    return out


def _unbounded(d: str, matches: list[MatchRecord], clean: float) -> list[Flag]:
    """Unbounded attacks on the judged model itself (white-box, adaptive, query-based) that stop
    short of ~100% success. A transfer or gray-box attack crafts on another model (a surrogate, the
    base classifier): that its unbounded examples do not all carry over is expected, not a sign of
    masking, so it raises no flag here."""
    out = []
    for m in matches:
        if m.threat_model in ("transfer", "gray-box"):
            continue
        if math.isinf(m.budget) and m.success_rate is not None and m.success_rate < 0.99 and clean > 0:
            out.append(Flag(d, "unbounded-fails", f"{m.attack}: an unbounded attack succeeds on only "
                            f"{100 * m.success_rate:.1f}% of samples",
                            "gradient masking or a broken attack; add a decision-based attack (hopskipjump) "
                            "or BPDA"))
    return out


def _single_step(d: str, matches: list[MatchRecord], tol: float) -> list[Flag]:
    out = []
    single = [m for m in matches if m.knowledge == "white-box" and (m.mean_queries or 0) <= 1.0]
    iterative = [m for m in matches if m.knowledge in ("white-box", "adaptive") and (m.mean_queries or 0) > 1.0]
    for s in single:
        for it in iterative:
            if (it.norm, it.budget) == (s.norm, s.budget) and s.robust_accuracy + tol < it.robust_accuracy:
                out.append(Flag(d, "single-step-wins", f"single-step {s.attack} beats iterative {it.attack} "
                                f"at ε={budget_label(s.budget)}", "gradient masking; add more steps and random "
                                "restarts, and a black-box attack"))
    return out


def _score_based_component(d: str, matches: list[MatchRecord], share: float = 0.002) -> list[Flag]:
    """An ensemble whose score-based component (Square) broke samples that its white-box
    components before it left robust (AutoAttack's check_square_sr: more than 0.2% of them)."""
    out = []
    for m in matches:
        comps = (m.provenance.get("details") or {}).get("components")
        if not isinstance(comps, list) or not comps:
            continue
        first = comps[0].get("attacked") if isinstance(comps[0], dict) else None
        for c in comps[1:]:
            if (isinstance(c, dict) and c.get("name") == "square" and isinstance(first, int) and first
                    and isinstance(c.get("broken"), int) and c["broken"] / first > share):
                out.append(Flag(d, "score-based-wins", f"{m.attack}: the score-based square broke {c['broken']} "
                                f"of {first} samples at ε={budget_label(m.budget)} that its white-box components "
                                "left robust", "gradient masking; run square with more queries and restarts, "
                                "and an adaptive attack"))
    return out


def _unfinished_text(matches: Iterable[MatchRecord]) -> str:
    """``pgd timed-out, cw failed``: the attacks of the matches given, with their status."""
    return ", ".join(dict.fromkeys(f"{m.attack} {m.status}" for m in matches))


def _weaker_access(d: str, matches: list[MatchRecord], unfinished: list[MatchRecord]) -> list[Flag]:
    """Examples broken by a black-box, transfer or gray-box attack but by no white-box one (of
    those that finished: the others are named)."""
    out = []
    for (norm, budget) in sorted({(m.norm, m.budget) for m in matches}):
        rows = [m for m in matches if (m.norm, m.budget) == (norm, budget) and m.robust_mask is not None]
        white = [m.robust_mask for m in rows if m.knowledge in ("white-box", "adaptive")]
        weaker = [m for m in rows if m.knowledge in ("black-box", "gray-box")]
        if not white:
            continue
        robust_white = [all(col) for col in zip(*white)]
        missed = _unfinished_text(m for m in unfinished if (m.norm, m.budget) == (norm, budget)
                                  and m.knowledge in ("white-box", "adaptive"))
        every = f"every white-box attack that finished missed (not finished: {missed})" if missed else \
            "every white-box attack missed"
        for m in weaker:
            beaten = sum(w and not r for w, r in zip(robust_white, m.robust_mask))
            if beaten:
                out.append(Flag(d, "weaker-access-wins", f"{m.attack} ({m.threat_model}) breaks {beaten} "
                                f"example{'' if beaten == 1 else 's'} at ε={budget_label(budget)} that {every}",
                                "gradient masking; add BPDA/EOT adaptive attacks"))
    return out
