"""One table drives the contract suites of ``arena.testing`` over every installed plugin.

Each row is ``(kind, id, params)`` plus the suite's knobs for that plugin (``eps``, ``min_drop``,
``samples``, ``against``, ``quick``, ``min_accuracy``, ``dataset``, ...). A row becomes a
subclass of its kind's suite, exactly what a third party writes by hand
(``class TestMine(AttackContract): attack_id = "mine"``), and every ``test_*`` check of the suite
runs on it. A registered plugin without a row, or a row naming an unregistered plugin, fails
:func:`test_the_table_covers_every_registered_plugin`. Suites cache what they build per process
(a defense trains once per config), so the rows of one plugin share their models.
"""
from __future__ import annotations

import dataclasses
import gzip
import inspect
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from arena import hookimpl, load_plugins, testing
from arena.data import DataSplits, Dataset, Split
from arena.defense import DefendedModel, DetectorDefense, InferenceDefense
from arena.model import Architecture
from arena.testing import (
    ArchitectureContract, AttackContract, BackendContract, DatasetContract, DefenseContract,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")
CW_FAST = {"steps": 30, "binary_search_steps": 2, "initial_const": 1.0, "lr": 0.05}
HSJ = {"max_iterations": 4, "init_evals": 20}
MNIST_LIKE = {"id": "synthetic", "params": {"size": 28, "num_classes": 10, "n_train": 64, "n_test": 16}}
CIFAR_LIKE = {"id": "synthetic", "params": {"channels": 3, "size": 32, "num_classes": 10,
                                            "n_train": 64, "n_test": 16}}


# kind -> (suite, the suite's id attribute, the registry's table)
SUITES: dict[str, tuple[type, str, str]] = {
    "attack": (AttackContract, "attack_id", "attacks"),
    "defense": (DefenseContract, "defense_id", "defenses"),
    "dataset": (DatasetContract, "dataset_id", "datasets"),
    "architecture": (ArchitectureContract, "architecture_id", "architectures"),
    "backend": (BackendContract, "backend_id", "backends"),
}


@dataclasses.dataclass(frozen=True)
class Fixture:
    """A param whose value is the pytest fixture ``name`` (a file or folder made per session)."""

    name: str


def write_torch(model: torch.nn.Module, directory: Path) -> Path:
    torch.save(model.state_dict(), directory / "digits.pt")
    return directory / "digits.pt"


def write_torchscript(model: torch.nn.Module, directory: Path) -> Path:
    path = directory / "digits.torchscript"
    torch.jit.trace(model.eval(), torch.zeros(2, 1, 8, 8)).save(str(path))
    return path


def write_keras(model: torch.nn.Module, directory: Path) -> Path:
    pytest.importorskip("tensorflow", reason="the [keras] extra is not installed")
    pytest.importorskip("keras", reason="the [keras] extra is not installed")
    from arena_builtins.keras import architectures, convert

    twin = convert.copy_torch_weights(model, architectures.build("digits-cnn", (1, 8, 8), 10))
    twin.save(directory / "digits.keras")
    return directory / "digits.keras"


@dataclasses.dataclass(frozen=True)
class Row:
    kind: str
    id: str
    params: dict[str, Any]
    label: str
    knobs: dict[str, Any]
    marks: tuple = ()
    one_thread: bool = False  # many small batches to a tiny model: threads only add synchronisation


def row(kind: str, plugin_id: str, params: dict[str, Any] | None = None, *, label: str = "",
        marks: tuple = (), one_thread: bool = False, **knobs: Any) -> Row:
    suite = SUITES[kind][0]
    unknown = [name for name in knobs if not hasattr(suite, name)]
    if unknown:
        raise TypeError(f"row {label or plugin_id}: {suite.__name__} has no knob {unknown}")
    return Row(kind, plugin_id, params or {}, label or plugin_id, knobs, marks, one_thread)


TABLE = [
    # ---- attacks: gradient, iterative, minimal, saliency
    row("attack", "fgsm", {"norm": "linf"}, label="fgsm-linf"),
    row("attack", "fgsm", {"norm": "l2"}, label="fgsm-l2"),
    row("attack", "pgd", {"norm": "linf", "steps": 10}, label="pgd-linf"),
    row("attack", "pgd", {"norm": "l2", "steps": 10, "restarts": 2}, label="pgd-l2"),
    row("attack", "bim", label="bim-linf"),
    row("attack", "bim", {"norm": "l2", "steps": 5}, label="bim-l2"),
    row("attack", "rand-fgsm"),
    row("attack", "fgsm-minimal", {"eps_step": 0.02}, label="fgsm-minimal-linf"),
    row("attack", "fgsm-minimal", {"norm": "l2", "eps_step": 0.1, "max_eps": 6.0}, label="fgsm-minimal-l2"),
    row("attack", "jsma"),
    row("attack", "cw-l2", {"steps": 50, "binary_search_steps": 3, "initial_const": 1.0, "lr": 0.05}),
    row("attack", "deepfool", {"norm": "l2"}, label="deepfool-l2"),
    row("attack", "deepfool", {"norm": "linf"}, label="deepfool-linf"),
    row("attack", "apgd", {"steps": 20}, label="apgd-linf"),
    row("attack", "apgd", {"norm": "l2", "steps": 20}, label="apgd-l2"),
    row("attack", "apgd", {"norm": "l1", "steps": 20}, label="apgd-l1"),
    row("attack", "apgd", {"loss": "dlr", "steps": 20}, label="apgd-dlr"),
    row("attack", "apgd-t", {"steps": 20}, label="apgd-t-linf"),
    row("attack", "apgd-t", {"norm": "l2", "steps": 10, "n_target_classes": 3}, label="apgd-t-l2"),
    row("attack", "fab", {"steps": 20}, label="fab-linf"),
    row("attack", "fab", {"norm": "l2", "steps": 20}, label="fab-l2"),
    row("attack", "fab", {"norm": "l1", "steps": 20}, label="fab-l1"),
    row("attack", "fab-t", {"steps": 20}, label="fab-t-linf"),
    row("attack", "fab-t", {"norm": "l2", "steps": 20, "n_target_classes": 3}, label="fab-t-l2"),
    row("attack", "autoattack", {"steps": 10, "square_iterations": 50}, label="autoattack-linf"),
    row("attack", "autoattack", {"norm": "l2", "steps": 10, "square_iterations": 50}, label="autoattack-l2"),
    row("attack", "autoattack", {"version": "rand", "steps": 10, "eot_iter": 2}, label="autoattack-rand"),
    # ---- black-box
    row("attack", "hopskipjump", HSJ, label="hopskipjump-l2", one_thread=True),
    row("attack", "hopskipjump", {**HSJ, "norm": "linf"}, label="hopskipjump-linf", one_thread=True),
    row("attack", "boundary", {"steps": 400, "spherical_step": 0.1, "source_step": 0.05},
        samples=32, one_thread=True),
    row("attack", "square", {"max_queries": 300}, label="square-linf", one_thread=True, min_drop=0.9),
    row("attack", "square", {"norm": "l2", "max_queries": 300}, label="square-l2", one_thread=True, min_drop=0.9),
    row("attack", "square", {"max_queries": 300, "loss": "ce", "restarts": 2}, label="square-ce-restarts",
        one_thread=True, min_drop=0.9),
    row("attack", "spsa", {"steps": 40, "samples": 32}, label="spsa-linf", one_thread=True, min_drop=0.9),
    row("attack", "spsa", {"norm": "l2", "steps": 30, "samples": 32, "lr": 0.05}, label="spsa-l2",
        one_thread=True, min_drop=0.9),
    row("attack", "noise", {"draws": 100}, label="noise-linf", one_thread=True, min_drop=0.2),
    row("attack", "noise", {"norm": "l2", "draws": 100}, label="noise-l2", one_thread=True, min_drop=0.2),
    row("attack", "substitute", {"rounds": 3, "epochs": 10,
                                 "inner": {"id": "pgd", "params": {"steps": 10, "rel_step_size": 0.25}}},
        one_thread=True),
    # ---- adaptive
    row("attack", "eot", {"inner": {"id": "cw-l2", "params": CW_FAST}, "samples": 4}, samples=24),
    row("attack", "bpda", {"inner": {"id": "pgd", "params": {"steps": 10}}}),
    row("attack", "repeated", {"rounds": 2}),
    row("attack", "cw-restarts", {**CW_FAST, "restarts": 2}, samples=24),
    row("attack", "cw-eot", {**CW_FAST, "eot_samples": 4}, samples=24),
    row("attack", "cw-wb", CW_FAST, samples=24, against="kde"),  # refuses to run without a detector
    # ---- defenses: training-time (on testing.QUICK), inference-time, detector, pretrained
    row("defense", "standard"),
    row("defense", "gda", {"copies": 2}),
    row("defense", "brelu"),
    row("defense", "gda-brelu", {"copies": 2}),
    row("defense", "label-smoothing"),
    row("defense", "jacobian-reg"),
    row("defense", "jacobian-reg", {"projections": 2, "adversarial": {"attack": "fgsm", "eps": 0.1}},
        label="jacobian-reg-projected"),
    row("defense", "input-gradient-reg"),
    row("defense", "cross-lipschitz-reg"),
    row("defense", "ns-loss", {"copies": 2}),
    row("defense", "combined", {"copies": 2, "projections": 1}),
    row("defense", "adversarial-training", {"attack": {"id": "pgd", "params": {"steps": 2}}, "eps": 0.1}),
    row("defense", "fgsm-at"),
    row("defense", "vat"),
    row("defense", "rce"),
    row("defense", "pdm"),
    row("defense", "feature-squeezing"),
    row("defense", "feature-squeezing", {"bits": 3, "median": 2}, label="feature-squeezing-median"),
    row("defense", "nac"),
    row("defense", "dln", {"epochs": 2}),
    row("defense", "dln-nac", {"epochs": 2}),
    row("defense", "kde"),
    row("defense", "model-file", {"path": Fixture("torch_model_file")}),
    # ---- datasets (tiny files in the real formats, made per session from the digits images)
    row("dataset", "digits"),
    row("dataset", "synthetic", {"n_train": 64, "n_test": 32}),
    row("dataset", "mnist", {"path": Fixture("idx_dir")}),
    row("dataset", "fashion-mnist", {"path": Fixture("idx_dir")}),
    row("dataset", "fashion-mnist", {"train_size": 100, "test_size": 50}, label="fashion-mnist-installed",
        marks=(pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed"),)),
    row("dataset", "cifar10", {"path": Fixture("cifar10_dir")}),
    row("dataset", "cifar100", {"path": Fixture("cifar100_dir")}),
    row("dataset", "image-folder", {"path": Fixture("image_folder_dir"), "grayscale": True}),
    row("dataset", "tensor-file", {"path": Fixture("tensor_file")}),
    # ---- architectures, each on data of the shape its paper uses
    row("architecture", "digits-cnn"),
    row("architecture", "mlp", {"hidden": [32, 16]}),
    # a user's network by import path (tests/userpkg; pytest puts tests/ on sys.path)
    row("architecture", "import", {"factory": "userpkg.nets:small_cnn", "normalize": {"mean": [0.5], "std": [0.25]}}),
    row("architecture", "keras-mnist-cnn", {"width": 0.25}, dataset=MNIST_LIKE),
    row("architecture", "tf-tutorial-cnn", {"width": 0.25}, dataset=MNIST_LIKE),
    row("architecture", "seed001-cnn", {"width": 0.25}, dataset=MNIST_LIKE),
    row("architecture", "seed001-resnet", {"width": 0.25}, dataset=MNIST_LIKE),
    row("architecture", "cifar-cnn4", {"width": 0.25}, dataset=CIFAR_LIKE),
    row("architecture", "vgg19", {"width": 0.125}, dataset=CIFAR_LIKE),
    row("architecture", "resnet56", {"width": 0.5, "depth": 20}, dataset=CIFAR_LIKE),
    # ---- model backends
    row("backend", "torch", write_model=write_torch),
    row("backend", "keras", write_model=write_keras),
    row("backend", "torchscript", write_model=write_torchscript),
]


def checks(suite: type) -> list[str]:
    return sorted(name for name in dir(suite) if name.startswith("test_"))


CASES = [pytest.param(r, check, id=f"{r.kind}-{r.label}-{check[5:]}", marks=r.marks)
         for r in TABLE for check in checks(SUITES[r.kind][0])]


def resolve(value: Any, request: pytest.FixtureRequest) -> Any:
    if isinstance(value, Fixture):
        return str(request.getfixturevalue(value.name))
    if isinstance(value, dict):
        return {k: resolve(v, request) for k, v in value.items()}
    return value


def suite_for(r: Row, request: pytest.FixtureRequest) -> Any:
    """The row as a hand-written suite subclass would be, instantiated."""
    suite, id_attr, _ = SUITES[r.kind]
    attrs = {id_attr: r.id, "params": resolve(r.params, request)}
    for name, value in r.knobs.items():
        attrs[name] = staticmethod(value) if inspect.isfunction(value) else value
    return type(f"Test{suite.__name__}_{r.label}", (suite,), attrs)()


@pytest.fixture()
def threads():
    """``torch.set_num_threads``, the count restored after the test."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("r, check", CASES)
def test_contract(r: Row, check: str, request, threads):
    method = getattr(suite_for(r, request), check)
    if r.one_thread:
        threads(1)
    method(**{name: request.getfixturevalue(name) for name in inspect.signature(method).parameters})


def coverage(registry) -> tuple[list, list]:
    """``(registered but not in the table, in the table but not registered)``, as (kind, id)."""
    registered = {(kind, pid) for kind, (_, _, table) in SUITES.items() for pid in getattr(registry, table)}
    listed = {(r.kind, r.id) for r in TABLE}
    return sorted(registered - listed), sorted(listed - registered)


def test_the_table_covers_every_registered_plugin():
    missing, unknown = coverage(testing.registry())
    assert not missing, f"registered but not in the table: {missing}"
    assert not unknown, f"in the table but not registered: {unknown}"
    labels = [(r.kind, r.label) for r in TABLE]
    assert len(labels) == len(set(labels)), "two rows share a label"


def test_coverage_names_what_the_table_lacks(third_party):
    missing, unknown = coverage(third_party)
    assert missing == [("architecture", "test-linear"), ("dataset", "test-inverted-digits"),
                       ("defense", "test-rng-detector"), ("defense", "test-rng-wrapper")]
    assert unknown == []


# ------------------------------------------------------------ files the rows point at
@pytest.fixture(scope="session")
def torch_model_file(tmp_path_factory) -> Path:
    """The suites' trained digits CNN as a weights-only state dict (the model-file entrant)."""
    return write_torch(testing.trained_model(), tmp_path_factory.mktemp("model-file"))


def _digit_images(split) -> tuple[np.ndarray, np.ndarray]:
    return (split.x[:, 0].numpy() * 255).round().astype(np.uint8), split.y.numpy().astype(np.uint8)


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    """60 training and 30 test digits in MNIST's idx format (gzipped, as MNIST ships)."""
    root, data = tmp_path_factory.mktemp("idx"), testing.digits()
    for prefix, split in (("train", data.train.take(60, 0)), ("t10k", data.test.take(30, 0))):
        images, labels = _digit_images(split)
        for name, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            header = np.array([magic, *array.shape], dtype=">u4").tobytes()
            with gzip.open(root / f"{prefix}-{name}-ubyte.gz", "wb") as fh:
                fh.write(header + array.tobytes())
    return root


@pytest.fixture(scope="session")
def cifar10_dir(tmp_path_factory) -> Path:
    """Digits upscaled to 32x32 RGB in CIFAR-10's python pickle batches (8 images per batch)."""
    from arena_builtins.datasets import cifar10

    folder = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    folder.mkdir()
    train = testing.digits().train
    for i, name in enumerate([*cifar10.TRAIN_FILES, *cifar10.TEST_FILES]):
        images, labels = _digit_images(train.take(8, i))
        rgb = np.repeat(np.kron(images, np.ones((4, 4), np.uint8))[:, None], 3, axis=1)
        batch = {b"batch_label": name.encode(), b"data": rgb.reshape(8, 3072), b"labels": labels.tolist()}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return folder.parent


@pytest.fixture(scope="session")
def cifar100_dir(tmp_path_factory) -> Path:
    """Digits upscaled to 32x32 RGB in CIFAR-100's pickle files (fine label: the digit, coarse: digit // 5)."""
    folder = tmp_path_factory.mktemp("cifar100") / "cifar-100-python"
    folder.mkdir()
    data = testing.digits()
    for name, split in (("train", data.train.take(16, 0)), ("test", data.test.take(8, 0))):
        images, labels = _digit_images(split)
        rgb = np.repeat(np.kron(images, np.ones((4, 4), np.uint8))[:, None], 3, axis=1)
        batch = {b"data": rgb.reshape(len(rgb), 3072), b"fine_labels": labels.tolist(),
                 b"coarse_labels": (labels // 5).tolist()}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    with (folder / "meta").open("wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return folder.parent


@pytest.fixture(scope="session")
def image_folder_dir(tmp_path_factory) -> Path:
    """60 digits as 8x8 grey PNGs in an ImageFolder tree, one folder per class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("image-folder")
    images, labels = _digit_images(testing.digits().train.take(60, 0))
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"digit{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(root / f"digit{label}" / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tensor_file(tmp_path_factory) -> Path:
    """60 training and 30 test digits as uint8 (N, H, W) arrays in one .npz file."""
    path = tmp_path_factory.mktemp("tensor-file") / "digits.npz"
    data = testing.digits()
    (x, y), (x_test, y_test) = (_digit_images(s) for s in (data.train.take(60, 0), data.test.take(30, 0)))
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return path


# ------------------------- third-party plugins, through their hooks, under the suites as classes
class _Shifted(DefendedModel):
    def __init__(self, base: torch.nn.Module, shift: torch.Tensor) -> None:
        super().__init__(base)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.shift


class _GlobalRNGWrapper(InferenceDefense):
    """Test-only: adds a random logit shift; ``honest`` draws it from ``seed``, else from torch's
    global generator (a seed that does not determine the defended model)."""

    id = "test-rng-wrapper"

    class Config(InferenceDefense.Config):
        honest: bool = False

    def wrap(self, model, data, *, seed=42):
        g = torch.Generator().manual_seed(seed) if self.config.honest else None
        return _Shifted(model, torch.randn(10, generator=g))


class _GlobalRNGDetector(DetectorDefense):
    """Test-only: scores by the distance to a random image, drawn like :class:`_GlobalRNGWrapper`."""

    id = "test-rng-detector"

    class Config(DetectorDefense.Config):
        honest: bool = False

    def fit(self, model, data, *, seed=42):
        g = torch.Generator().manual_seed(seed) if self.config.honest else None
        self.center = torch.rand(data.x.shape[1:], generator=g)
        self.calibrate(model, data.x[:100])

    def score(self, model, x):
        return (x - self.center).flatten(1).norm(dim=1)


class _InvertedDigits(Dataset):
    """Test-only: the digits images inverted (1 - x), split with the seed (Alpaydin and Kaynak 1998)."""

    id = "test-inverted-digits"

    def load(self, seed: int = 42) -> DataSplits:
        data = testing.registry().make_dataset("digits").load(seed=seed)
        return DataSplits(self.id, Split(1 - data.train.x, data.train.y), Split(1 - data.test.x, data.test.y), 10)


class _Linear(Architecture):
    """Test-only: a linear classifier on the flattened image (logistic regression)."""

    id = "test-linear"

    def build(self, input_shape, num_classes):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(input_shape)), num_classes))


THIRD_PARTY = types.SimpleNamespace(
    arena_register_defenses=hookimpl(lambda register: [register(_GlobalRNGWrapper), register(_GlobalRNGDetector)]),
    arena_register_datasets=hookimpl(lambda register: register(_InvertedDigits)),
    arena_register_architectures=hookimpl(lambda register: register(_Linear)),
)


@pytest.fixture()
def third_party():
    """The installed plugins plus :data:`THIRD_PARTY`, as the suites' registry."""
    with testing.using_registry(load_plugins(extra=[("test-third-party", THIRD_PARTY)])) as registry:
        yield registry


@pytest.mark.parametrize("defense_id", ["test-rng-wrapper", "test-rng-detector"])
def test_determinism_check_catches_a_defense_that_ignores_its_seed(third_party, defense_id):
    honest = type("TestHonest", (DefenseContract,), {"defense_id": defense_id, "params": {"honest": True}})()
    honest.test_deterministic_under_seed()
    honest.test_outputs_logits_of_the_right_shape()
    cheat = type("TestCheat", (DefenseContract,), {"defense_id": defense_id})()
    with pytest.raises(AssertionError, match="differs under the same seed"):
        cheat.test_deterministic_under_seed()


@pytest.mark.usefixtures("third_party")
class TestThirdPartyDataset(DatasetContract):
    dataset_id = "test-inverted-digits"


@pytest.mark.usefixtures("third_party")
class TestThirdPartyArchitecture(ArchitectureContract):
    architecture_id = "test-linear"
