"""Imported once by the worker processes' forkserver (:mod:`arena.tournament.workers`): torch,
the tournament's task functions and the installed plugins' modules, so that each new worker
starts with them loaded instead of importing them again."""
from __future__ import annotations

import importlib.metadata as md

import torch  # noqa: F401

from arena.discovery import disabled
from arena.registry import GROUP
from arena.tournament import entrants, matches  # noqa: F401

for _ep in md.entry_points(group=GROUP):
    if _ep.name not in disabled():
        try:
            _ep.load()
        except Exception:  # a broken plugin is reported where it is used, not here
            pass
