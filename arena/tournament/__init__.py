"""Tournaments: a TOML file of defenses and attacks, expanded into matches and run."""
from arena.tournament.config import TournamentConfig, load_tournament

__all__ = ["TournamentConfig", "load_tournament"]
