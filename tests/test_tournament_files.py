"""Every ready tournament file under tournaments/ validates against the installed plugins."""
from __future__ import annotations

from pathlib import Path

import pytest

from arena.tournament.plan import load_tournament

FILES = sorted((Path(__file__).parent.parent / "tournaments").glob("*.toml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_tournament_file_is_valid(path, registry):
    cfg = load_tournament(path, registry)
    assert cfg.defenses and cfg.attacks
