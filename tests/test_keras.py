"""The Keras backend: parity with torch on both Keras backends, softmax handling, safe loading,
model-file entrants in a tournament, Keras training, and a clear error without Keras."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow", reason="the [keras] extra is not installed (pip install adversarial-arena[keras])")
keras = pytest.importorskip("keras", reason="the [keras] extra is not installed (pip install adversarial-arena[keras])")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import arena  # noqa: E402
from arena import testing  # noqa: E402
from arena.backends import keras as keras_backend  # noqa: E402
from arena.backends.keras import wrap_keras_model  # noqa: E402
from arena.leaderboard import tables  # noqa: E402
from arena.tournament.plan import parse_tournament  # noqa: E402
from arena.tournament.runner import Runner  # noqa: E402
from arena.tournament.store import Store  # noqa: E402
from arena_builtins.defenses import model_file  # noqa: E402
from arena_builtins.keras import architectures, convert  # noqa: E402

on_tf = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="this process runs Keras on "
                           f"'{keras.backend.backend()}'; the bridge tests need KERAS_BACKEND=tensorflow")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """These models are tiny: one torch thread is faster on a two-core machine, where idle
    OpenMP workers spin against TensorFlow's thread pool (and other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reg():
    """The installed plugins, plus the keras backend and model-file defense if not wired yet."""
    base = arena.load_plugins()
    extra = [(name, module) for name, module, present in (
        ("backends-keras", keras_backend, "keras" in base.backends),
        ("defenses-model-file", model_file, "model-file" in base.defenses)) if not present]
    registry = arena.load_plugins(extra=extra) if extra else base
    with registry.resolving():  # model-file finds its backends in this registry
        yield registry


def twin(torch_model, arch="digits-cnn", shape=(1, 8, 8), **params):
    """The Keras version of ``arch`` carrying ``torch_model``'s weights."""
    return convert.copy_torch_weights(torch_model, architectures.build(arch, shape, 10, **params))


@pytest.fixture(scope="module")
def pair():
    """The trained torch digits CNN and the same weights in Keras."""
    model = testing.trained_model()
    return model, twin(model)


@pytest.fixture(scope="module")
def files(tmp_path_factory, pair):
    """The trained model as .keras, .h5 (ending in a softmax layer) and torch .pt files, and a batch."""
    tmp = tmp_path_factory.mktemp("keras")
    model, km = pair
    km.save(tmp / "digits.keras")
    keras.Sequential([keras.Input((8, 8, 1)), *km.layers, keras.layers.Softmax()]).save(tmp / "digits.h5")
    torch.save(model.state_dict(), tmp / "digits.pt")
    return tmp


@pytest.fixture(scope="module")
def reference(reg, files):
    """100 correctly classified digits and the torch model's attack success rates on them."""
    x, y = testing.attack_batch(100)
    torch.save({"x": x, "y": y}, files / "batch.pt")
    return x, y, successes(reg, testing.trained_model(), x, y)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def parity(a, b, x, y) -> tuple[float, float]:
    """Relative logit and input-gradient (of cross-entropy) differences of two models."""
    grads = []
    for m in (a, b):
        xr = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad(F.cross_entropy(m(xr), y), xr)[0])
    with torch.no_grad():
        return rel(a(x), b(x)), rel(*grads)


def successes(reg, model, x, y) -> list[float]:
    """Success rates of PGD (L∞ 0.1) and C&W L2 (within 1.0, and unbounded) on ``model``."""
    pgd = reg.make_attack("pgd", steps=10)(model, x, y, 0.1, seed=0)
    cw = reg.make_attack("cw-l2", steps=20, binary_search_steps=2, initial_const=1.0)(model, x, y, seed=0)
    return [float(pgd.success.float().mean()), float(cw.success_at(1.0).float().mean()),
            float(cw.success.float().mean())]


@on_tf
@pytest.mark.parametrize("arch", ["keras-mnist-cnn", "tf-tutorial-cnn", "seed001-cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_paper_architectures_match_their_torch_versions(reg, arch, shape):
    torch.manual_seed(0)
    model = reg.make_architecture(arch, width=0.25).build(shape, 10).eval()
    wrapped = wrap_keras_model(twin(model, arch, shape, width=0.25))
    x, y = torch.rand(8, *shape), torch.arange(8)
    logits, grads = parity(model, wrapped, x, y)
    assert logits < 1e-4 and grads < 1e-3


@on_tf
def test_tensorflow_bridge_parity_and_attacks(reg, pair, reference):
    model, km = pair
    wrapped = wrap_keras_model(km)
    assert wrapped.layout == "nhwc" and not wrapped.outputs_probabilities and not list(wrapped.parameters())
    x, y, expected = reference
    logits, grads = parity(model, wrapped, x, y)
    assert logits < 1e-4 and grads < 1e-3
    assert rel(model.features(x), wrapped.features(x)) < 1e-4  # embedding defenses (KDE) work on it
    for a, b in zip(expected, successes(reg, wrapped, x, y)):
        assert abs(a - b) <= 0.01


@on_tf
def test_bridge_backward_twice_and_no_double_backward(pair):
    wrapped = wrap_keras_model(pair[1])
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    out = wrapped(x).sum()
    (g1,) = torch.autograd.grad(out, x, retain_graph=True)
    (g2,) = torch.autograd.grad(out, x)  # the tape is spent: recomputed, same answer
    assert torch.allclose(g1, g2, atol=1e-6)
    (g,) = torch.autograd.grad(wrapped(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
    before = torch.get_num_threads()
    with keras_backend.torch_threads_for(torch.nn.Sequential(wrapped)):  # found inside a wrapper
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


TORCH_BACKEND_SCRIPT = """
import json, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import test_keras as t
from arena import testing
from arena.backends.keras import KerasBackend
batch = torch.load({batch!r})
x, y = batch["x"], batch["y"]
model = testing.registry().make_architecture("digits-cnn").build((1, 8, 8), 10)
model.load_state_dict(torch.load({state!r}))
model.eval()
wrapped = KerasBackend(keras_backend="torch").load({path!r})
reg = testing.registry()
print(json.dumps({{"module": isinstance(wrapped.logits.net, torch.nn.Module),
                   "params": len(list(wrapped.parameters())), "parity": t.parity(model, wrapped, x, y),
                   "keras": t.successes(reg, wrapped, x, y)}}))
"""


def test_torch_backend_parity_and_attacks(files, reference):
    """Keras on its torch backend (a fresh process): the model is a torch module, no bridge."""
    script = TORCH_BACKEND_SCRIPT.format(tests=os.path.dirname(__file__), batch=str(files / "batch.pt"),
                                         state=str(files / "digits.pt"), path=str(files / "digits.keras"))
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["module"] and out["params"] > 0
    assert out["parity"][0] < 1e-4 and out["parity"][1] < 1e-3
    for a, b in zip(reference[2], out["keras"]):
        assert abs(a - b) <= 0.01


@on_tf
def test_trailing_softmax_is_stripped_or_flagged(pair):
    model, km = pair
    logits = wrap_keras_model(km)
    x = torch.rand(16, 1, 8, 8)
    ending = keras.Sequential([keras.Input((8, 8, 1)), *km.layers, keras.layers.Softmax()])
    inline = keras.models.clone_model(km)
    inline.set_weights(km.get_weights())
    inline.layers[-1].activation = keras.activations.softmax

    class Probabilities(keras.Model):  # subclassed: the softmax cannot be cut off, only detected
        def call(self, inputs, training=False):
            return keras.ops.softmax(km(inputs, training=training))

    subclassed = Probabilities()
    subclassed(np.zeros((1, 8, 8, 1), np.float32))
    with torch.no_grad():
        reference = logits(x)
        for m, stripped in ((ending, "removed Softmax layer"), (inline, "linear activation on Dense"),
                            (subclassed, None)):
            wrapped = wrap_keras_model(m)
            assert wrapped.stripped_softmax == stripped and wrapped.outputs_probabilities == (stripped is None)
            out = wrapped(x)
            assert torch.equal(out.argmax(1), reference.argmax(1))
            shift = out - reference
            assert (shift - shift.mean(1, keepdim=True)).abs().max() < 1e-4


@on_tf
def test_keras_and_h5_files_load_safely(reg, files, pair):
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        expected = pair[0](x)
        for name in ("digits.keras", "digits.h5"):
            wrapped = reg.make_backend("keras").load(files / name)
            assert rel(expected, wrapped(x)) < 1e-4
            assert wrapped.describe()["path"] == str(files / name) and wrapped.describe()["keras_backend"] == "tensorflow"
    assert wrap_keras_model(pair[1]).describe()["stripped_softmax"] is None


@on_tf
def test_wrapped_models_pickle_for_remote_executors(reg, files):
    import pickle

    wrapped = reg.make_backend("keras", outputs="logits").load(files / "digits.h5")  # softmax kept: flagged off
    again = pickle.loads(pickle.dumps(wrapped))
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(wrapped(x), again(x)) and again.source == wrapped.source
    assert again.options["outputs"] == "logits" and again.stripped_softmax is None


@on_tf
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_safe_mode_refuses_lambda_layers(reg, tmp_path, suffix):
    path = tmp_path / f"lambda{suffix}"
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Flatten(),
                      keras.layers.Dense(10)]).save(path)
    with pytest.raises(arena.ConfigError, match="cannot load it safely.*Lambda"):
        reg.make_backend("keras").load(path)
    with pytest.raises(arena.ConfigError, match="model file not found"):
        reg.make_backend("keras").load(tmp_path / "missing.keras")


@on_tf
def test_a_process_runs_one_keras_backend(reg, files):
    with pytest.raises(arena.ConfigError, match="already runs Keras on 'tensorflow'"):
        reg.make_backend("keras", keras_backend="torch").load(files / "digits.keras")


TOURNAMENT = """
name = "mixed"
dataset = "digits"
architecture = "digits-cnn"
samples = 60
[training]
epochs = 2
lr = 0.003
[[defenses]]
id = "standard"
[[defenses]]
name = "keras-file"
id = "model-file"
params = {{ path = "{keras}", keras_backend = "tensorflow" }}
[[defenses]]
name = "torch-file"
id = "model-file"
params = {{ path = "{torch}" }}
[[defenses]]
id = "feature-squeezing"
on = "keras-file"
[[attacks]]
id = "fgsm"
budgets = [0.3]
[[attacks]]
id = "pgd"
params = {{ steps = 5 }}
budgets = [0.1]
"""


@pytest.fixture(scope="module")
def mixed(reg, files, tmp_path_factory):
    """The mixed tournament above, run once: (runner, store, run_id)."""
    import tomllib

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the mixed tournament's Keras entrant needs KERAS_BACKEND=tensorflow")
    tmp = tmp_path_factory.mktemp("mixed")
    text = TOURNAMENT.format(keras=files / "digits.keras", torch=files / "digits.pt")
    cfg = parse_tournament(tomllib.loads(text), reg)
    store = Store(tmp / "r.db")
    runner = Runner(cfg, store, cache_dir=tmp / "cache", progress=False)
    return runner, store, runner.run()


@on_tf
def test_model_files_enter_a_tournament_next_to_torch(mixed):
    runner, store, run_id = mixed
    models = {m.defense: m for m in store.models(run_id)}
    assert set(models) == {"standard", "keras-file", "torch-file", "feature-squeezing"}
    assert models["keras-file"].clean_accuracy == models["torch-file"].clean_accuracy > 0.85
    assert models["keras-file"].cache_key is None and models["keras-file"].defense_kind == "pretrained"
    rows = {(r.defense, r.attack, r.budget): r for r in store.matches(run_id)}
    assert all(r.status == "ok" for r in rows.values())
    for attack, budget in (("fgsm", 0.3), ("pgd", 0.1)):
        assert rows[("keras-file", attack, budget)].robust_accuracy == pytest.approx(
            rows[("torch-file", attack, budget)].robust_accuracy, abs=0.02)
    assert runner.entrants["keras-file"].defense.provenance["keras_backend"] == "tensorflow"
    assert runner.entrants["torch-file"].defense.provenance["backend"] == "torch"
    board = tables.build(store, run_id).render("table")
    assert "keras-file" in board and "standard" in board


@on_tf
def test_the_backend_of_every_entrant_is_recorded_and_shown(mixed, tmp_path):
    """A wrapper runs on the backend of the model it wraps: feature squeezing around the Keras
    file is a Keras entrant (it was recorded as torch), and the leaderboard and site say so."""
    from arena.leaderboard import site

    _, store, run_id = mixed
    prov = {m.defense: m.provenance for m in store.models(run_id)}
    assert prov["standard"] == {"backend": "torch"}
    assert prov["keras-file"]["backend"] == "keras" and prov["keras-file"]["keras_backend"] == "tensorflow"
    assert prov["feature-squeezing"] == prov["keras-file"]
    assert prov["torch-file"]["backend"] == "torch" and prov["torch-file"]["sha256"]
    board = tables.build(store, run_id)
    text = board.render("table")
    assert "- standard: backend torch" in text and "- torch-file: backend torch, model file" in text
    assert "- keras-file: backend keras (tensorflow), model file" in text
    assert "- feature-squeezing: backend keras (tensorflow), model file" in text
    rows = {(r["defense"], r["attack"]): r["backend"] for r in board.long_rows}
    assert rows[("keras-file", "fgsm")] == "keras (tensorflow)" and rows[("standard", "fgsm")] == "torch"
    index = site.publish(store, run_id, tmp_path / "site")
    page = (index.parent / "defenses" / "feature-squeezing.html").read_text()
    assert "<dt>backend</dt><dd>keras (tensorflow)</dd>" in page
    assert "Model provenance" in page and "sha256" in page


@on_tf
def test_model_file_errors_name_the_problem(reg, files, tmp_path):
    data, arch = testing.digits(), reg.make_architecture("digits-cnn")
    (tmp_path / "model.onnx").write_bytes(b"")
    cases = [({"path": str(tmp_path / "nope.keras")}, "not found"),
             ({"path": str(tmp_path / "model.onnx")}, "no backend reads '.onnx'"),
             ({"path": str(files / "digits.keras"), "backend": "kears"}, "did you mean 'keras'"),
             ({"path": str(files / "digits.pt"), "keras_backend": "torch"}, "keras_backend set for a torch file")]
    for params, message in cases:
        with pytest.raises(arena.ConfigError, match=message):
            reg.make_defense("model-file", **params).load(arch, data)
    with pytest.raises(arena.ConfigError, match="weights do not fit"):
        reg.make_defense("model-file", path=str(files / "digits.pt")).load(reg.make_architecture("mlp"), data)


@on_tf
def test_train_keras_and_the_cli(reg, tmp_path):
    """``arena train`` comes from the ``commands-keras`` command plugin and trains on both backends."""
    from click.testing import CliRunner

    from arena.cli import CliState, cli

    def train(*args):
        return CliRunner().invoke(cli, ["train", *args], obj=CliState(reg))

    out = tmp_path / "gda-brelu.keras"
    result = train("--backend", "keras", "--architecture", "digits-cnn", "--defense", "gda-brelu",
                   "--param", "copies=1", "--epochs", "2", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    loaded = reg.make_backend("keras").load(out)
    relus = [layer for layer in loaded.keras_model.layers if isinstance(layer, keras.layers.ReLU)]
    assert relus and all(float(layer.max_value) == 1.0 for layer in relus)
    assert float(result.output.rsplit("test accuracy ", 1)[1].split(",")[0]) > 0.6
    torch_out = tmp_path / "standard.pt"
    result = train("--architecture", "digits-cnn", "--epochs", "1", "--out", str(torch_out), "--quiet")
    assert result.exit_code == 0 and torch_out.is_file(), result.output
    bad = train("--backend", "keras", "--architecture", "vgg19", "--out", str(out))
    assert bad.exit_code == 2 and "no Keras version of architecture 'vgg19'" in bad.output
    assert cli.command_owners["train"].plugin == "commands-keras"


def test_train_needs_a_training_time_defense_and_the_registry(reg, tmp_path):
    """The check reads ``Defense.trains``; both functions take the registry, never load one."""
    import inspect

    from arena_builtins.keras.train import train_keras, train_torch

    for fn in (train_keras, train_torch):
        param = inspect.signature(fn).parameters["registry"]
        assert param.kind is param.KEYWORD_ONLY and param.default is param.empty
    with pytest.raises(arena.ConfigError, match="defense 'feature-squeezing' is inference-time; `arena train` "
                                                "needs a training-time defense"):
        train_torch("digits-cnn", "digits", tmp_path / "m.pt", "feature-squeezing", registry=reg)


def test_keras_label_smoothing_matches_the_torch_defense(reg):
    from arena_builtins.keras.defenses import RECIPES

    cfg = reg.get("defenses", "label-smoothing").parse_config({"confidence": 0.9})
    loss = RECIPES["label-smoothing"](cfg).loss(10)
    logits, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    expected = reg.make_defense("label-smoothing", confidence=0.9).loss(lambda t: t, logits, y)
    got = float(loss(np.eye(10, dtype=np.float32)[y.numpy()], logits.numpy()))
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_without_keras_the_backend_says_why(tmp_path):
    """A process where keras/tensorflow cannot be imported: plugins load, the backend explains."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["keras"] = None
        sys.modules["tensorflow"] = None
        import arena
        from arena.backends import keras as kb
        from arena_builtins.defenses import model_file
        reg = arena.load_plugins(extra=[("k", kb), ("m", model_file)] if "keras" not in arena.load_plugins().backends else [])
        assert "keras" in reg.backends and "pgd" in reg.attacks
        open({str(tmp_path / "m.keras")!r}, "wb").close()
        try:
            reg.make_backend("keras").load({str(tmp_path / "m.keras")!r})
        except arena.ConfigError as exc:
            print(exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("keras backend unavailable: install adversarial-arena[keras] (")
