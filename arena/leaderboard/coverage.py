"""Which results a worst case or an attack's score stands on, and which of them it lacks.

A (defense, attack, budget) result is *expected* when the attack faces the defense (its entry's
``against``, every defense by default) and serves the budget: the attack's entry lists it, or
some row of that attack is stored at it for any defense (so a minimal attack, one run of which
is scored at every budget its entry lists and at ∞, serves exactly those). A worst case at
(defense, norm, budget) covers the attacks of that norm expected there; one that is missing,
did not finish ``ok`` (``failed``, ``timed-out``, a crashed task), or finished without
per-sample results is a :class:`Gap`, and the worst case is *incomplete*: it is taken over the
other attacks only, so it is an upper bound of the true one.

The file's entries come from the run's stored configuration; an attack's norm and threat model
come from its rows. An attack with no row at all (an interrupted run) has neither: it counts as a
gap in every norm, at the budgets its entry lists (∞ if it lists none: a minimal attack).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from arena.tournament.store import MatchRecord, ModelRecord, RunRecord

MISSING = "missing"
NO_MASK = "without per-sample results"


@dataclass(frozen=True)
class Gap:
    """One result a number should stand on and does not: ``name`` (an attack, or ``vs <defense>``
    in the attacks' table) and why (a match status, ``missing``)."""

    name: str
    status: str

    def __str__(self) -> str:
        return f"{self.name} {self.status}"

    def as_dict(self, key: str = "attack") -> dict[str, str]:
        return {key: self.name, "status": self.status}


@dataclass(frozen=True)
class Mark:
    """An incomplete cell: what it is (``d, worst ε=0.1``) and the results it lacks."""

    where: str
    gaps: tuple[Gap, ...]

    def __str__(self) -> str:
        return f"{self.where}: incomplete: {', '.join(map(str, self.gaps))}"


@dataclass(frozen=True)
class AttackEntry:
    """What is known of one attack entry: from the file (budgets, against) and from its rows."""

    label: str
    norm: str | None
    threat_model: str | None
    budgets: frozenset[float]
    against: frozenset[str] | None

    def faces(self, defense: str) -> bool:
        return self.against is None or defense in self.against


class Coverage:
    """The expected results of one run, and the gaps among them."""

    def __init__(self, run: RunRecord, models: list[ModelRecord], matches: list[MatchRecord]) -> None:
        self.defenses = list(dict.fromkeys([m.defense for m in models] + [m.defense for m in matches]))
        self.rows = {(m.defense, m.attack, m.budget): m for m in matches}
        self.attacks = _entries(run.config, matches)

    def status(self, defense: str, attack: AttackEntry, budget: float) -> str | None:
        """None where nothing is expected; otherwise the status of the result, or a gap's reason."""
        if not attack.faces(defense) or not _serves(attack, budget):
            return None
        m = self.rows.get((defense, attack.label, budget))
        if m is None:
            return MISSING
        if m.ok and m.robust_mask is None:
            return NO_MASK
        return m.status

    def worst_gaps(self, defense: str, norm: str, budget: float, knowledge: str | None = None) -> tuple[Gap, ...]:
        """The attacks missing from the worst case of ``defense`` at (``norm``, ``budget``);
        ``knowledge`` restricts them to one threat model, as the leaderboard's filter does."""
        out = []
        for a in self.attacks.values():
            if a.norm not in (norm, None) or (knowledge is not None and a.threat_model not in (knowledge, None)):
                continue
            status = self.status(defense, a, budget)
            if status not in (None, "ok"):
                out.append(Gap(a.label, status))
        return tuple(out)

    def attack_gaps(self, attack: str, budget: float) -> tuple[Gap, ...]:
        """The defenses an attack should have been scored against at ``budget`` and was not."""
        entry = self.attacks.get(attack)
        if entry is None:
            return ()
        states = [(d, self.status(d, entry, budget)) for d in self.defenses]
        return tuple(Gap(f"vs {d}", s) for d, s in states if s not in (None, "ok"))


def _serves(attack: AttackEntry, budget: float) -> bool:
    return any(b == budget or (math.isinf(b) and math.isinf(budget)) for b in attack.budgets)


def _entries(config: dict[str, Any], matches: list[MatchRecord]) -> dict[str, AttackEntry]:
    """Every attack of the run: the file's entries (when the configuration lists them) and every
    attack that has rows, each with the budgets and facts its rows add."""
    rows: dict[str, list[MatchRecord]] = {}
    for m in matches:
        rows.setdefault(m.attack, []).append(m)
    file = {}
    for entry in config.get("attacks") or []:
        if isinstance(entry, dict) and (entry.get("name") or entry.get("id")):
            file[str(entry.get("name") or entry.get("id"))] = entry
    out = {}
    for label in dict.fromkeys([*file, *rows]):
        entry, mine = file.get(label, {}), rows.get(label, [])
        listed = {float(b) for b in entry.get("budgets") or []}
        budgets = listed | {m.budget for m in mine}
        if not budgets:
            budgets = {math.inf}  # no budget listed and no row: a minimal attack's unbounded run
        against = entry.get("against")
        out[label] = AttackEntry(label, mine[0].norm if mine else None,
                                 mine[0].threat_model if mine else _file_threat_model(entry),
                                 frozenset(budgets), frozenset(against) if against is not None else None)
    return out


def _file_threat_model(entry: dict[str, Any]) -> str | None:
    """An attack's threat model as far as its entry tells it (None: only its plugin knows)."""
    if entry.get("surrogate"):
        return "transfer"
    return "gray-box" if entry.get("view") == "gray-box" else None
