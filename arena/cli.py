"""The ``arena`` command line. User mistakes exit with code 2 and a one-line message."""
from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import Any, Callable

import click
from tabulate import tabulate

from arena.errors import ArenaError

EXIT_USER_ERROR = 2


def user_errors(fn: Callable) -> Callable:
    """Turn arena errors into ``Error: ...`` on stderr and exit code 2, never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ArenaError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def _registry():
    from arena.registry import load_plugins

    return load_plugins()


@click.group()
@click.version_option(package_name="adversarial-arena")
def cli() -> None:
    """Adversarial defenses meet adversarial attacks in round-robin tournaments."""


@cli.group()
def plugins() -> None:
    """Inspect installed plugins."""


@plugins.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@user_errors
def plugins_list(fmt: str) -> None:
    """List every attack, defense, dataset, architecture and backend found."""
    rows = _registry().rows()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
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
@user_errors
def run(file: Path, db: Path | None, executor: str, address: str | None, resume: bool, cache_dir: Path,
        quiet: bool, fmt: str) -> None:
    """Run the tournament in FILE and print its leaderboard."""
    from arena.leaderboard import tables
    from arena.tournament.config import load_tournament
    from arena.tournament.executors import make_executor
    from arena.tournament.runner import Runner
    from arena.tournament.store import Store

    registry = _registry()
    cfg = load_tournament(file, registry)
    db = db or Path("results") / f"{file.stem}.db"
    store = Store(db)
    progress = not quiet and sys.stderr.isatty()
    pool = make_executor(executor, address, cfg.resources.num_cpus, cfg.resources.num_gpus)
    try:
        runner = Runner(cfg, registry, store, cache_dir=cache_dir, progress=progress, executor=pool,
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


def _add_train_command() -> None:
    """``arena train``: train a paper architecture with Keras (or torch) and save the model file."""
    from arena.backends.keras_train import train

    cli.add_command(train)


_add_train_command()


def main() -> None:
    cli(prog_name="arena")
