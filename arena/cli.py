"""The ``arena`` command line. User mistakes exit with code 2 and a one-line message.

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


class ArenaGroup(click.Group):
    """The ``arena`` group: the core's commands plus those the ``arena.commands`` plugins add.

    The plugins load once, when the commands are listed (``arena --help``) or a name that the
    core does not provide is looked up, so ``arena run ...`` never imports them.
    ``command_owners`` maps each command name to the owner (entry point and distribution) that added it, or :data:`CORE`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plugins_loaded = False
        self.command_owners: dict[str, Any] = {}

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


@plugins.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
@user_errors
def plugins_list(obj: CliState, fmt: str) -> None:
    """List every attack, defense, dataset, architecture and backend found."""
    rows = obj.registry.rows()
    if fmt == "json":
        import json

        click.echo(json.dumps(rows, indent=2))
    else:
        from tabulate import tabulate

        click.echo(tabulate(rows, headers="keys"))


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--db", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="results database (default: FILE with .db next to it in ./results)")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              help="run in this process, or as Ray tasks")
@click.option("--address", default=None, help="Ray cluster to join (default: start a local one)")
@click.option("--resume", is_flag=True, help="finish the newest unfinished run of this file")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".arena/cache"))
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--format", "fmt", default="table", help="leaderboard format printed at the end")
@click.pass_obj
@user_errors
def run(obj: CliState, file: Path, db: Path | None, executor: str, address: str | None, resume: bool,
        cache_dir: Path, quiet: bool, fmt: str) -> None:
    """Run the tournament in FILE and print its leaderboard."""
    from arena.leaderboard import tables
    from arena.tournament.plan import load_tournament
    from arena.tournament.executors import make_executor
    from arena.tournament.runner import Runner
    from arena.tournament.store import Store

    plan = load_tournament(file, obj.registry)
    db = db or Path("results") / f"{file.stem}.db"
    store = Store(db)
    progress = not quiet and sys.stderr.isatty()
    resources = plan.config.resources
    pool = make_executor(executor, address, resources.num_cpus, resources.num_gpus)
    try:
        runner = Runner(plan, store, cache_dir=cache_dir, progress=progress, executor=pool,
                        source=str(file), source_text=file.read_text())
        run_id = runner.run(resume=resume)
    finally:
        pool.close()
    click.echo(tables.build(store, run_id).render(fmt))
    click.echo(f"results: {db}", err=True)


@cli.command()
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", default="table",
              type=click.Choice(["table", "markdown", "latex", "html", "csv", "json"]))
@click.option("--run", "run_id", type=int, default=None, help="run id (default: the newest)")
@click.option("--dataset", default=None, help="only if the run is on this dataset")
@click.option("--budget", type=float, default=None, help="only matches at this budget")
@click.option("--threat-model", "knowledge", default=None,
              type=click.Choice(["white-box", "gray-box", "black-box", "transfer", "adaptive"]),
              help="only these attacks")
@user_errors
def leaderboard(db: Path, fmt: str, run_id: int | None, dataset: str | None, budget: float | None,
                knowledge: str | None) -> None:
    """Print the leaderboard stored in DB."""
    from arena.leaderboard import tables
    from arena.tournament.store import Store

    board = tables.build(Store(db), run_id, dataset=dataset, budget=budget, knowledge=knowledge)
    click.echo(board.render(fmt))


@cli.command()
@click.argument("db", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--run", "run_id", type=int, default=None, help="run id (default: the newest)")
@user_errors
def publish(db: Path, directory: Path, run_id: int | None) -> None:
    """Write a self-contained static website of the leaderboard in DB into DIRECTORY."""
    from arena.leaderboard.site import publish as write_site
    from arena.tournament.store import Store

    index = write_site(Store(db), run_id, directory)
    click.echo(f"published {index}")


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
