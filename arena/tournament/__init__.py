"""Tournaments: a TOML file of defenses and attacks, resolved into a plan, expanded into matches and run.

Importing the package is cheap (the CLI starts the worker processes' forkserver before it
imports torch): ``Plan``, ``TournamentConfig``, ``load_tournament`` and ``parse_tournament`` are
imported on first access.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from arena.lazy import lazy_attributes

if TYPE_CHECKING:
    from arena.tournament.config import TournamentConfig
    from arena.tournament.plan import Plan, load_tournament, parse_tournament

_LAZY = {"TournamentConfig": "arena.tournament.config", "Plan": "arena.tournament.plan",
         "load_tournament": "arena.tournament.plan", "parse_tournament": "arena.tournament.plan"}

__all__ = ["Plan", "TournamentConfig", "load_tournament", "parse_tournament"]


__getattr__ = lazy_attributes(globals(), _LAZY)
