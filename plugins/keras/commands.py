"""``arena train``: train a paper architecture with Keras (or torch) and save the model file.

A command plugin of the ``arena.commands`` entry-point group (``commands-keras``): the CLI
imports it to build ``arena --help``, so it imports click and the arena CLI only; torch, Keras
and the training code (:mod:`arena_builtins.keras.train`) are imported when the command runs.
"""
from __future__ import annotations

import json
from typing import Any

import click

from arena import hookimpl
from arena.cli import CliState, user_errors


def parse_pairs(pairs: tuple[str, ...], what: str) -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict; values are JSON where they parse (``3``, ``0.5``, ``true``)."""
    from arena.errors import ConfigError

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: expected KEY=VALUE, got '{pair}'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@click.command("train")
@click.option("--backend", type=click.Choice(["torch", "keras"]), default="torch", show_default=True,
              help="train the torch network (state dict .pt) or its Keras version (.keras/.h5)")
@click.option("--architecture", required=True, help="architecture id (keras: keras-mnist-cnn, tf-tutorial-cnn, "
              "seed001-cnn, digits-cnn)")
@click.option("--dataset", default="digits", show_default=True, help="dataset id")
@click.option("--defense", default="standard", show_default=True,
              help="training-time defense id (keras: standard, gda, brelu, gda-brelu, label-smoothing)")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="defense parameter (repeatable)")
@click.option("--dataset-param", "dataset_params", multiple=True, metavar="KEY=VALUE",
              help="dataset parameter, e.g. train_size=6000 (repeatable)")
@click.option("--arch-param", "arch_params", multiple=True, metavar="KEY=VALUE",
              help="architecture parameter, e.g. width=0.5 (repeatable)")
@click.option("--epochs", type=int, default=None, help="default: the defense's own")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--keras-backend", type=click.Choice(["tensorflow", "torch"]), default=None,
              help="Keras backend (default: KERAS_BACKEND, else tensorflow)")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="model file to write")
@click.option("--quiet", is_flag=True, help="no progress output")
@click.pass_obj
@user_errors
def train(obj: CliState, backend: str, architecture: str, dataset: str, defense: str, params: tuple,
          dataset_params: tuple, arch_params: tuple, epochs: int | None, batch_size: int | None,
          lr: float | None, seed: int, keras_backend: str | None, out: str, quiet: bool) -> None:
    """Train ARCHITECTURE on DATASET with a training-time DEFENSE and save the model file."""
    from arena.errors import ConfigError

    if backend != "keras" and keras_backend is not None:
        raise ConfigError("--keras-backend applies to --backend keras only")
    kw = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, verbose=0 if quiet else 2,
              defense_params=parse_pairs(params, "--param"),
              dataset_params=parse_pairs(dataset_params, "--dataset-param"),
              architecture_params=parse_pairs(arch_params, "--arch-param"))
    from arena_builtins.keras.train import train_keras, train_torch

    if backend == "keras":
        done = train_keras(architecture, dataset, out, defense, registry=obj.registry,
                           keras_backend=keras_backend, **kw)
    else:
        done = train_torch(architecture, dataset, out, defense, registry=obj.registry, **kw)
    click.echo(f"saved {done.path} ({architecture} on {dataset}, defense {defense}, {done.backend}): "
               f"test accuracy {done.test_accuracy:.3f}, trained in {done.seconds:.1f} s")


@hookimpl
def arena_register_commands(cli: click.Group) -> None:
    cli.add_command(train)
