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
    ["runs", "--help"], ["plugins", "show", "--help"],
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
    ["plugins", "show"],
    ["runs"],
    ["run", "t.toml", "--quiet", "--verbose"],
    ["no-such-command"],
])
def test_bad_usage_exits_2_without_importing_torch(args, tmp_path):
    proc = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True, text=True,
                          env=clean_env(), timeout=120, cwd=tmp_path)
    assert proc.stdout.splitlines()[-1] == "RESULT 2 False False", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("Error: "), proc.stderr  # no Usage:/Try


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


# ------------------------------------------------------------------ exit status of `arena run`
RUN_FILE = """
name = "status"
dataset = "digits"
architecture = "digits-cnn"
samples = 8
[[defenses]]
id = "standard"
[[attacks]]
id = "fgsm"
budgets = [0.1, 0.2]
"""


def _fake_runner(monkeypatch, body):
    """``Runner.run`` replaced by ``body(runner)`` after a run is started: nothing trains."""
    from arena.tournament import runner as runner_module

    def run(self, resume=False):
        self.run_id = self.store.start_run(self.plan.name, self.plan.digest(), {"dataset": {"id": "digits"}},
                                           self.source, self.source_text, 42, 0.0, {})
        self.store.save_model(self.run_id, defense="standard", defense_id="standard", defense_kind="training-time",
                              config={}, clean_accuracy=1.0, clean_mask="11", false_positive_rate=None,
                              cache_key=None, train_seconds=0.0, checks={})
        body(self)
        self.store.finish_run(self.run_id, 1.0)
        return self.run_id

    monkeypatch.setattr(runner_module.Runner, "run", run)


def _match(self, budget, status):
    from arena.tournament.store import MatchRow

    ok = status == "ok"
    self.store.save_match(self.run_id, MatchRow(
        defense="standard", attack="fgsm", budget=budget, attack_id="fgsm", attack_config={}, norm="linf",
        knowledge="white-box", status=status, robust_accuracy=0.5 if ok else None,
        success_rate=0.5 if ok else None, robust_mask="10" if ok else None, wall_seconds=1.0,
        error=None if ok else "RuntimeError: boom"))


def _run(registry, tmp_path):
    from click.testing import CliRunner

    path = tmp_path / "status.toml"
    path.write_text(RUN_FILE)
    return CliRunner().invoke(arena_cli.cli, ["run", str(path), "--db", str(tmp_path / "r.db"), "--quiet",
                                              "--cache-dir", str(tmp_path / "cache")],
                              obj=arena_cli.CliState(registry))


@pytest.mark.parametrize("statuses, code", [(("ok", "ok"), 0), (("ok", "failed"), 3), (("timed-out", "ok"), 3)])
def test_run_exits_3_when_a_match_failed_or_timed_out(registry, tmp_path, monkeypatch, statuses, code):
    _fake_runner(monkeypatch, lambda self: [_match(self, b, s) for b, s in zip((0.1, 0.2), statuses)])
    result = _run(registry, tmp_path)
    assert result.exit_code == code, result.output
    assert "status on digits (run 1" in result.stdout  # the leaderboard is printed all the same
    assert f"results: {tmp_path / 'r.db'}" in result.stderr
    assert ("1 of 2 matches failed or timed out" in result.stderr) is (code == 3)


@pytest.mark.parametrize("how, code", [("sigint", 130), ("sigterm", 143)])
def test_an_interrupted_run_says_how_to_finish_it(registry, tmp_path, monkeypatch, how, code):
    import signal
    import time

    def interrupt(self):
        _match(self, 0.1, "ok")
        if how == "sigint":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises arena.errors.Interrupted here
        raise AssertionError("SIGTERM was not handled")

    before = signal.getsignal(signal.SIGTERM)
    _fake_runner(monkeypatch, interrupt)
    result = _run(registry, tmp_path)
    assert result.exit_code == code, result.output
    assert result.stderr.strip() == "interrupted: run 1 stopped; finish it with --resume"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the run command's only


def test_interrupted_is_an_arena_error():
    from arena.errors import ArenaError, Interrupted

    assert issubclass(Interrupted, ArenaError) and str(Interrupted("SIGTERM")) == "SIGTERM"


def test_a_model_file_that_fails_to_load_fails_its_matches_and_the_exit_status(registry, tmp_path):
    """A file that looks like a torch.save zip but is not one passes the load-time sniff and fails
    in the entrant's build: its matches are stored as failed, with one line, and the exit is 3."""
    import zipfile

    from click.testing import CliRunner

    from arena.tournament.store import Store

    with zipfile.ZipFile(tmp_path / "broken.pt", "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    path = tmp_path / "file.toml"
    entry = f'id = "model-file"\nparams = {{ path = "{tmp_path}/broken.pt" }}'
    path.write_text(RUN_FILE.replace('id = "standard"', entry))
    result = CliRunner().invoke(arena_cli.cli, ["run", str(path), "--db", str(tmp_path / "r.db"), "--quiet",
                                                "--executor", "inline", "--cache-dir", str(tmp_path / "cache")],
                                obj=arena_cli.CliState(registry))
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    matches = Store(tmp_path / "r.db").matches(1)
    assert [m.status for m in matches] == ["failed", "failed"]
    assert all("broken.pt" in m.error and "\n" not in m.error for m in matches)


@pytest.mark.parametrize("args, message", [
    (["run", "t.toml", "--zzz-no-such-option"], "Error: No such option '--zzz-no-such-option'. (see 'arena run --help')"),
    (["run", "t.toml", "--format", "xml"], ("Error: Invalid value for '--format': 'xml' is not one of 'table', "
                                            "'markdown', 'latex', 'html', 'csv', 'json'. (see 'arena run --help')")),
    (["leaderboard"], "Error: Missing argument 'DB'. (see 'arena leaderboard --help')"),
])
def test_a_usage_error_is_one_line(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True, text=True,
                          env=clean_env(), timeout=120, cwd=tmp_path)
    assert proc.stdout.splitlines()[-1] == "RESULT 2 False False", proc.stderr
    assert proc.stderr.splitlines() == [message]
