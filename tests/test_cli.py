"""The ``arena`` command line: a cheap ``--help``, plugin commands through the
``arena_register_commands`` hook (entry-point group ``arena.commands``), their one-line errors,
and a core that names no plugin."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import arena
from arena import cli as arena_cli

ROOT = Path(__file__).resolve().parents[1]

HELLO = '''
import click
from arena import ConfigError, hookimpl
from arena.cli import user_errors

@hookimpl
def arena_register_commands(cli):
    @cli.command()
    @click.argument("name")
    @click.pass_obj
    @user_errors
    def hello(obj, name):
        """Greet NAME (a third-party command)."""
        if name == "nobody":
            raise ConfigError("hello: nobody to greet")
        click.echo(f"hello {name}: {'pgd' in obj.registry.attacks}")
'''

BROKEN = {
    "import": "import does_not_exist_anywhere\n",
    "raises": '''
        from arena import hookimpl

        @hookimpl
        def arena_register_commands(cli):
            raise RuntimeError("no commands today")
    ''',
    "unknown-hook": '''
        from arena import hookimpl

        @hookimpl
        def arena_register_command(cli):
            pass
    ''',
    "clash": '''
        import click
        from arena import hookimpl

        @hookimpl
        def arena_register_commands(cli):
            @cli.command("run")
            def run():
                """Not the tournament."""
    ''',
}

MESSAGES = {
    "import": "failed to import: ModuleNotFoundError: No module named 'does_not_exist_anywhere'",
    "raises": "failed in arena_register_commands: RuntimeError: no commands today",
    "unknown-hook": "implements unknown hook 'arena_register_command' (did you mean 'arena_register_commands'?)",
    "clash": "adds command 'run', which the arena core already provides",
}


def make_command_dist(root: Path, dist: str, module: str, source: str) -> Path:
    """An installed distribution whose module is an ``arena.commands`` entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[arena.commands]\n{module} = {module}\n")
    return root


def clean_env(site: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARENA_")}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return {**env, **extra}


def arena_cmd(*args: str, site: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "arena", *args], capture_output=True, text=True,
                          env=clean_env(site, **extra), timeout=120, cwd=ROOT)


IMPORTS = """
import sys
from arena.cli import main
sys.argv = ["arena", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print("RESULT", code, "torch" in sys.modules, "tabulate" in sys.modules)
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["run", "--help"], ["plugins", "--help"], ["train", "--help"], ["leaderboard", "--help"],
])
def test_help_imports_neither_torch_nor_tabulate(args, tmp_path):
    proc = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True, text=True,
                          env=clean_env(), timeout=120, cwd=tmp_path)
    assert proc.stdout.splitlines()[-1] == "RESULT 0 False False", proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("args", [
    ["train"],
    ["train", "--architecture", "digits-cnn", "--out", "m.pt", "--param", "oops"],
    ["train", "--architecture", "digits-cnn", "--out", "m.pt", "--keras-backend", "torch"],
    ["run"],
    ["run", "t.toml", "--executor", "slurm"],
    ["leaderboard", "missing.db"],
    ["publish"],
    ["new-plugin"],
    ["plugins", "list", "--format", "xml"],
    ["no-such-command"],
])
def test_bad_usage_exits_2_without_importing_torch(args, tmp_path):
    proc = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True, text=True,
                          env=clean_env(), timeout=120, cwd=tmp_path)
    assert proc.stdout.splitlines()[-1] == "RESULT 2 False False", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Error: " in proc.stderr and "Traceback" not in proc.stderr


def test_train_is_a_command_plugin():
    from click.testing import CliRunner

    result = CliRunner().invoke(arena_cli.cli, ["--help"])
    assert result.exit_code == 0 and "train" in result.output
    assert arena_cli.cli.command_owners["train"].plugin == "commands-keras"
    assert arena_cli.cli.command_owners["run"] == arena_cli.CORE


def test_a_third_party_command_appears_in_help_and_runs(tmp_path):
    site = make_command_dist(tmp_path / "site", "arena-hello", "arena_hello", HELLO)
    helped = arena_cmd("--help", site=site)
    assert helped.returncode == 0, helped.stderr
    assert "hello" in helped.stdout and "Greet NAME" in helped.stdout and "train" in helped.stdout
    ran = arena_cmd("hello", "world", site=site)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hello world: True"  # obj.registry: the installed plugins
    bad = arena_cmd("hello", "nobody", site=site)
    assert bad.returncode == 2 and bad.stderr.strip() == "Error: hello: nobody to greet"
    traced = arena_cmd("hello", "--help", site=site, ARENA_TRACE_HOOKS="1")
    assert "arena: calling arena_register_commands of plugin 'arena_hello' (arena-hello 1.2.3)" in traced.stderr
    blocked = arena_cmd("hello", "world", site=site, ARENA_DISABLE_PLUGINS="arena_hello")
    assert blocked.returncode == 2 and "No such command 'hello'" in blocked.stderr


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_command_plugin_gives_one_line(tmp_path, case):
    site = make_command_dist(tmp_path / "site", "arena-broken-cmd", "arena_broken_cmd", BROKEN[case])
    proc = arena_cmd("--help", site=site)
    assert proc.returncode == 2, proc.stdout
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("Error: plugin 'arena_broken_cmd' (arena-broken-cmd 1.2.3) ")
    assert MESSAGES[case] in proc.stderr
    # the core's own commands do not load command plugins; a blocked plugin is not imported
    assert arena_cmd("run", "--help", site=site).returncode == 0
    assert arena_cmd("--help", site=site, ARENA_DISABLE_PLUGINS="arena_broken_cmd").returncode == 0


def test_a_disabled_command_plugin_is_not_loaded():
    proc = arena_cmd("--help", ARENA_DISABLE_PLUGINS="commands-keras")
    assert proc.returncode == 0 and "train" not in proc.stdout and "publish" in proc.stdout


def test_a_command_plugin_in_process_restores_the_group_on_failure(monkeypatch):
    """A hook that fails leaves the group as it was, so the next lookup tries again."""
    import click
    from click.testing import CliRunner

    calls = []

    def failing(group):
        calls.append(1)
        group.add_command(click.Command("half", callback=lambda: None))
        from arena.errors import PluginError

        raise PluginError("plugin 'x' (x 1.0) failed in arena_register_commands: boom")

    group = arena_cli.ArenaGroup("arena", commands={"core": click.Command("core", callback=lambda: None)})
    monkeypatch.setattr(arena_cli, "register_plugin_commands", failing)
    result = CliRunner().invoke(group, ["--help"])
    assert result.exit_code == 2 and result.output.strip().endswith("failed in arena_register_commands: boom")
    assert set(group.commands) == {"core"} and not group.plugins_loaded
    assert CliRunner().invoke(group, ["core"]).exit_code == 0 and len(calls) == 1


def test_the_registry_loads_on_first_access(monkeypatch):
    import arena.registry

    loads = []
    monkeypatch.setattr(arena.registry, "load_plugins", lambda: loads.append(1) or object())
    state = arena_cli.CliState()
    assert not loads
    assert state.registry is state.registry and len(loads) == 1
    given = object()
    assert arena_cli.CliState(given).registry is given and len(loads) == 1


def test_arena_exports_lazily():
    from arena import ConfigError, PluginError, Registry, hookimpl, load_plugins  # noqa: F401

    assert issubclass(ConfigError, arena.ArenaError) and callable(arena.load_plugins)
    assert {"load_plugins", "Registry", "ConfigError"} <= set(dir(arena))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        arena.nope  # noqa: B018
