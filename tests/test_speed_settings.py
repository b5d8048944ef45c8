"""The tournament's optional ``[speed]`` settings (channels_last, compile, autocast): off by default
with the resume hash unchanged, applied to an entrant after it is built (never to training or the
cache), recorded in its model row's provenance, passing the harness's exact model check, pickling
to workers, and refused in one line when misspelt.

``torch.compile`` itself takes 10-30 s per graph on a CPU, so the compile cases here replace it
with a stand-in (``benchmarks/bare_loop.py --speed`` times the real one)."""
from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from pydantic import BaseModel

import arena
from arena.attack import FixedBudgetAttack
from arena.errors import AttackError, ConfigError
from arena.model import SpeedModel, SpeedSettings, speed_record, with_speed, without_speed
from arena.tournament.config import Speed, TournamentConfig, read_tournament
from arena.tournament.entrants import EntrantSpec, prepare, providers
from arena.tournament.plan import parse_tournament

CONFIG = {
    "name": "speed", "dataset": "digits", "architecture": "digits-cnn", "samples": 120, "batch_size": 64,
    "training": {"epochs": 3},
    "defenses": [{"id": "standard"}, {"id": "feature-squeezing", "on": "standard"}],
    "attacks": [{"id": "pgd", "params": {"steps": 5}, "budgets": [0.1]}],
}
CHANNELS_LAST = SpeedSettings(channels_last=True)
BF16 = SpeedSettings(autocast="bf16")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    plan = parse_tournament(CONFIG, arena.load_plugins())
    data = plan.dataset.build().load(plan.seed)
    cache = tmp_path_factory.mktemp("cache")
    return plan, data, data.test.take(plan.config.samples, plan.seed), str(cache)


def _prepare(setup, speed=None, label="standard", *parents):
    plan, data, evaluation, cache = setup
    d = plan.defense(label)
    code = providers(plan.registry, defenses=d.id, architectures=d.architecture.id, datasets=plan.dataset.id)
    spec = EntrantSpec(d, plan.dataset, plan.seed, plan.config.batch_size, cache, code, speed=speed)
    return prepare(spec, data, evaluation, *parents)


@pytest.fixture(scope="module")
def plain(setup):
    """The entrant with no speed setting (trains once; the others load it from the cache)."""
    return _prepare(setup)


# ------------------------------------------------------------------ the file's key
BASE = {"dataset": "digits", "architecture": "digits-cnn", "defenses": [{"id": "standard"}],
        "attacks": [{"id": "pgd", "budgets": [0.1]}]}


def test_off_by_default_and_digest_unchanged(monkeypatch, plain):
    cfg = read_tournament(BASE, "t.toml")
    assert cfg.speed == Speed() and cfg.speed.settings() is None
    assert EntrantSpec.__dataclass_fields__["speed"].default is None
    assert "speed" not in plain.model_row["provenance"] and not isinstance(plain.entrant.model, SpeedModel)
    digest = cfg.digest()
    # left out, an empty table, or every setting off: one hash, the hash of a schema without the key
    for off in ({}, {"channels_last": False, "compile": False, "autocast": "off"}):
        assert read_tournament({**BASE, "speed": off}, "t.toml").digest() == digest
    dump = TournamentConfig.model_dump
    monkeypatch.setattr(TournamentConfig, "model_dump", lambda self, **kw: {
        k: v for k, v in dump(self, **kw).items() if k != "speed"})
    assert cfg.digest() == digest
    monkeypatch.undo()
    for on in ({"channels_last": True}, {"compile": True}, {"autocast": "bf16"}):
        other = read_tournament({**BASE, "speed": on}, "t.toml")
        assert other.digest() != digest and other.speed.settings().active


@pytest.mark.parametrize("speed, message", [
    ({"autocast": "fp16"}, 'speed.autocast: expected "off" or "bf16", got "fp16" (float16 gradients underflow'),
    ({"autocast": "bf61"}, "speed.autocast: expected \"off\" or \"bf16\", got \"bf61\" (did you mean 'bf16'?)"),
    ({"autocast": True}, 'speed.autocast: expected "off" or "bf16", got true'),
    ({"compile": "yes"}, 'speed.compile: expected true or false, got "yes"'),
    ({"channels_last": 1}, "speed.channels_last: expected true or false, got 1"),
    ({"channel_last": True}, "speed.channel_last: unknown key (did you mean 'channels_last'?)"),
])
def test_invalid_values_are_one_line_errors(speed, message):
    with pytest.raises(ConfigError) as err:
        read_tournament({**BASE, "speed": speed}, "t.toml")
    text = str(err.value)
    assert text.startswith("t.toml: ") and message in text and "\n" not in text


def test_settings_refuse_unknown_autocast():
    with pytest.raises(ValueError, match="autocast"):
        SpeedSettings(autocast="fp16")


# ------------------------------------------------------------------ the entrant
@pytest.mark.parametrize("speed, record", [(CHANNELS_LAST, {"channels_last": True}),
                                           (BF16, {"autocast": "bf16"})])
def test_setting_is_recorded_and_keeps_clean_accuracy(setup, plain, speed, record):
    fast = _prepare(setup, speed)
    row, model = fast.model_row, fast.entrant.model
    assert row["provenance"]["speed"] == record and fast.entrant.provenance["speed"] == record
    assert row["provenance"]["backend"] == plain.model_row["provenance"]["backend"]
    assert isinstance(model, SpeedModel) and fast.entrant.base is model
    assert row["cache_key"] == plain.model_row["cache_key"]  # the weights are the cached plain model's
    assert abs(row["clean_accuracy"] - plain.model_row["clean_accuracy"]) <= 0.02
    plain_state = plain.entrant.model.state_dict()
    assert all(torch.equal(v, plain_state[k]) for k, v in without_speed(model).state_dict().items())
    evaluation = setup[2]
    x = evaluation.x[:64]
    assert model(x).dtype == torch.float32
    assert (model(x).argmax(1) == plain.entrant.model(x).argmax(1)).float().mean() >= 0.95
    registry = setup[0].registry
    for attack, eps in ((registry.make_attack("pgd", steps=5), 0.1),
                        (registry.make_attack("cw-l2", steps=10, binary_search_steps=1), None)):
        result = attack(model, x, evaluation.y[:64], eps, seed=0, context=fast.entrant.defense)
        assert result.success.dtype == torch.bool and torch.isfinite(result.x_adv).all()


def test_channels_last_converts_weights_and_inputs(setup, plain):
    model = _prepare(setup, CHANNELS_LAST).entrant.model
    convs = [p for p in without_speed(model).parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)


class _Tamper(FixedBudgetAttack):
    id = "tamper-speed"

    def run(self, model, x, y, eps, targets):
        with torch.no_grad():
            next(without_speed(model).parameters()).add_(1.0)
        return x


def test_harness_still_catches_a_change_under_the_wrapper(setup):
    model = _prepare(setup, SpeedSettings(channels_last=True, autocast="bf16")).entrant.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = setup[2].x[:8], setup[2].y[:8]
    with pytest.raises(AttackError, match="modified the model"):
        _Tamper()(model, x, y, 0.1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_wrapper_defense_wraps_the_network_not_the_speed_wrapper(setup):
    parent = _prepare(setup, BF16).entrant
    child = _prepare(setup, BF16, "feature-squeezing", parent)
    model = child.entrant.model
    assert isinstance(model, SpeedModel) and not isinstance(without_speed(model), SpeedModel)
    inner = [m for m in without_speed(model).modules() if isinstance(m, SpeedModel)]
    assert not inner and child.model_row["provenance"]["speed"] == {"autocast": "bf16"}
    base = child.entrant.base  # the parent's network, wrapped afresh
    assert isinstance(base, SpeedModel) and without_speed(base) is without_speed(parent.base)
    x = setup[2].x[:8]
    assert torch.allclose(model.bpda_forward(x), model(x))  # the declared hook, under the same settings


def test_pickles_for_a_worker(setup):
    model = _prepare(setup, SpeedSettings(channels_last=True, autocast="bf16")).entrant.model
    copy = pickle.loads(pickle.dumps(model))
    x = setup[2].x[:16]
    assert type(copy) is type(model) and copy.settings == model.settings
    assert torch.equal(copy(x), model(x))


def test_compile_is_recorded_and_falls_back_in_one_line(setup, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(module) or module)
    compiled = _prepare(setup, SpeedSettings(compile=True))
    record = compiled.model_row["provenance"]["speed"]
    assert calls and record["compile"] is True and record["compile_seconds"] >= 0

    def broken(module, **kw):
        def run(x):
            raise RuntimeError("no working C++ compiler\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    eager = _prepare(setup, SpeedSettings(compile=True))
    record = eager.model_row["provenance"]["speed"]["compile"]
    assert record == {"requested": True, "running": "eager", "error": "RuntimeError: no working C++ compiler"}
    assert eager.model_row["clean_accuracy"] == compiled.model_row["clean_accuracy"]

    def unavailable(module, **kw):
        raise RuntimeError("torch.compile is not supported on this Python")

    monkeypatch.setattr(torch, "compile", unavailable)
    record = _prepare(setup, SpeedSettings(compile=True)).model_row["provenance"]["speed"]["compile"]
    assert record["running"] == "eager" and "not supported" in record["error"]


def test_speed_helpers_leave_plain_models_alone():
    net = torch.nn.Linear(3, 2)
    assert with_speed(net, None) is net and with_speed(net, SpeedSettings()) is net
    assert without_speed(net) is net and speed_record(net) is None
    wrapped = with_speed(net, BF16)
    assert with_speed(wrapped, CHANNELS_LAST) is wrapped  # never two wrappers
    assert dataclasses.asdict(wrapped.settings) == {"channels_last": False, "compile": False, "autocast": "bf16"}
    assert isinstance(Speed(), BaseModel)


def test_tournament_in_worker_processes_records_the_setting(tmp_path, monkeypatch):
    """A whole tournament with ``[speed]``, its entrant built and attacked in a worker process
    (the wrapper pickles there and back). The runner hands ``cfg.speed.settings()`` to each
    EntrantSpec; the partial supplies it where a runner does not yet."""
    import functools

    from arena.tournament import runner as runner_module
    from arena.tournament.runner import Runner
    from arena.tournament.store import Store

    speed = {"channels_last": True, "autocast": "bf16"}
    data = {**CONFIG, "samples": 60, "defenses": CONFIG["defenses"][:1], "speed": speed}
    plan = parse_tournament(data, arena.load_plugins())
    monkeypatch.setattr(runner_module, "EntrantSpec",
                        functools.partial(EntrantSpec, speed=plan.config.speed.settings()))
    store = Store(tmp_path / "r.db")
    run_id = Runner(plan, store, cache_dir=tmp_path / "cache", progress=False).run()
    (model,) = store.models(run_id)
    assert model.provenance["speed"] == speed
    (match,) = store.matches(run_id)
    assert match.status == "ok" and 0 <= match.robust_accuracy <= model.clean_accuracy
