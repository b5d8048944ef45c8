"""Plugin discovery through the ``arena`` entry-point group, and its one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import arena
from arena import ConfigError, PluginError

GOOD = '''
from typing import ClassVar
import torch
from arena import hookimpl
from arena.attack import FixedBudgetAttack
from arena.plugin import PluginConfig

class Jitter(FixedBudgetAttack):
    """Uniform noise of size eps (a third-party test plugin)."""
    id: ClassVar[str] = "jitter"
    class Config(PluginConfig):
        scale: float = 1.0
    def run(self, model, x, y, eps, targets):
        return x + self.config.scale * eps * torch.empty_like(x).uniform_(-1, 1)

@hookimpl
def arena_register_attacks(register):
    register(Jitter)
'''

DUPLICATE = '''
from arena import hookimpl
from arena_builtins.attacks.gradient import FGSM

class MyFGSM(FGSM):
    """A second FGSM under the same id."""

@hookimpl
def arena_register_attacks(register):
    register(MyFGSM)
'''

UNKNOWN_HOOK = '''
from arena import hookimpl

@hookimpl
def arena_register_attackz(register):
    pass
'''


def make_dist(root: Path, dist: str, module: str, source: str) -> Path:
    """A minimal installed distribution: a module and a dist-info with an ``arena`` entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[arena]\n{module} = {module}\n")
    return root


def run_cli(*args: str, site: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    if site is not None:
        full_env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, "-m", "arena", *args], capture_output=True, text=True,
                          env=full_env, timeout=120)


def test_builtins_are_registered_through_entry_points():
    reg = arena.load_plugins()
    assert {"fgsm", "pgd"} <= set(reg.attacks)
    assert {"standard", "gda"} <= set(reg.defenses)
    assert {"digits", "fashion-mnist", "mnist", "cifar10", "synthetic"} <= set(reg.datasets)
    assert "digits-cnn" in reg.architectures and "torch" in reg.backends
    assert reg.owners[("attacks", "pgd")].distribution == "adversarial-arena"


def test_third_party_plugin_is_discovered(tmp_path, monkeypatch):
    site = make_dist(tmp_path / "site", "arena-jitter", "arena_jitter", GOOD)
    monkeypatch.syspath_prepend(str(site))
    reg = arena.load_plugins()
    assert reg.owners[("attacks", "jitter")].distribution == "arena-jitter"
    attack = reg.make_attack("jitter", scale=0.5)
    assert attack.config.scale == 0.5
    with pytest.raises(ConfigError, match=r"attack 'jitter': scael: unknown key \(did you mean 'scale'\?\)"):
        reg.make_attack("jitter", scael=1)
    listed = json.loads(run_cli("plugins", "list", "--format", "json", site=site).stdout)
    row = next(r for r in listed if r["id"] == "jitter")
    assert row == {**row, "kind": "attack", "knowledge": "white-box", "norm": "linf",
                   "distribution": "arena-jitter", "version": "1.2.3"}


@pytest.mark.parametrize("source, message", [
    ("import does_not_exist_anywhere\n", r"plugin 'arena_broken' \(arena-broken 1.2.3\) failed to import"),
    (DUPLICATE, r"duplicate attack id 'fgsm': registered by (?=.*plugin 'attacks-gradient' \(adversarial-arena )"
                r"(?=.*plugin 'arena_broken' \(arena-broken 1.2.3\))"),
    (UNKNOWN_HOOK, r"plugin 'arena_broken' \(arena-broken 1.2.3\) implements unknown hook "
                    r"'arena_register_attackz' \(did you mean 'arena_register_attacks'\?\)"),
])
def test_broken_plugins_give_one_line_errors(tmp_path, monkeypatch, source, message):
    monkeypatch.delitem(sys.modules, "arena_broken", raising=False)
    site = make_dist(tmp_path / "site", "arena-broken", "arena_broken", source)
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginError, match=message):
        arena.load_plugins()
    proc = run_cli("plugins", "list", site=site)
    assert proc.returncode == 2
    assert proc.stderr.startswith("Error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


def test_disabled_plugins_are_not_loaded(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "arena_broken", raising=False)
    site = make_dist(tmp_path / "site", "arena-broken", "arena_broken", "raise ImportError('boom')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("ARENA_DISABLE_PLUGINS", "arena_broken, attacks-gradient")
    reg = arena.load_plugins()
    assert "fgsm" not in reg.attacks and "standard" in reg.defenses


def test_unknown_ids_suggest_the_closest(registry):
    with pytest.raises(ConfigError, match=r"unknown attack 'pdg' \(did you mean 'pgd'\?\)"):
        registry.make_attack("pdg")
    with pytest.raises(ConfigError, match=r"unknown defense 'standrad' \(did you mean 'standard'\?\)"):
        registry.make_defense("standrad")


def test_registration_rules_are_enforced():
    from arena.attack import FixedBudgetAttack

    class NoDoc(FixedBudgetAttack):
        id = "no-doc"

    class BadId(FixedBudgetAttack):
        """Documented."""
        id = "Bad_Id"

    for cls, message in ((NoDoc, "needs a docstring"), (BadId, "must be kebab-case")):
        module = type(sys)("local_plugin")
        module.arena_register_attacks = arena.hookimpl(lambda register, c=cls: register(c))
        with pytest.raises(PluginError, match=message):
            arena.load_plugins(extra=[("local", module)], entry_points=False)


def test_trace_switch_reports_hook_calls(tmp_path):
    proc = run_cli("plugins", "list", env={"ARENA_TRACE_HOOKS": "1"})
    assert proc.returncode == 0
    assert "arena_register_attacks of plugin 'attacks-gradient'" in proc.stderr
