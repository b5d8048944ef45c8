"""Tournaments: a TOML file of defenses and attacks, resolved into a plan, expanded into matches and run."""
from arena.tournament.config import TournamentConfig
from arena.tournament.plan import Plan, load_tournament, parse_tournament

__all__ = ["Plan", "TournamentConfig", "load_tournament", "parse_tournament"]
