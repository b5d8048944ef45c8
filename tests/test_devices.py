"""The device paths, on the CPU and (where present) on CUDA: the ``device`` fixture runs each test
once per device, and its ``cuda`` case is skipped on a machine without one.

The tournament's device is :func:`arena.model.default_device` (CUDA when torch sees one); the
tests that build entrants or run a tournament set it to the fixture's device in this process
(the inline executor and :func:`prepare` run here), so the ``cpu`` case also covers a CUDA machine
whose GPU is hidden (``CUDA_VISIBLE_DEVICES=""``: no setting or option of arena names the device;
with the Ray executor, ``[resources] num_gpus`` decides whether a task sees the GPU). The local
executor's workers decide for themselves, so its test runs on ``default_device()`` only.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types
from typing import ClassVar

import numpy as np
import pytest
import torch

import arena
from arena import isolation, testing
from arena import model as arena_model
from arena.attack import FixedBudgetAttack
from arena.backends.torch import read_state_dict
from arena.backends.torchscript import TorchScriptModel, _unpickle
from arena.errors import QueryBudgetExceeded
from arena.model import QueryOracle, default_device, model_device, seeded
from arena.tournament.entrants import EntrantSpec, Prepared, prepare, providers
from arena.tournament.executors import InlineExecutor, LocalExecutor
from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store
from arena_builtins.defenses.noise import NoisyLogitsModel

TINY = {"name": "devices", "dataset": "digits", "architecture": "digits-cnn", "samples": 40, "batch_size": 20,
        "training": {"epochs": 1}, "attacks": [{"id": "fgsm", "budgets": [0.1]}]}
JIT = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # the backend reads TorchScript


def on_device(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    """``default_device()`` answers ``device`` in this process: in :mod:`arena.model` and in every
    arena module that imported it by name (entrants, matches, the runner's provenance)."""
    original = arena_model.default_device
    for name, module in list(sys.modules.items()):
        if name.startswith("arena") and getattr(module, "default_device", None) is original:
            monkeypatch.setattr(module, "default_device", lambda: device)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _build(config: dict, tmp_path) -> Prepared:
    """The first entrant of ``config`` built as the runner builds it."""
    reg = testing.registry()
    plan = parse_tournament({**TINY, **config}, reg)
    data = plan.dataset.build().load(plan.seed)
    evaluation = data.test.take(plan.config.samples, plan.seed)
    defense = plan.defenses[0]
    code = providers(reg, defenses=defense.id, architectures=defense.architecture.id, datasets=plan.dataset.id)
    spec = EntrantSpec(defense, plan.dataset, plan.seed, plan.config.batch_size, str(tmp_path / "cache"), code)
    return prepare(spec, data, evaluation)


def _on_cpu(value) -> bool:
    """Whether no tensor in ``value`` (nested tuples, lists, dicts) lives off the CPU."""
    if isinstance(value, torch.Tensor):
        return value.device.type == "cpu"
    if isinstance(value, (tuple, list)):
        return all(_on_cpu(v) for v in value)
    if isinstance(value, dict):
        return all(_on_cpu(v) for v in value.values())
    return True


# ------------------------------------------------------------------------------- selection

def test_the_default_device_is_cuda_exactly_when_torch_sees_one():
    assert default_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_hiding_the_gpu_is_how_a_user_selects_the_cpu():
    """No setting or option names the device: ``CUDA_VISIBLE_DEVICES=""`` hides the GPU."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", "from arena.model import default_device; print(default_device())"],
                         env=env, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "cpu"


# ------------------------------------------------------------------------------- model moves

def test_an_entrant_is_trained_and_cached_on_the_device(device, monkeypatch, tmp_path):
    on_device(monkeypatch, device)
    config = {"defenses": [{"id": "standard"}]}
    trained = _build(config, tmp_path)
    assert model_device(trained.entrant.model).type == device.type
    assert trained.entrant.clean_correct.device.type == "cpu" and trained.entrant.clean_correct.dtype == torch.bool
    # the second build comes from the cache (torch.load on the CPU), moved to the device
    cached = _build(config, tmp_path)
    assert cached.entrant.cache_key == trained.entrant.cache_key
    assert model_device(cached.entrant.model).type == device.type
    assert all(torch.equal(a, b) for a, b in zip(_state(trained.entrant.model).values(),
                                                 _state(cached.entrant.model).values()))
    assert torch.equal(cached.entrant.clean_correct, trained.entrant.clean_correct)


def test_a_model_file_saved_on_the_device_is_read_on_the_cpu_and_moved(device, monkeypatch, tmp_path):
    on_device(monkeypatch, device)
    net = testing.trained_model().to(device)
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)  # the file's tensors carry the device they were saved from
    assert all(t.device.type == "cpu" for t in read_state_dict(path).values())  # map_location="cpu"
    built = _build({"defenses": [{"id": "model-file", "params": {"path": str(path)}}]}, tmp_path)
    assert model_device(built.entrant.model).type == device.type
    assert all(torch.equal(a, b) for a, b in zip(_state(net).values(), _state(built.entrant.model).values()))
    x, y = testing.attack_batch(16)
    with torch.no_grad():  # samples the trained CNN classifies correctly (on the CPU)
        assert float((built.entrant.model(x.to(device)).argmax(1).cpu() == y).float().mean()) >= 0.9


@JIT
def test_a_torchscript_model_keeps_its_device_through_pickling(device):
    net = testing.trained_model()
    x, _ = testing.attack_batch(8)
    wrapped = TorchScriptModel(torch.jit.trace(net, x)).to(device).eval()
    again = pickle.loads(pickle.dumps(wrapped))  # as it travels to worker and attacker processes
    assert model_device(again).type == device.type
    with torch.no_grad():
        assert torch.allclose(again(x.to(device)), wrapped(x.to(device)))


@JIT
def test_a_torchscript_model_from_a_cuda_machine_lands_on_the_cpu_without_one(monkeypatch):
    import io

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(testing.trained_model(), testing.attack_batch(4)[0]), buffer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert model_device(_unpickle(buffer.getvalue(), "cuda:0", False)).type == "cpu"


# ------------------------------------------------------------------------------- seeded RNG

def test_seeded_replays_a_randomised_defense_s_noise_on_the_device(device):
    noisy = NoisyLogitsModel(testing.trained_model().to(device), sigma=1.0).eval()
    x = testing.attack_batch(16)[0].to(device)
    with torch.no_grad():
        with seeded(7, device):
            first = noisy(x)
        with seeded(7, device):
            again = noisy(x)
        with seeded(8, device):
            other = noisy(x)
        plain = noisy.base(x)
    assert first.device.type == device.type
    assert torch.equal(first, again)
    assert not torch.equal(first, other) and not torch.equal(first, plain)


def test_seeded_restores_the_generators_it_forks(device):
    """The CPU generator always, and the device's own when it is a CUDA device: the draws after
    the block are those that would have come without it."""
    def after(block: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(123)
        if block:
            with seeded(5, device):
                torch.randn(7, device=device), torch.randn(3)
        return torch.randn(4), torch.randn(4, device=device)

    cpu_plain, dev_plain = after(False)
    cpu_seeded, dev_seeded = after(True)
    assert torch.equal(cpu_plain, cpu_seeded)
    assert torch.equal(dev_plain, dev_seeded)


def test_cpu_draws_move_the_device_s_noise_only_when_they_share_its_generator(device):
    """On CUDA the CPU and the device have separate generators: a CPU draw inside the block
    leaves the device's noise as it was; on the CPU the two draw from one generator."""
    noisy = NoisyLogitsModel(testing.trained_model().to(device), sigma=1.0).eval()
    x = testing.attack_batch(8)[0].to(device)
    with torch.no_grad():
        with seeded(3, device):
            alone = noisy(x)
        with seeded(3, device):
            torch.rand(5)  # e.g. an attack drawing its random start on the CPU
            after_cpu_draw = noisy(x)
    assert torch.equal(alone, after_cpu_draw) == (device.type == "cuda")


# ------------------------------------------------------------------------------- the harness

@pytest.mark.parametrize("attack_id, params, eps", [("fgsm", {}, 0.3), ("pgd", {"steps": 5}, 0.3),
                                                    ("pgd", {"norm": "l2", "steps": 5}, 2.0)])
def test_white_box_attacks_keep_their_tensors_on_the_device(device, attack_id, params, eps):
    net = testing.trained_model().to(device)
    before = _state(net)
    x, y = (t.to(device) for t in testing.attack_batch(24))
    attack = testing.registry().make_attack(attack_id, **params)
    result = attack(net, x, y, eps, seed=0)
    for name in ("x_adv", "success", "distance", "queries"):
        assert getattr(result, name).device.type == device.type, name
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    measured = result.norm.measure(result.x_adv - x)
    assert bool((measured <= eps * (1 + 1e-5) + 1e-6).all()) and torch.allclose(measured, result.distance)
    assert float(result.success.float().mean()) > 0.2  # the 8x8 digits CNN is fooled at these budgets
    assert model_device(net).type == device.type  # the harness checked and restored it in place
    assert all(torch.equal(a, b) for a, b in zip(before.values(), _state(net).values()))


def test_the_query_oracle_answers_and_counts_on_the_model_s_device(device):
    net = testing.trained_model().to(device)
    x = testing.attack_batch(6)[0].to(device)
    oracle = QueryOracle(net, 6, output="scores", budget=2, device=device)
    scores = oracle(x)
    assert scores.device.type == device.type and not scores.requires_grad
    assert torch.allclose(scores.sum(1), torch.ones(6, device=device))
    labels = QueryOracle(net, 6, device=device)(x[:2], torch.tensor([4, 5], device=device))
    assert labels.device.type == device.type and labels.dtype == torch.long
    assert oracle.counts.device.type == device.type and oracle.total == 6
    oracle(x[:3], torch.tensor([0, 1, 2], device=device))
    with pytest.raises(QueryBudgetExceeded):
        oracle(x[:1], torch.tensor([0], device=device))
    assert oracle.counts.tolist() == [2, 2, 2, 1, 1, 1]


@pytest.fixture()
def crossing(monkeypatch):
    """What crosses the pipe to and from the attacker process, as this (the harness's) side
    sends and receives it."""
    sent, received = [], []
    send, recv = isolation._send, isolation._recv

    def spy_send(conn, message):
        sent.append(message)
        send(conn, message)

    def spy_recv(conn):
        message = recv(conn)
        received.append(message)
        return message

    monkeypatch.setattr(isolation, "_send", spy_send)
    monkeypatch.setattr(isolation, "_recv", spy_recv)
    return sent, received


def test_a_black_box_attack_on_a_device_model_queries_it_through_the_cpu(device, crossing):
    """The attacker process gets CPU copies of the inputs; every query and answer crosses the pipe
    as numpy arrays and is moved to the model's device on the harness's side."""
    sent, received = crossing
    net = testing.trained_model().to(device)
    x, y = (t.to(device) for t in testing.attack_batch(12))
    square = testing.registry().make_attack("square", max_queries=40)
    with isolation.setting(True):
        result = square(net, x, y, 0.3, seed=0)
    for name in ("x_adv", "success", "distance", "queries"):
        assert getattr(result, name).device.type == device.type, name
    assert bool((result.distance <= 0.3 + 1e-6).all())
    assert int(result.queries.min()) >= 1 and int(result.queries.max()) <= 40
    assert sent[0][0] == "attack" and _on_cpu(sent[0]) and sent[0][7] == str(device)
    queries = [m for m in received if m[0] == "query"]
    answers = [m for m in sent if m[0] == "answer"]
    assert queries and len(answers) == len(queries)
    assert all(isinstance(a, np.ndarray) for m in queries for a in m[1:] if a is not None)
    assert all(isinstance(m[1], np.ndarray) and isinstance(m[2], np.ndarray) for m in answers)
    assert received[-1][0] == "done" and _on_cpu(received[-1])
    assert int(result.queries.sum()) == sum(len(m[1]) for m in queries)  # the harness counted every row


def test_a_gray_box_call_elsewhere_comes_back_to_the_device(device, crossing):
    """The gray-box path sends the base classifier itself (plainly pickled, on its device) and
    CPU inputs; the attacker process moves both to the device and sends CPU results back."""
    sent, received = crossing
    net = testing.trained_model().to(device)
    x, y = (t.to(device) for t in testing.attack_batch(12))
    fgsm = testing.registry().make_attack("fgsm")
    result = isolation.call_elsewhere(fgsm, net, x, y, 0.3, seed=0)
    for name in ("x_adv", "success", "distance", "queries"):
        assert getattr(result, name).device.type == device.type, name
    assert bool((result.distance <= 0.3 + 1e-6).all()) and float(result.success.float().mean()) > 0.2
    message = sent[0]
    assert message[0] == "call" and message[7] == str(device) and _on_cpu(message[4:7])
    assert model_device(message[3]).type == device.type  # the model travels as it is
    assert received[-1][0] == "done" and _on_cpu([received[-1][1].x_adv, received[-1][1].distance])


# ------------------------------------------------------------------------------- a tournament

def test_a_tiny_tournament_runs_on_the_device_with_the_inline_executor(device, monkeypatch, tmp_path, crossing):
    on_device(monkeypatch, device)
    data = {**TINY, "defenses": [{"id": "standard"}, {"id": "nac", "on": "standard"}],
            "attacks": [{"id": "fgsm", "budgets": [0.1, 0.3]}, {"id": "pgd", "params": {"steps": 3}, "budgets": [0.3]},
                        {"id": "noise", "params": {"draws": 4}, "budgets": [0.3]}]}
    plan = parse_tournament(data, testing.registry())
    store = Store(tmp_path / "r.db")
    with isolation.setting(True):  # the black-box noise attack goes through the attacker process
        runner = Runner(plan, store, cache_dir=tmp_path / "cache", progress=False, executor=InlineExecutor())
        run_id = runner.run()
    rows = store.matches(run_id)
    assert len(rows) == 2 * 4 and all(r.ok for r in rows), [(r.defense, r.attack, r.error) for r in rows]
    for label in ("standard", "nac"):
        assert model_device(runner.entrants[label].model).type == device.type
    provenance = store.run(run_id).provenance
    assert provenance["executor"] == "inline"
    if device.type == "cpu":
        assert provenance["device"] == "cpu"
    else:
        assert provenance["device"] == torch.cuda.get_device_name(device)
    sent, received = crossing  # the noise attack's queries crossed to the attacker process and back
    calls = [m[7] for m in sent if m[0] == "attack"]  # one per attacked batch
    assert len(calls) >= 2 and set(calls) == {str(device)}
    assert any(m[0] == "query" for m in received)
    by_key = {(r.defense, r.attack, r.budget): r for r in rows}
    assert by_key[("nac", "noise", 0.3)].provenance["judged"]["passes"] == plan.config.judge_passes


class ExitsOnDevice(FixedBudgetAttack):
    """Test attack that ends its worker process (and with it the entrant that worker built)."""

    id: ClassVar[str] = "exits-on-device"

    def run(self, model, x, y, eps, targets):
        os._exit(3)


def _register(register):
    register(ExitsOnDevice)


crashing = types.ModuleType("crashing")
crashing.arena_register_attacks = arena.hookimpl(_register)


def test_a_match_after_a_worker_crash_gets_its_entrant_on_the_device(device, tmp_path):
    """The local executor: the entrant is built in a worker and sent to the driver (tensors through
    torch's multiprocessing reductions: CUDA IPC for a CUDA model); the worker dies; the next match
    runs in a fresh worker that gets the entrant from the driver's copy."""
    if device.type == "cpu" and torch.cuda.is_available():
        pytest.skip("the local executor's workers take default_device(), CUDA here: the CPU case needs "
                    "CUDA_VISIBLE_DEVICES='' before the worker pool's forkserver starts")
    reg = arena.load_plugins(extra=[("crashing", crashing)])
    data = {**TINY, "defenses": [{"id": "standard"}],
            "attacks": [{"id": "fgsm", "name": "before", "budgets": [0.3]}, {"id": "exits-on-device", "budgets": [0.3]},
                        {"id": "fgsm", "name": "after", "budgets": [0.3]}]}
    executor = LocalExecutor()
    store = Store(tmp_path / "r.db")
    try:
        runner = Runner(parse_tournament(data, reg), store, cache_dir=tmp_path / "cache", progress=False,
                        executor=executor)
        run_id = runner.run()
        workers = executor.pool.started
    finally:
        executor.close()
    rows = {r.attack: r for r in store.matches(run_id)}
    assert rows["exits-on-device"].status == "failed" and "exit status 3" in rows["exits-on-device"].error
    assert rows["before"].ok and rows["after"].ok, (rows["before"].error, rows["after"].error)
    assert rows["before"].robust_mask == rows["after"].robust_mask
    assert workers == 2
    assert model_device(runner.entrants["standard"].model).type == device.type  # the driver's copy
