"""Every ready tournament file under tournaments/ (papers/ included) validates against the installed plugins."""
from __future__ import annotations

import tomllib
import zipfile
from pathlib import Path

import pytest

from arena.tournament.plan import load_tournament

TOURNAMENTS = Path(__file__).parent.parent / "tournaments"
FILES = sorted(TOURNAMENTS.glob("**/*.toml"))


def stub_model_files(path: Path, root: Path) -> None:
    """The model files a tournament names (written by `arena train` before it runs), as stub zips."""
    for entry in tomllib.loads(path.read_text())["defenses"]:
        if entry.get("id") == "model-file":
            stub = root / entry["params"]["path"]
            stub.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(stub, "w") as archive:
                archive.writestr("stub", "")


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(TOURNAMENTS).as_posix() for p in FILES])
def test_tournament_file_is_valid(path, registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # model-file paths are relative to the working directory
    stub_model_files(path, tmp_path)
    cfg = load_tournament(path, registry)
    assert cfg.config.name != "tournament", f"{path.name}: give the tournament a name"
    assert cfg.defenses and cfg.attacks
