"""The ``arena`` command line. User mistakes exit with code 2 and a one-line message.

Exit status: 0 success; 2 a user error (``Error: ...``, one line, click's usage errors
included); 3 ``arena run`` finished but some match failed or timed out (the results are stored
and the leaderboard printed); 130 / 143 ``arena run`` stopped by SIGINT / SIGTERM (the run is
left for ``--resume``).

Building the CLI is cheap (``arena --help`` imports neither torch nor the plugins of the
``arena`` group): the core's commands import what they need when they run, and the commands of
plugins come from the light modules of the ``arena.commands`` entry-point group, loaded with
pluggy (hook ``arena_register_commands``) the first time a command outside the core is looked
up or the commands are listed. Commands receive a :class:`CliState` as the click context object
(``@click.pass_obj``); its ``registry`` loads the installed plugins on first access.
"""
from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

if TYPE_CHECKING:
    from arena.registry import Registry

EXIT_USER_ERROR = 2
EXIT_MATCHES_FAILED = 3
EXIT_SIGNAL = 128  # + the signal's number: 130 for SIGINT, 143 for SIGTERM
LEADERBOARD_FORMATS = ["table", "markdown", "latex", "html", "csv", "json"]
COMMANDS_GROUP = "arena.commands"
CORE = "the arena core"


def user_errors(fn: Callable) -> Callable:
    """Turn arena errors into ``Error: ...`` on stderr and exit code 2, never a traceback.

    The one error handler of every ``arena`` command, the core's and the plugins' alike:
    put it under the click decorators (``@click.pass_obj`` included)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from arena.errors import ArenaError

        try:
            return fn(*args, **kwargs)
        except ArenaError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


class CliState:
    """The click context object (``ctx.obj``) of every ``arena`` command.

    ``registry`` is the installed plugins, loaded on first access (:func:`arena.load_plugins`)
    and then kept, so a command that needs no plugin never imports them. Pass
    ``CliState(registry)`` as ``obj`` to click's test runner to use a registry of your own.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self._registry = registry

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from arena.registry import load_plugins

            self._registry = load_plugins()
        return self._registry


class PluginCommandError(click.ClickException):
    """A command plugin failed to load: click prints ``Error: <message>`` and exits with 2."""

    exit_code = EXIT_USER_ERROR


class OneLineUsageError(click.ClickException):
    """A click usage error (unknown option, bad value, missing argument) as one line
    ``Error: <message> (see 'arena run --help')`` with exit code 2, instead of click's three
    lines (Usage:, Try ..., Error:)."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, exc: click.UsageError) -> None:
        message = " ".join(exc.format_message().split())
        if exc.ctx is not None:
            message += f" (see '{exc.ctx.command_path} --help')"
        super().__init__(message)


def one_line_usage(exc: click.UsageError) -> click.ClickException:
    """``exc`` as a one-line error; ``arena`` alone (help shown for no arguments) stays help."""
    return exc if isinstance(exc, click.exceptions.NoArgsIsHelpError) else OneLineUsageError(exc)


class ArenaGroup(click.Group):
    """The ``arena`` group: the core's commands plus those the ``arena.commands`` plugins add.

    The plugins load once, when the commands are listed (``arena --help``) or a name that the
    core does not provide is looked up, so ``arena run ...`` never imports them.
    ``command_owners`` maps each command name to the owner (entry point and distribution) that
    added it, or :data:`CORE`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plugins_loaded = False
        self.command_owners: dict[str, Any] = {}

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:  # arena --bogus
            raise one_line_usage(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # every subcommand's, plugin commands' included
            raise one_line_usage(exc) from None

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            self.load_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def load_plugin_commands(self) -> None:
        """Call every ``arena_register_commands`` of the ``arena.commands`` group, once; a
        broken plugin leaves the group as it was and raises :class:`PluginCommandError`."""
        if self.plugins_loaded:
            return
        self.command_owners.update({name: CORE for name in self.commands if name not in self.command_owners})
        commands, owners = dict(self.commands), dict(self.command_owners)
        try:
            register_plugin_commands(self)
        except Exception as exc:
            from arena.errors import PluginError

            self.commands, self.command_owners = commands, owners
            if isinstance(exc, PluginError):
                raise PluginCommandError(str(exc)) from exc
            raise
        self.plugins_loaded = True


def register_plugin_commands(group: ArenaGroup) -> None:
    """Load the ``arena.commands`` entry points (minus those blocked by
    ``ARENA_DISABLE_PLUGINS``) with the plugin loader and let each add its commands to ``group``
    (``ARENA_TRACE_HOOKS`` prints each call). Errors are :class:`arena.PluginError` naming the
    plugin and its distribution: a failed import, an unknown hook, a hook that raises, a command
    name that is taken already."""
    from arena import discovery

    loaded = discovery.load(COMMANDS_GROUP)
    for owner, function in loaded.implementations("arena_register_commands"):
        before = dict(group.commands)
        try:
            function(cli=group)
        except Exception as exc:
            raise discovery.plugin_error(f"{owner} failed in arena_register_commands: "
                                         f"{type(exc).__name__}: {exc}") from exc
        for name, command in group.commands.items():
            if name in before and before[name] is not command:
                raise discovery.plugin_error(f"{owner} adds command '{name}', which "
                                             f"{group.command_owners[name]} already provides")
            group.command_owners.setdefault(name, owner)


@click.group(cls=ArenaGroup)
@click.version_option(package_name="adversarial-arena")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Adversarial defenses meet adversarial attacks in round-robin tournaments."""
    ctx.ensure_object(CliState)


@cli.group()
def plugins() -> None:
    """Inspect installed plugins."""


KIND_HELP = "attack, defense, dataset, architecture, backend or metric (singular or plural)"


@plugins.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--kind", default=None, help=f"only plugins of this kind: {KIND_HELP}")
@click.pass_obj
@user_errors
def plugins_list(obj: CliState, fmt: str, kind: str | None) -> None:
    """List every attack, defense, dataset, architecture, backend and metric found.

    The norm column lists every norm an attack works in, its default first."""
    from arena.registry import plural_kind

    kinds = None if kind is None else [plural_kind(kind)]
    rows = obj.registry.rows(kinds)
    if fmt == "json":
        import json

        click.echo(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate

        click.echo(tabulate(rows, headers="keys"))


@plugins.command("show")
@click.argument("plugin_id", metavar="ID")
@click.option("--kind", default=None, help=f"the kind, where two kinds use ID: {KIND_HELP}")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@user_errors
def plugins_show(obj: CliState, plugin_id: str, kind: str | None, fmt: str) -> None:
    """Show one plugin: its docstring, kind, norms, distribution and config fields (type,
    default, constraints, description)."""
    info = obj.registry.describe(plugin_id, kind)
    if fmt == "json":
        import json

        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    click.echo(_plugin_text(info))


def _plugin_text(info: dict[str, Any]) -> str:
    from tabulate import tabulate

    def yes(flag: str) -> str:
        return "yes" if info[flag] else "no"

    facts = [f"kind: {info['kind']}"]
    if "knowledge" in info:
        facts.append(f"knowledge: {info['knowledge']}")
    if info.get("norms"):
        facts.append(f"norms: {', '.join(info['norms'])}")
    for flag, name in (("minimal", "minimal"), ("supports_targeted", "targeted"), ("trains", "trains"),
                       ("wraps_model", "wraps a model")):
        if flag in info:
            facts.append(f"{name}: {yes(flag)}")
    lines = [f"{info['id']} ({info['class']})",
             f"distribution: {info['distribution']} {info['version']} (entry point {info['plugin']})",
             "; ".join(facts), "", info["doc"], ""]
    fields = info["config"]
    if not fields:
        lines.append("config: no parameters")
    else:
        rows = [[f["name"], f["type"], "(required)" if f["required"] else _shown(f["default"]),
                 ", ".join(f["constraints"]), f["description"]] for f in fields]
        lines.append("config:")
        lines.append(tabulate(rows, headers=["field", "type", "default", "constraints", "description"],
                              maxcolwidths=[None, 32, 24, None, 60]))
    return "\n".join(lines)


def _shown(value: Any) -> str:
    import json

    if isinstance(value, str):
        return value
    return "None" if value is None else json.dumps(value, ensure_ascii=False)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="results database (default: FILE with .db next to it in ./results)")
@click.option("--executor", type=click.Choice(["local", "ray", "inline"]), default="local",
              help="worker processes of this machine, Ray tasks, or this very process (debugging)")
@click.option("--address", default=None, help="Ray cluster to join (default: start a local one)")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="local executor: tasks run at once, each in its own worker process with an equal share of "
                   "the cores (a sharded match's shards spread over them)")
@click.option("--resume", is_flag=True, help="finish the newest unfinished run of this file")
@click.option("--fresh", is_flag=True,
              help="compute every result again (default: take those an earlier run of DB stored under the same key)")
@click.option("--dry-run", is_flag=True,
              help="print what would be built, run and taken from DB, and the expected work; run nothing")
@click.option("--smoke", is_flag=True,
              help="run FILE cut to toy scale (every entry kept; a few samples, images, epochs, steps and queries) "
                   "into DB (default: results/FILE-smoke.db), to check in minutes that it runs end to end; "
                   "its figures mean nothing")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".arena/cache"))
@click.option("--quiet", "-q", is_flag=True, help="no progress: only errors and the final leaderboard")
@click.option("--verbose", "-v", is_flag=True,
              help="also a line when each task starts, and the stored rows' details")
@click.option("--log", "log", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="append the progress lines to this file (whatever the terminal)")
@click.option("--format", "fmt", default="table", type=click.Choice(LEADERBOARD_FORMATS),
              help="leaderboard format printed at the end")
@click.pass_obj
@user_errors
def run(obj: CliState, file: Path, db: Path | None, executor: str, address: str | None, workers: int,
        resume: bool, fresh: bool, dry_run: bool, smoke: bool, cache_dir: Path, quiet: bool, verbose: bool,
        log: Path | None, fmt: str) -> None:
    """Run the tournament in FILE and print its leaderboard.

    Exit status 0 when every match ran, 3 when some match failed or timed out (its row is
    stored and listed under the leaderboard), 2 for a mistake in FILE or the options, 130 / 143
    when stopped by SIGINT / SIGTERM (finish the run with --resume).

    Progress goes to stderr: a bar on a terminal, else one line per finished training or match
    (with its robust accuracy and the time left, weighted by each task's expected cost); the
    leaderboard goes to stdout.

    A run takes every result an earlier run of DB stored under the same key (what determines
    it: the samples, the model, the attack, the budget): adding a defense, an attack or a budget
    to FILE runs only the new matches; --fresh computes everything again, --dry-run shows what
    would run. --smoke runs FILE at toy scale into a database of its own: a check, in minutes,
    that a long file runs end to end before the long run."""
    import signal

    from arena.errors import Interrupted

    if smoke:
        db = db or Path("results") / f"{file.stem}-smoke.db"
    if dry_run:
        _dry_run(obj, file, db, smoke)
        return
    if workers > 1 and executor != "local":
        from arena.errors import ConfigError

        why = ("the inline executor runs one task at a time, in this process" if executor == "inline" else
               "a Ray cluster runs as many tasks as its CPUs allow (see [resources] in the tournament file)")
        raise ConfigError(f"--workers {workers} is for the local executor; {why}")
    output = _output(quiet, verbose, log)
    started: list[Any] = []  # the runner, once built: it knows the run id
    previous = _on_sigterm(_raise_interrupted)
    try:
        run_id, store = _run_tournament(obj, file, db, executor, address, resume, cache_dir, output, started,
                                        reuse=not fresh, workers=workers, smoke=smoke)
    except (KeyboardInterrupt, Interrupted) as exc:
        run_id = getattr(started[0], "run_id", None) if started else None
        stopped = f"run {run_id} stopped; finish it with --resume" if run_id is not None else "no run started"
        click.echo(f"interrupted: {stopped}", err=True)
        number = signal.SIGTERM if isinstance(exc, Interrupted) else signal.SIGINT
        sys.exit(EXIT_SIGNAL + number)
    finally:
        _on_sigterm(previous)
    _report(store, run_id, fmt)


def _run_tournament(obj: CliState, file: Path, db: Path | None, executor: str, address: str | None,
                    resume: bool, cache_dir: Path, output: Any, started: list[Any],
                    reuse: bool = True, workers: int = 1, smoke: bool = False) -> tuple[int, Any]:
    if executor == "local":  # the workers' forkserver imports torch while this process does too
        from arena.tournament.workers import warm_up

        warm_up()
    from arena.api import run_tournament
    from arena.tournament.plan import load_tournament

    return run_tournament(lambda: load_tournament(file, obj.registry, smoke=smoke),
                          db or Path("results") / f"{file.stem}.db",
                          executor=executor, address=address, resume=resume, cache_dir=cache_dir,
                          progress=output, source=str(file), source_file=file, started=started, reuse=reuse,
                          workers=workers)


def _dry_run(obj: CliState, file: Path, db: Path | None, smoke: bool = False) -> None:
    """``arena run --dry-run``: the plan, against what DB holds (opened read-only, if it exists)."""
    from arena.tournament.dryrun import preview
    from arena.tournament.plan import load_tournament
    from arena.tournament.store import Store

    plan = load_tournament(file, obj.registry, smoke=smoke)
    db = db or Path("results") / f"{file.stem}.db"
    store = Store(db, readonly=True) if db.is_file() and db.stat().st_size > 0 else None
    try:
        click.echo(preview(plan, db, store).render())
    finally:
        if store is not None:
            store.close()


def _output(quiet: bool, verbose: bool, log: Path | None) -> Any:
    """The progress options of ``arena run`` (:class:`arena.tournament.progress.Output`); a log
    file that cannot be appended to is an error before anything runs."""
    from arena.errors import ConfigError
    from arena.tournament.progress import Output

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    if log is not None:
        try:
            with open(log, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise ConfigError(f"{log}: cannot append the log there: {exc.strerror or exc}") from None
    return Output(mode="quiet" if quiet else "auto", verbose=verbose, log=log)


def _report(store: Any, run_id: int, fmt: str) -> None:
    """Print the leaderboard; exit with 3 when some match of the run failed or timed out."""
    from arena.leaderboard import tables

    click.echo(tables.build(store, run_id).render(fmt))
    click.echo(f"results: {store.path}", err=True)
    matches = store.matches(run_id)
    failed = [m for m in matches if not m.ok]
    if failed:
        click.echo(f"{len(failed)} of {len(matches)} matches failed or timed out (see the notes); "
                   f"exit status {EXIT_MATCHES_FAILED}", err=True)
        sys.exit(EXIT_MATCHES_FAILED)


def _raise_interrupted(signum: int, frame: Any) -> None:
    from arena.errors import Interrupted

    raise Interrupted("SIGTERM")


_NOT_INSTALLED = object()


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM and return the previous one, to be restored the same way
    (nothing happens off the main thread, where Python cannot install handlers)."""
    import signal
    import threading

    if handler is _NOT_INSTALLED or threading.current_thread() is not threading.main_thread():
        return _NOT_INSTALLED
    previous = signal.signal(signal.SIGTERM, handler)
    return signal.SIG_DFL if previous is None else previous


@cli.command()
@click.argument("dbs", metavar="DB", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", default="table", type=click.Choice(LEADERBOARD_FORMATS))
@click.option("--run", "run_id", type=int, default=None,
              help="one run of one database (default: the newest result of each pair over every run)")
@click.option("--dataset", default=None, help="only if the run is on this dataset")
@click.option("--budget", type=float, default=None, help="only matches at this budget")
@click.option("--threat-model", "knowledge", default=None,
              type=click.Choice(["white-box", "gray-box", "black-box", "transfer", "adaptive"]),
              help="only these attacks")
@user_errors
def leaderboard(dbs: tuple[Path, ...], fmt: str, run_id: int | None, dataset: str | None, budget: float | None,
                knowledge: str | None) -> None:
    """Print the leaderboard stored in DB (several: combined).

    Without --run, the newest result of each defense × attack × budget over every run of the
    databases that was measured on the same samples as the newest one."""
    from arena.leaderboard import tables
    from arena.leaderboard.combine import open_view

    board = tables.build(open_view(list(dbs), run_id), run_id, dataset=dataset, budget=budget, knowledge=knowledge)
    click.echo(board.render(fmt))


@cli.command()
@click.argument("paths", metavar="DB... DIRECTORY", nargs=-1)
@click.option("--run", "run_id", type=int, default=None,
              help="one run of one database (default: the newest result of each pair over every run)")
@click.pass_context
@user_errors
def publish(ctx: click.Context, paths: tuple[str, ...], run_id: int | None) -> None:
    """Write a self-contained static website of the leaderboard in DB... into DIRECTORY."""
    index = _write_out(ctx, paths, run_id, "arena.leaderboard.site:publish", "the site")
    click.echo(f"published {index}")


@cli.command()
@click.argument("paths", metavar="DB... DIRECTORY", nargs=-1)
@click.option("--run", "run_id", type=int, default=None,
              help="one run of one database (default: the newest result of each pair over every run)")
@click.pass_context
@user_errors
def export(ctx: click.Context, paths: tuple[str, ...], run_id: int | None) -> None:
    """Write one JSON file per defense of the leaderboard in DB... into DIRECTORY (the fields a
    public leaderboard keeps: model, architecture, training data, clean and robust accuracy at
    each budget with the attack that broke each example, sample count, provenance)."""
    written = _write_out(ctx, paths, run_id, "arena.leaderboard.export:export_defenses", "the export")
    click.echo(f"exported {len(written)} defenses to {paths[-1]}")


@cli.command()
@click.argument("db", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@user_errors
def runs(db: Path, fmt: str) -> None:
    """List the runs stored in the results database DB: id, name, status, start, duration,
    matches ok and failed, config hash and tournament file."""
    from arena.tournament.store import Store

    store = Store(db, readonly=True)
    listed = [_run_summary(store, run_id) for run_id in store.run_ids()]
    if fmt == "json":
        import json

        click.echo(json.dumps(listed, indent=2))
        return
    if not listed:
        click.echo(f"{db}: no runs")
        return
    from tabulate import tabulate

    from arena.tournament.progress import clock_time

    rows = [[r["id"], r["name"], r["status"], _local_time(r["started"]),
             clock_time(r["duration_seconds"]) if r["duration_seconds"] is not None else "-",
             r["matches_ok"], r["matches_failed"], r["config_hash"][:12], r["source"] or "-"] for r in listed]
    click.echo(tabulate(rows, headers=["id", "name", "status", "started", "duration", "ok", "failed",
                                       "config hash", "source"]))


def _run_summary(store: Any, run_id: int) -> dict[str, Any]:
    """One run of ``store`` as ``arena runs`` lists it (times in seconds since the epoch)."""
    record = store.run(run_id)
    matches = store.matches(run_id)
    ok = sum(1 for m in matches if m.ok)
    reused = sum(1 for m in matches if isinstance((getattr(m, "provenance", None) or {}).get("reused"), dict))
    finished = record.finished
    return {"id": record.id, "name": record.name, "status": record.status, "started": record.started,
            "finished": finished,
            "duration_seconds": None if finished is None else max(0.0, finished - record.started),
            "matches_ok": ok, "matches_failed": len(matches) - ok, "matches_reused": reused,
            "config_hash": record.config_hash,
            "source": record.source, "dataset": record.dataset, "seed": record.seed}


def _local_time(stamp: float | None) -> str:
    import time

    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _write_out(ctx: click.Context, paths: tuple[str, ...], run_id: int | None, writer: str, what: str) -> Any:
    """``writer(view, run_id, directory)`` (``module:function``, imported once the arguments are
    checked, so that a usage error imports nothing heavy) for ``DB... DIRECTORY``: the
    leaderboard view of the databases written into the folder; a folder that cannot be written
    is a one-line error."""
    import importlib

    dbs, directory = _dbs_and_directory(ctx, paths)
    from arena.errors import ConfigError
    from arena.leaderboard.combine import open_view

    module, name = writer.split(":")
    write = getattr(importlib.import_module(module), name)
    try:
        return write(open_view(dbs, run_id), run_id, directory)
    except OSError as exc:  # an unwritable or vanished folder: the user's to fix, in one line
        where = exc.filename or directory
        raise ConfigError(f"{where}: cannot write {what} there: {exc.strerror or exc}") from None


def _dbs_and_directory(ctx: click.Context, paths: tuple[str, ...]) -> tuple[list[Path], Path]:
    """``DB... DIRECTORY``: at least one existing database file, then the output folder, each
    checked as click checks an argument (one-line usage errors naming DB or DIRECTORY)."""
    if not paths:
        raise click.UsageError("Missing argument 'DB'.", ctx)
    if len(paths) == 1:
        raise click.UsageError("Missing argument 'DIRECTORY'.", ctx)
    db = click.Argument(["db"], type=click.Path(exists=True, dir_okay=False, path_type=Path))
    out = click.Argument(["directory"], type=click.Path(file_okay=False, path_type=Path))
    return [db.type.convert(p, db, ctx) for p in paths[:-1]], out.type.convert(paths[-1], out, ctx)


@cli.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."))
@user_errors
def new_plugin(name: str, directory: Path) -> None:
    """Write a pip-installable plugin package skeleton named NAME."""
    from arena.scaffold import scaffold

    path = scaffold(name, directory)
    click.echo(f"created {path}; install it with: pip install -e {path}")


def main() -> None:
    cli(prog_name="arena")
