"""Entering models defined outside the arena: the ``import`` architecture, input normalisation,
``model-file`` with ``normalize`` (safetensors, torch state dicts, TorchScript), and the shape and
class checks that run before anything trains.

The user's package is ``tests/userpkg`` (put on ``sys.path`` with monkeypatch, as a user's
``PYTHONPATH`` would); the tournament runs on the local executor, so the worker processes that
train and attack must import it too.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import arena
from arena.errors import AttackError, ConfigError
from arena.model import Normalize, Normalized, NormalizedFeatureClassifier, with_normalization
from arena.tournament.executors import InlineExecutor, LocalExecutor
from arena.tournament.plan import load_tournament
from arena.tournament.runner import Runner
from arena.tournament.store import Store

TESTS = Path(__file__).resolve().parent
MEAN, STD = 0.5, 0.25
SAMPLES, SEED, EPS = 40, 42, 0.1
NORMALIZED = f'normalize = {{ mean = [{MEAN}], std = [{STD}] }}'
ARCH = f'{{ id = "import", params = {{ factory = "userpkg.nets:small_cnn", {NORMALIZED} }} }}'
PLAIN_ARCH = '{ id = "import", params = { factory = "userpkg.nets:small_cnn" } }'


@pytest.fixture(autouse=True)
def userpkg(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))


@pytest.fixture(scope="module")
def reg():
    return arena.load_plugins()


@pytest.fixture(scope="module")
def digits(reg):
    return reg.make_dataset("digits").load(SEED)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - MEAN) / STD


class Evil:
    """Anything but a tensor: what a weights-only load must refuse to unpickle."""


# ------------------------------------------------------------ a model trained outside the arena
@pytest.fixture(scope="module")
def outside(tmp_path_factory, digits):
    """``userpkg.nets.small_cnn`` trained here on *normalised* digits (no arena code involved),
    saved as safetensors, as a torch state dict and as TorchScript."""
    safetensors = pytest.importorskip("safetensors.torch")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(TESTS))
        from userpkg.nets import small_cnn
    torch.manual_seed(0)
    model = small_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = normalized(digits.train.x), digits.train.y
    for _ in range(3):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            F.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    model.eval()
    folder = tmp_path_factory.mktemp("outside")
    safetensors.save_file(model.state_dict(), str(folder / "cnn.safetensors"))
    torch.save(model.state_dict(), folder / "cnn.pt")
    torch.jit.trace(model, x[:2]).save(str(folder / "cnn.torchscript"))
    return model, folder


# ------------------------------------------------------------ one tournament, on the local executor
TOURNAMENT = f"""
name = "user-models"
dataset = "digits"
architecture = {ARCH}
seed = {SEED}
samples = {SAMPLES}
save_examples = true

[training]
epochs = 3
lr = 0.01

[[defenses]]
id = "standard"

[[defenses]]
name = "file-safetensors"
id = "model-file"
architecture = {PLAIN_ARCH}
params = {{ path = "{{folder}}/cnn.safetensors", {NORMALIZED} }}

[[defenses]]
name = "file-pt"
id = "model-file"
architecture = {PLAIN_ARCH}
params = {{ path = "{{folder}}/cnn.pt", {NORMALIZED} }}

[[defenses]]
name = "file-torchscript"
id = "model-file"
params = {{ path = "{{folder}}/cnn.torchscript", {NORMALIZED} }}

[[defenses]]
name = "file-into-normalized"   # the user's state dict, into the architecture's own normalised network
id = "model-file"
params = {{ path = "{{folder}}/cnn.safetensors" }}

[[attacks]]
id = "pgd"
params = {{ norm = "linf", steps = 5 }}
budgets = [{EPS}]
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, reg, outside):
    tmp = tmp_path_factory.mktemp("run")
    path = tmp / "user.toml"
    path.write_text(TOURNAMENT.replace("{folder}", str(outside[1])))
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(TESTS))
        store = Store(tmp / "r.db")
        run_id = Runner(load_tournament(path, reg), store, cache_dir=tmp / "cache", progress=False).run()
    return tmp, store, run_id


def test_the_import_architecture_trains_in_worker_processes_and_is_attacked(finished):
    tmp, store, run_id = finished
    models = {m.defense: m for m in store.models(run_id)}
    assert models["standard"].clean_accuracy > 0.6
    assert models["standard"].cache_key and (tmp / "cache" / "models" / f"{models['standard'].cache_key}.pt").is_file()
    rows = {r.defense: r for r in store.matches(run_id)}
    assert set(rows) == set(models) and all(r.status == "ok" for r in rows.values()), \
        [(r.defense, r.error) for r in rows.values()]
    assert rows["standard"].robust_accuracy < models["standard"].clean_accuracy


def test_budgets_stay_in_pixel_space(finished, digits):
    """The attack sees [0, 1] pixels (the normalisation is inside the model): its examples lie
    within ε of the clean images in pixel space and PGD uses the whole ε there (were it run in
    normalised space, it would move pixels by ε·std = 0.025 at most)."""
    _, store, run_id = finished
    row = next(r for r in store.matches(run_id) if r.defense == "standard")
    assert 0 < row.mean_distance <= EPS + 1e-6
    (file,) = store.examples_dir(run_id).glob("standard__*.pt")
    saved = torch.load(file, weights_only=True)
    clean = digits.test.take(SAMPLES, SEED).x[saved["index"]]
    gap = (saved[f"{EPS:g}"] - clean).abs().flatten(1).amax(1)
    assert len(gap) and float(gap.max()) <= EPS + 1e-6 and float(gap.max()) > 0.9 * EPS
    assert float(saved[f"{EPS:g}"].min()) >= 0 and float(saved[f"{EPS:g}"].max()) <= 1


@pytest.mark.parametrize("entry", ["file-safetensors", "file-pt", "file-torchscript", "file-into-normalized"])
def test_a_model_trained_outside_scores_as_it_does_on_normalised_inputs(finished, outside, digits, entry):
    _, store, run_id = finished
    model, _ = outside
    evaluation = digits.test.take(SAMPLES, SEED)
    with torch.no_grad():
        direct = float((model(normalized(evaluation.x)).argmax(1) == evaluation.y).float().mean())
    stored = {m.defense: m for m in store.models(run_id)}[entry]
    assert direct > 0.8 and stored.clean_accuracy == pytest.approx(direct)
    expected = "torchscript" if entry == "file-torchscript" else "torch"
    assert stored.provenance["backend"] == expected


def test_the_worker_processes_see_the_drivers_sys_path(tmp_path, monkeypatch):
    """A package reachable only through this process's ``sys.path`` (no PYTHONPATH, not
    installed) is imported by the local executor's workers too."""
    shutil.copytree(TESTS / "userpkg", tmp_path / "elsewhere_pkg")
    monkeypatch.syspath_prepend(str(tmp_path))
    from arena_builtins.architectures.imported import resolve_factory

    executor = LocalExecutor()
    try:
        ((_, result),) = list(executor.map(resolve_factory, [("k", ("elsewhere_pkg.nets:small_cnn",))]))
    finally:
        executor.close()
    assert not isinstance(result, Exception), result
    assert result.__module__ == "elsewhere_pkg.nets"


# ------------------------------------------------------------ mistakes, before anything trains
ERRORS = """
name = "wrong"
dataset = "digits"
architecture = {architecture}
samples = 20

[training]
epochs = 1

[[defenses]]
id = "standard"

[[attacks]]
id = "fgsm"
budgets = [0.1]
"""


def imported(factory: str, extra: str = "") -> str:
    return f'{{ id = "import", params = {{ factory = "{factory}"{extra} }} }}'


@pytest.mark.parametrize("architecture, message", [
    (imported("userpkg.nets:seven_classes"),
     r"^\S+w\.toml: architecture: architecture 'import' \(userpkg\.nets:seven_classes\): expects logits of "
     r"shape \(2, 10\) for 2 inputs of shape \(1, 8, 8\), got output shape \(2, 7\) for 10 classes of "
     r"dataset 'digits'$"),
    (imported("userpkg.nets:for_cifar"),
     r"^\S+w\.toml: architecture: architecture 'import' \(userpkg\.nets:for_cifar\): a forward pass on 2 "
     r"inputs of shape \(1, 8, 8\) of dataset 'digits' raised RuntimeError: .*channels"),
    (imported("userpkg.nets:small_cnn", ", normalize = { mean = [0.5, 0.5, 0.5], std = [0.2, 0.2, 0.2] }"),
     r"w\.toml: architecture: architecture 'import' \(userpkg\.nets:small_cnn\): normalize has 3 value\(s\) "
     r"per statistic, but the inputs have 1 channel\(s\)$"),
    (imported("userpkg.nets:not_a_module"),
     r"architecture 'import' \(userpkg\.nets:not_a_module\): returned a list, not a torch\.nn\.Module$"),
    (imported("userpkg.nets:small_cnn", ", kwargs = { chanels = 4 }"),
     r"architecture 'import' \(userpkg\.nets:small_cnn\): calling it with \(num_classes=10, chanels=4\) "
     r"raised TypeError: .*chanels"),
    (imported("userpkg.nope:small_cnn"),
     r"w\.toml: architecture\.params: architecture 'import': factory: userpkg\.nope:small_cnn: cannot import "
     r"module 'userpkg\.nope' \(No module named 'userpkg\.nope'\)"),
    (imported("userpkg.nets:smal_cnn"),
     r"architecture 'import': factory: userpkg\.nets:smal_cnn: 'userpkg\.nets' has no attribute 'smal_cnn' "
     r"\(did you mean 'small_cnn'\?\)"),
    (imported("userpkg.nets:NOT_CALLABLE"),
     r"factory: userpkg\.nets:NOT_CALLABLE: 'userpkg\.nets\.NOT_CALLABLE' is a int, not callable"),
    (imported("userpkg/nets.py"),
     r"factory: 'userpkg/nets\.py' is not an import path of the form 'module:callable'"),
    (imported("userpkg.nets:small_cnn", ", normalize = { mean = [0.5], std = [0.0] }"),
     r"architecture 'import': normalize: std must be finite and positive, got \[0\.0\]"),
])
def test_wrong_models_are_one_line_errors_before_any_training(tmp_path, reg, architecture, message):
    path = tmp_path / "w.toml"
    path.write_text(ERRORS.format(architecture=architecture))
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=message) as caught:
        Runner(load_tournament(path, reg), Store(tmp_path / "r.db"), cache_dir=cache, progress=False,
               executor=InlineExecutor()).run()
    assert "\n" not in str(caught.value)
    assert not cache.exists() or not any(cache.rglob("*")), "something was trained or cached"


def test_a_defense_s_own_architecture_is_named_by_its_field(tmp_path, reg):
    path = tmp_path / "w.toml"
    own = imported("userpkg.nets:seven_classes")
    path.write_text(ERRORS.format(architecture='"digits-cnn"')
                    + f'\n[[defenses]]\nname = "mine"\nid = "standard"\narchitecture = {own}\n')
    with pytest.raises(ConfigError, match=r"w\.toml: defenses\[1\]\.architecture: architecture 'import' "
                                          r"\(userpkg\.nets:seven_classes\): expects"):
        Runner(load_tournament(path, reg), Store(tmp_path / "r.db"), cache_dir=tmp_path / "cache", progress=False,
               executor=InlineExecutor()).run()


# ------------------------------------------------------------ the pieces
def test_the_factory_gets_input_shape_and_num_classes_when_it_names_them(reg):
    model = reg.make_architecture("import", factory="userpkg.nets:mlp", kwargs={"hidden": 5}).build((1, 8, 8), 4)
    assert model[1].in_features == 64 and model[1].out_features == 5 and model[3].out_features == 4
    dotted = reg.make_architecture("import", factory="userpkg.nets:Zoo.tiny", kwargs={"channels": 2})
    assert dotted.build((1, 8, 8), 3)(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_normalize_layer(reg):
    layer = Normalize([0.5, 0.25], [0.5, 2.0])
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0], 1)
    assert torch.equal(layer(x), expected)
    assert set(layer.state_dict()) == {"mean", "std"} and not list(layer.parameters())
    with pytest.raises(ValueError, match="2 channel"):
        layer(torch.rand(3, 1, 4, 4))
    for mean, std in (([0.5], [0.5, 0.5]), ([0.5], [0.0]), ([float("nan")], [1.0]), ([], [])):
        with pytest.raises(ValueError, match="normalize"):
            Normalize(mean, std)
    meta = layer.to("meta")  # any device: the buffers move with the module
    assert meta(torch.empty(2, 2, 4, 4, device="meta")).device.type == "meta"
    if torch.cuda.is_available():
        assert layer.to("cuda")(x.cuda()).device.type == "cuda"


def test_with_normalization_keeps_the_feature_layout_and_round_trips_its_state(reg):
    net = reg.make_architecture("import", factory="userpkg.nets:small_cnn").build((1, 8, 8), 10).eval()
    wrapped = with_normalization(net, [MEAN], [STD])
    assert isinstance(wrapped, NormalizedFeatureClassifier) and not wrapped.training
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(wrapped(x), net(normalized(x)))
    assert torch.equal(wrapped.classifier(wrapped.features(x)), wrapped(x))
    mlp = reg.make_architecture("import", factory="userpkg.nets:mlp").build((1, 8, 8), 10)
    assert type(with_normalization(mlp, [MEAN], [STD])) is Normalized
    again = reg.make_architecture("import", factory="userpkg.nets:small_cnn",
                                  normalize={"mean": [0.1], "std": [0.9]}).build((1, 8, 8), 10)
    again.load_state_dict(wrapped.state_dict())  # the arena's own cache stores the whole wrapper
    assert torch.equal(again.normalize.std, wrapped.normalize.std) and torch.equal(again(x), wrapped(x))
    assert torch.equal(pickle.loads(pickle.dumps(wrapped))(x), wrapped(x))


def test_the_harness_checks_the_normalisation_exactly(reg):
    """An attack on a normalised model runs as on any model, and one that edits the
    normalisation (a buffer) is caught and undone by the harness's exact model check."""
    from arena.attack import FixedBudgetAttack

    class Tamper(FixedBudgetAttack):
        """Test attack that widens the model's normalisation."""

        id = "tamper"

        def run(self, model, x, y, eps, targets):
            model.normalize.std.mul_(100)
            return x

    net = with_normalization(reg.make_architecture("import", factory="userpkg.nets:small_cnn")
                             .build((1, 8, 8), 10), [MEAN], [STD]).eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    result = reg.make_attack("pgd", norm="linf", steps=2)(net, x, y, eps=0.1)
    assert float((result.x_adv - x).abs().max()) <= 0.1 + 1e-6
    with pytest.raises(AttackError, match="normalize.std"):
        Tamper()(net, x, y, eps=0.1)
    assert float(net.normalize.std) == STD


def test_state_dicts_are_read_weights_only(tmp_path, reg):
    template = reg.make_architecture("import", factory="userpkg.nets:small_cnn").build((1, 8, 8), 10)
    path = tmp_path / "evil.pt"
    torch.save({**template.state_dict(), "payload": Evil()}, path)
    with pytest.raises(ConfigError, match=r"evil\.pt: not a loadable weights-only state dict \(UnpicklingError"):
        reg.make_backend("torch").load(path, template)
    torch.save({**template.state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"expected a state dict of tensors; entry 'epoch' is a int"):
        reg.make_backend("torch").load(tmp_path / "checkpoint.pt", template)


def test_normalize_twice_and_garbage_torchscript_are_config_errors(tmp_path, reg, digits, outside):
    _, folder = outside
    arch = reg.make_architecture("import", factory="userpkg.nets:small_cnn", normalize={"mean": [MEAN], "std": [STD]})
    twice = reg.make_defense("model-file", path=str(folder / "cnn.pt"), normalize={"mean": [MEAN], "std": [STD]})
    with pytest.raises(ConfigError, match="normalize is given twice"):
        twice.load(arch, digits)
    (tmp_path / "bad.torchscript").write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(ConfigError, match=r"bad\.torchscript: not a loadable TorchScript archive"):
        reg.make_backend("torchscript").load(tmp_path / "bad.torchscript")
    explicit = reg.make_defense("model-file", path=str(folder / "cnn.torchscript"), backend="torchscript")
    assert explicit.load(arch, digits)(digits.test.x[:2]).shape == (2, 10)


def test_a_torchscript_model_pickles(outside):
    model, folder = outside
    loaded = arena.load_plugins().make_backend("torchscript").load(folder / "cnn.torchscript")
    x = torch.rand(3, 1, 8, 8)
    again = pickle.loads(pickle.dumps(loaded))  # as it travels to worker and attacker processes
    assert torch.allclose(again(x), model(x), atol=1e-6) and torch.allclose(loaded(x), model(x), atol=1e-6)


def test_the_users_model_enters_through_arena_evaluate_in_worker_processes(outside, digits):
    """The same model of the user's package, with its normalisation, through ``arena.evaluate``
    on the local executor (worker processes import ``userpkg`` by the driver's sys.path): clean
    accuracy as the model scores the normalised inputs itself, and the budget in pixel space."""
    model, _ = outside
    x, y = digits.test.x[:SAMPLES], digits.test.y[:SAMPLES]
    result = arena.evaluate(model, x, y, attacks=["fgsm"], budgets=[EPS], executor="local",
                            normalize={"mean": [MEAN], "std": [STD]}, name="users-cnn")
    with torch.no_grad():
        expected = float((model(normalized(x)).argmax(1) == y).float().mean())
    assert result.clean_accuracy == pytest.approx(expected) and expected > 0.8
    assert result.complete and result.robust_accuracy["fgsm"][EPS] < result.clean_accuracy
