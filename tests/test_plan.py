"""The resolved plan: a tournament file validated once, every plugin reference resolved against
the registry that loaded it, at load time."""
from __future__ import annotations

import math
import types
from typing import ClassVar

import pytest
import torch

import arena
from arena import hookimpl
from arena.backends.torch import TorchBackend
from arena.errors import ConfigError
from arena.tournament.plan import View, parse_tournament
from arena_builtins.attacks.gradient import FGSM

BASE = {"name": "plan", "dataset": "digits", "architecture": "digits-cnn", "samples": 20,
        "defenses": [{"id": "standard"}], "attacks": [{"id": "fgsm", "budgets": [0.1]}]}


def with_(**changes):
    return {**BASE, **changes}


class LocalFGSM(FGSM):
    """FGSM under another id, registered only through ``load_plugins(extra=...)`` (Goodfellow et
    al., ICLR 2015)."""

    id: ClassVar[str] = "local-fgsm"


class NpyBackend(TorchBackend):
    """A torch state dict under a suffix of its own, registered only through ``extra``."""

    id: ClassVar[str] = "local-npt"
    suffixes: ClassVar[tuple[str, ...]] = (".npt",)


@hookimpl
def arena_register_attacks(register):
    register(LocalFGSM)


@hookimpl
def arena_register_backends(register):
    register(NpyBackend)


@pytest.fixture(scope="module")
def local_registry():
    module = types.ModuleType("local_plugins")
    module.arena_register_attacks = arena_register_attacks
    module.arena_register_backends = arena_register_backends
    return arena.load_plugins(extra=[("local-plugins", module)])


def test_a_typo_in_training_is_an_error(registry):
    with pytest.raises(ConfigError, match=r"training: epocs: unknown key \(did you mean 'epochs'\?\)"):
        parse_tournament(with_(training={"epocs": 1}), registry)
    with pytest.raises(ConfigError, match="training: epochs"):
        parse_tournament(with_(training={"epochs": 0}), registry)


def test_training_defaults_reach_training_time_defenses_only(registry):
    plan = parse_tournament(with_(training={"epochs": 2, "lr": 0.01}, defenses=[
        {"id": "standard"}, {"id": "standard", "name": "own", "params": {"epochs": 3}},
        {"id": "feature-squeezing", "on": "standard"}]), registry)
    assert plan.defense("standard").defense.config.epochs == 2
    assert plan.defense("own").defense.config.epochs == 3 and plan.defense("own").defense.config.lr == 0.01


def test_a_preset_wins_over_the_training_defaults_and_loses_to_explicit_params(registry):
    """A paper's preset (seed 002: batches of 500) is not silently replaced by [training]."""
    plan = parse_tournament(with_(training={"batch_size": 64, "epochs": 2}, defenses=[
        {"id": "standard"},
        {"id": "jacobian-reg", "params": {"preset": "seed002-mnist"}},
        {"id": "jacobian-reg", "name": "own", "params": {"preset": "seed002-mnist", "batch_size": 100}}]), registry)
    assert plan.defense("standard").defense.config.batch_size == 64
    preset = plan.defense("jacobian-reg").defense.config
    assert preset.batch_size == 500 and preset.form == "eq4" and preset.epochs == 2  # epochs: not in the preset
    assert plan.defense("own").defense.config.batch_size == 100


@pytest.mark.parametrize("defense, error", [
    ({"id": "adversarial-training", "params": {"attack": "pgx"}}, "unknown attack 'pgx' (did you mean 'pgd'?)"),
    ({"id": "adversarial-training", "params": {"attack": {"id": "pgd", "params": {"stpes": 2}}}},
     "stpes: unknown key (did you mean 'steps'?)"),
    ({"id": "dln", "on": "standard", "params": {"attack": "fgsn"}}, "unknown attack 'fgsn'"),
    ({"id": "jacobian-reg", "params": {"adversarial": {"attack": "cw-l3"}}}, "unknown attack 'cw-l3'"),
])
def test_nested_plugin_references_are_checked_when_the_file_loads(registry, defense, error):
    defenses = [{"id": "standard"}, {**defense, "name": "nested"}]
    with pytest.raises(ConfigError) as info:
        parse_tournament(with_(defenses=defenses), registry)
    assert "defenses[1].params" in str(info.value) and error in str(info.value)


@pytest.mark.parametrize("attack, error", [
    ({"id": "eot", "params": {"inner": "hopskipjump"}}, "needs a white-box (gradient) attack"),
    ({"id": "repeated", "params": {"inner": "deepfool"}}, "minimal-perturbation attack"),
    ({"id": "substitute", "params": {"architecture": "digits-cn"}}, "unknown architecture 'digits-cn'"),
    ({"id": "substitute", "params": {"inner": {"id": "pgd", "params": {"norm": "l2"}}}}, "norm linf"),
])
def test_attack_references_are_checked_when_the_file_loads(registry, attack, error):
    with pytest.raises(ConfigError, match="attacks\\[0\\].params") as info:
        parse_tournament(with_(attacks=[{**attack, "budgets": [0.1]}]), registry)
    assert error in str(info.value)


def test_references_resolve_against_the_registry_that_loaded_the_plan(local_registry):
    """Plugins added with ``load_plugins(extra=...)`` serve as the attacks and backends that other
    plugins name (they used to be looked up in private registries of the installed plugins)."""
    plan = parse_tournament(with_(
        defenses=[{"id": "standard"},
                  {"id": "adversarial-training", "name": "at", "params": {"attack": "local-fgsm", "eps": 0.1}},
                  {"id": "dln", "on": "standard", "params": {"attack": "local-fgsm"}}],
        attacks=[{"id": "eot", "params": {"inner": "local-fgsm"}, "budgets": [0.1]},
                 {"id": "repeated", "params": {"inner": "local-fgsm", "rounds": 2}, "budgets": [0.1]},
                 {"id": "substitute", "params": {"inner": "local-fgsm"}, "budgets": [0.1]}]), local_registry)
    assert type(plan.defense("at").defense.generator.attack) is LocalFGSM
    assert plan.defense("dln").defense.config.attack.cls is LocalFGSM
    eot, repeated, substitute = (a.attack for a in plan.attacks)
    assert type(eot.inner) is LocalFGSM and type(repeated.inner) is LocalFGSM
    from arena_builtins.attacks.substitute import inner_attack
    assert type(inner_attack(substitute.config)) is LocalFGSM


def test_a_model_file_backend_is_found_in_the_plans_registry(local_registry, tmp_path, model):
    path = tmp_path / "digits.npt"
    torch.save(model.state_dict(), path)
    plan = parse_tournament(with_(defenses=[{"id": "model-file", "params": {"path": str(path)}}]), local_registry)
    defense = plan.defense("model-file").defense
    assert defense.config.backend.id == "local-npt"
    data = local_registry.make_dataset("digits").load(42)
    loaded = defense.load(plan.architecture.build(), data)
    assert torch.allclose(loaded(data.test.x[:4]), model(data.test.x[:4]))
    with pytest.raises(ConfigError, match="no backend reads '.npt' files"):
        parse_tournament(with_(defenses=[{"id": "model-file", "params": {"path": str(path)}}]), arena.load_plugins())


def test_disabled_plugins_stay_disabled_for_references(monkeypatch):
    monkeypatch.setenv("ARENA_DISABLE_PLUGINS", "attacks-gradient")
    without = arena.load_plugins()
    monkeypatch.delenv("ARENA_DISABLE_PLUGINS")
    with pytest.raises(ConfigError, match="unknown attack 'pgd'"):
        parse_tournament(with_(attacks=[{"id": "deepfool"}],
                               defenses=[{"id": "adversarial-training", "params": {"attack": "pgd"}}]), without)


def test_budgets_and_views_are_decided_once(registry):
    plan = parse_tournament(with_(defenses=[{"id": "standard"}, {"id": "gda", "params": {"copies": 2}}], attacks=[
        {"id": "deepfool", "budgets": [0.5, 0.1]},
        {"id": "eot", "params": {"inner": "deepfool"}},
        {"id": "eot", "name": "eot-pgd", "params": {"inner": "pgd"}, "budgets": [0.2]},
        {"id": "pgd", "name": "gray", "view": "gray-box", "budgets": [0.1]},
        {"id": "pgd", "name": "transfer", "surrogate": "standard", "budgets": [0.1]}]), registry)
    deepfool, eot, eot_pgd, gray, transfer = plan.attacks
    assert deepfool.budgets == (0.1, 0.5, math.inf) and eot.budgets == (math.inf,) and eot_pgd.budgets == (0.2,)
    assert eot.minimal and not eot_pgd.minimal
    assert deepfool.view.kind is View.DIRECT and gray.view.kind is View.GRAY_BOX
    assert transfer.view.kind is View.TRANSFER and transfer.view.surrogate == "standard"
    # crafting off target runs every step: a first hit on the crafting model is not the judge's
    assert gray.attack.config.early_stop is False and transfer.attack.config.early_stop is False
    assert deepfool.attack is plan.attacks[0].attack  # built once, shared by every match


@pytest.mark.parametrize("budgets", [[float("nan")], [float("inf")], [0.0], [-0.1]])
def test_a_budget_is_checked_in_one_place(registry, budgets):
    with pytest.raises(ConfigError, match="a budget must be a finite number above 0"):
        parse_tournament(with_(attacks=[{"id": "fgsm", "budgets": budgets}]), registry)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="a budget must be a finite number above 0"):
        registry.make_attack("fgsm")(model, x, y, budgets[0])
