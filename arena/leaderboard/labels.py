"""How the leaderboard writes a budget: :func:`arena.labels.budget_label`, one formatter for
tables, flags, plots, the site and the tournament's own messages."""
from __future__ import annotations

from arena.labels import budget_label

__all__ = ["budget_label"]
