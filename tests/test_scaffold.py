"""``arena new-plugin``: the skeleton installs, registers through its entry point, passes its contract.

The install test builds the generated package with the venv's own setuptools (no build
isolation, no index, no dependencies) into a private ``--target`` folder, so the main venv is
never touched; a fresh Python process with that folder on PYTHONPATH sees the package's
``dist-info`` and therefore its ``arena`` entry point.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from arena import ConfigError
from arena.cli import cli
from arena.scaffold import derive_names, scaffold

NAME = "arena-demo-noise"
ARENA = "from arena.cli import main; main()"


def new_plugin(name: str, directory: Path):
    return CliRunner().invoke(cli, ["new-plugin", "--dir", str(directory), "--", name])


def isolated_env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARENA_")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_python(args: list[str], env: dict[str, str], cwd: Path, timeout: int = 300):
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("name, pkg, attack_id, cls", [
    ("arena-noise", "arena_noise", "noise", "NoiseAttack"),
    ("arena-demo-noise", "arena_demo_noise", "demo-noise", "DemoNoiseAttack"),
    ("Square-Attack2", "square_attack2", "square-attack2", "SquareAttack2Attack"),
    ("arena-1x", "arena_1x", "1x", "Attack1x"),
])
def test_names_derived_from_name(name, pkg, attack_id, cls):
    names = derive_names(name)
    assert (names.dist, names.pkg, names.attack_id, names.cls) == (name, pkg, attack_id, cls)


def test_generated_package_installs_and_passes_its_contract(tmp_path):
    result = new_plugin(NAME, tmp_path)
    assert result.exit_code == 0, result.output
    pkg_dir = tmp_path / NAME
    assert str(pkg_dir) in result.output
    site = tmp_path / "site"
    install = run_python(["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q", "--target", str(site), str(pkg_dir)],
                         isolated_env(site), tmp_path)
    assert install.returncode == 0, install.stderr
    env = isolated_env(site)
    listed = run_python(["-c", ARENA, "plugins", "list", "--format", "json"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows["demo-noise"]["distribution"] == NAME
    assert rows["demo-noise"]["kind"] == "attack" and rows["demo-noise"]["norm"] == "linf"
    assert rows["demo-noise"]["plugin"] == NAME
    # the generated package's own tests, importing the installed copy (cwd holds no package)
    tests = run_python(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg_dir)], env, tmp_path)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout


def test_skeleton_files(tmp_path):
    target = scaffold("arena-jitter", tmp_path)
    assert target == tmp_path / "arena-jitter"
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == ["README.md", "arena_jitter/__init__.py", "arena_jitter/plugin.py",
                     "pyproject.toml", "tests/test_plugin.py"]
    pyproject = (target / "pyproject.toml").read_text()
    assert '[project.entry-points.arena]\narena-jitter = "arena_jitter.plugin"' in pyproject
    assert '"adversarial-arena"' in pyproject and "setuptools.build_meta" in pyproject
    assert 'id: ClassVar[str] = "jitter"' in (target / "arena_jitter/plugin.py").read_text()
    assert 'attack_id = "jitter"' in (target / "tests/test_plugin.py").read_text()


def test_empty_existing_folder_is_used(tmp_path):
    (tmp_path / "arena-jitter").mkdir()
    assert (scaffold("arena-jitter", tmp_path) / "pyproject.toml").is_file()


@pytest.mark.parametrize("name", ["1noise", "bad_name", "-noise", "noise-", "a--b", "ärena", "arena", "json"])
def test_bad_name_is_a_one_line_user_error(tmp_path, name):
    result = new_plugin(name, tmp_path)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_existing_non_empty_folder_is_not_overwritten(tmp_path):
    target = tmp_path / NAME
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    result = new_plugin(NAME, tmp_path)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "not empty" in lines[0]
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "mine"


def test_existing_file_is_refused(tmp_path):
    (tmp_path / "arena-noise").write_text("a file")
    with pytest.raises(ConfigError, match="not empty"):
        scaffold("arena-noise", tmp_path)


def test_id_taken_by_an_installed_plugin_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="'pgd' is already registered"):
        scaffold("arena-pgd", tmp_path)
    assert list(tmp_path.iterdir()) == []
