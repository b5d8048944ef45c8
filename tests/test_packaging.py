"""What gets installed: the core `arena` and the built-ins as `arena_builtins` (never a top-level
`plugins`), every package listed, one version, a licence, the Python versions that work."""
from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import arena

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, name in (("arena", "arena"), ("plugins", "arena_builtins")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    return found


def test_every_package_is_listed_and_none_is_called_plugins():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert listed == _packages_on_disk()
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"arena_builtins": "plugins"}
    assert not any(p == "plugins" or p.startswith("plugins.") for p in listed)


def test_entry_points_name_installed_modules():
    groups = PYPROJECT["project"]["entry-points"]
    targets = [t for group in groups.values() for t in group.values()]
    assert targets and all(t.split(".")[0] in ("arena", "arena_builtins") for t in targets)


def test_one_version_a_licence_and_honest_python_versions():
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "arena.__version__"}
    assert md.version("adversarial-arena") == arena.__version__
    assert "Apache License" in (ROOT / "LICENSE").read_text() and PYPROJECT["project"]["license"] == "Apache-2.0"
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"  # tomllib is 3.11+


def test_the_wheel_holds_arena_and_arena_builtins_only(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"arena", "arena_builtins"}
    assert "arena/py.typed" in names and "arena/testing/__init__.py" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
