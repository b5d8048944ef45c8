"""The built-in datasets: digits, idx (MNIST / Fashion-MNIST), CIFAR-10 pickles, synthetic."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import arena
from arena.data import DataSplits
from arena_builtins.datasets import cifar10, digits, idx, synthetic

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def registry():
    modules = [("datasets-digits", digits), ("datasets-idx", idx),
               ("datasets-cifar10", cifar10), ("datasets-synthetic", synthetic)]
    return arena.load_plugins(extra=modules, entry_points=False)


def check_splits(data: DataSplits, shape: tuple[int, ...], num_classes: int) -> None:
    for split in (data.train, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == shape
        assert 0 <= float(split.x.min()) and float(split.x.max()) <= 1
        assert 0 <= int(split.y.min()) and int(split.y.max()) < num_classes
    assert data.num_classes == num_classes and data.input_shape == shape


def same(a: DataSplits, b: DataSplits) -> bool:
    return all(torch.equal(getattr(getattr(a, s), f), getattr(getattr(b, s), f))
               for s in ("train", "test") for f in ("x", "y"))


def test_every_dataset_is_registered_with_a_citing_docstring(registry):
    assert set(registry.datasets) == {"digits", "fashion-mnist", "mnist", "cifar10", "synthetic"}
    for cls in registry.datasets.values():
        assert "seed 00" in cls.__doc__ and "§" in cls.__doc__


@pytest.mark.parametrize("dataset_id", ["digits", "fashion-mnist", "mnist", "cifar10", "synthetic"])
def test_unknown_config_key_is_a_config_error(registry, dataset_id):
    with pytest.raises(arena.ConfigError, match="trian_size"):
        registry.make_dataset(dataset_id, trian_size=10)


# --- digits ---------------------------------------------------------------------------------

def test_digits_shapes_and_counts(registry):
    data = registry.make_dataset("digits").load()
    check_splits(data, (1, 8, 8), 10)
    assert len(data.train) + len(data.test) == 1797
    assert len(data.test) == pytest.approx(1797 * 0.25, abs=10)
    assert set(data.test.y.tolist()) == set(range(10))
    assert float(data.train.x.max()) == 1.0  # 16 / 16


def test_digits_split_is_seeded(registry):
    ds = registry.make_dataset("digits")
    a, b, c = ds.load(seed=1), ds.load(seed=1), ds.load(seed=2)
    assert same(a, b) and not same(a, c)


def test_digits_caps_and_fraction(registry):
    data = registry.make_dataset("digits", train_size=100, test_size=50, test_fraction=0.5).load(3)
    assert (len(data.train), len(data.test)) == (100, 50)
    with pytest.raises(arena.ConfigError, match="test_fraction"):
        registry.make_dataset("digits", test_fraction=1.5)


# --- idx (MNIST format) ---------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool) -> None:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def write_idx_dir(root: Path, gz: bool, n_train: int = 12, n_test: int = 6, dotted: bool = False):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        sep = "." if dotted else "-"
        write_idx(root / f"{prefix}-images{sep}idx3-ubyte", images, 2051, gz)
        write_idx(root / f"{prefix}-labels{sep}idx1-ubyte", labels, 2049, gz)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_reads_plain_and_gzipped_files(registry, tmp_path, gz):
    arrays = write_idx_dir(tmp_path, gz)
    data = registry.make_dataset("mnist", path=str(tmp_path)).load()
    check_splits(data, (1, 5, 4), 10)
    for split, prefix in ((data.train, "train"), (data.test, "t10k")):
        images, labels = arrays[prefix]
        np.testing.assert_array_equal((split.x[:, 0] * 255).round().numpy(), images)
        np.testing.assert_array_equal(split.y.numpy(), labels)


def test_idx_accepts_the_dotted_file_names(registry, tmp_path):
    write_idx_dir(tmp_path, gz=False, dotted=True)
    assert len(registry.make_dataset("fashion-mnist", path=str(tmp_path)).load().train) == 12


def test_idx_caps_are_seeded_subsets(registry, tmp_path):
    write_idx_dir(tmp_path, gz=True, n_train=40)
    ds = registry.make_dataset("mnist", path=str(tmp_path), train_size=10, test_size=3)
    a, b, c = ds.load(seed=0), ds.load(seed=0), ds.load(seed=1)
    assert (len(a.train), len(a.test)) == (10, 3)
    assert same(a, b) and not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_bad_magic_names_the_file(registry, tmp_path, gz):
    write_idx_dir(tmp_path, gz)
    name = "t10k-labels-idx1-ubyte" + (".gz" if gz else "")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(6, np.uint8), 2051, gz)
    with pytest.raises(arena.ConfigError, match=f"{name}.*magic"):
        registry.make_dataset("mnist", path=str(tmp_path)).load()


def test_idx_truncated_or_mismatched_files_are_config_errors(registry, tmp_path):
    write_idx_dir(tmp_path, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-3])
    with pytest.raises(arena.ConfigError, match="train-images-idx3-ubyte"):
        registry.make_dataset("mnist", path=str(tmp_path)).load()
    write_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), 2049, False)
    with pytest.raises(arena.ConfigError, match="11 labels for 12 images"):
        registry.make_dataset("mnist", path=str(tmp_path)).load()
    (tmp_path / "bad").mkdir()
    write_idx_dir(tmp_path / "bad", gz=True)
    (tmp_path / "bad" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip")
    with pytest.raises(arena.ConfigError, match="train-images-idx3-ubyte.gz"):
        registry.make_dataset("mnist", path=str(tmp_path / "bad")).load()


def test_idx_missing_directory_or_file(registry, tmp_path):
    with pytest.raises(arena.ConfigError, match="dataset-fashion-mnist"):
        registry.make_dataset("fashion-mnist", path=str(tmp_path / "nowhere")).load()
    write_idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(arena.ConfigError, match="t10k-images-idx3-ubyte"):
        registry.make_dataset("mnist", path=str(tmp_path)).load()


def test_mnist_needs_a_path_or_the_environment(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("ARENA_MNIST_DIR", raising=False)
    with pytest.raises(arena.ConfigError, match="ARENA_MNIST_DIR"):
        registry.make_dataset("mnist").load()
    write_idx_dir(tmp_path, gz=True)
    monkeypatch.setenv("ARENA_MNIST_DIR", str(tmp_path))
    assert len(registry.make_dataset("mnist").load().test) == 6


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_data(registry):
    data = registry.make_dataset("fashion-mnist").load()
    check_splits(data, (1, 28, 28), 10)
    assert (len(data.train), len(data.test)) == (60_000, 10_000)
    assert torch.bincount(data.train.y).tolist() == [6000] * 10
    small = registry.make_dataset("fashion-mnist", train_size=500, test_size=100).load(seed=7)
    assert (len(small.train), len(small.test)) == (500, 100)


# --- CIFAR-10 pickles -----------------------------------------------------------------------

def write_cifar_dir(root: Path, n: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*cifar10.TRAIN_FILES, *cifar10.TEST_FILES]):
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [(i + j) % 10 for j in range(n)],
        }
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2 if i % 2 else pickle.HIGHEST_PROTOCOL)
    return folder


@pytest.mark.parametrize("parent", [True, False], ids=["root", "batches-dir"])
def test_cifar10_reads_the_pickle_directory(registry, tmp_path, parent):
    folder = write_cifar_dir(tmp_path)
    data = registry.make_dataset("cifar10", path=str(tmp_path if parent else folder)).load()
    check_splits(data, (3, 32, 32), 10)
    assert (len(data.train), len(data.test)) == (20, 4)
    with (folder / "data_batch_1").open("rb") as fh:
        first = pickle.load(fh, encoding="bytes")
    row = first[b"data"][0]  # 1024 red, then 1024 green, then 1024 blue values, row-major
    green = (data.train.x[0, 1] * 255).round().numpy()
    np.testing.assert_array_equal(green, row[1024:2048].reshape(32, 32))
    assert data.train.y[:4].tolist() == first[b"labels"]


def test_cifar10_caps_are_seeded(registry, tmp_path):
    write_cifar_dir(tmp_path)
    ds = registry.make_dataset("cifar10", path=str(tmp_path), train_size=5, test_size=2)
    a, b = ds.load(seed=0), ds.load(seed=0)
    assert (len(a.train), len(a.test)) == (5, 2) and same(a, b)


def test_cifar10_missing_or_corrupt(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("ARENA_CIFAR10_DIR", raising=False)
    with pytest.raises(arena.ConfigError, match="path"):
        registry.make_dataset("cifar10").load()
    with pytest.raises(arena.ConfigError, match="not found"):
        registry.make_dataset("cifar10", path=str(tmp_path / "nowhere")).load()
    folder = write_cifar_dir(tmp_path)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(arena.ConfigError, match="data_batch_3"):
        registry.make_dataset("cifar10", path=str(tmp_path)).load()


def test_cifar10_refuses_pickles_that_import_code(registry, tmp_path):
    folder = write_cifar_dir(tmp_path)
    with (folder / "test_batch").open("wb") as fh:
        pickle.dump({b"data": Path("x"), b"labels": []}, fh)
    with pytest.raises(arena.ConfigError, match="test_batch.*refusing"):
        registry.make_dataset("cifar10", path=str(tmp_path)).load()


def test_cifar10_never_downloads_unless_asked(registry, tmp_path):
    with pytest.raises(arena.ConfigError, match="not found"):
        registry.make_dataset("cifar10", path=str(tmp_path)).load()
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(arena.ConfigError, match="torchvision"):
            registry.make_dataset("cifar10", path=str(tmp_path), download=True).load()


# --- synthetic ------------------------------------------------------------------------------

def test_synthetic_shapes_and_balance(registry):
    data = registry.make_dataset("synthetic", channels=3, size=6, num_classes=5).load()
    check_splits(data, (3, 6, 6), 5)
    assert (len(data.train), len(data.test)) == (512, 256)
    assert torch.bincount(data.train.y, minlength=5).min() >= 512 // 5


def test_synthetic_is_deterministic_in_the_seed(registry):
    ds = registry.make_dataset("synthetic")
    a, b, c = ds.load(seed=0), ds.load(seed=0), ds.load(seed=1)
    assert same(a, b) and not same(a, c)


def test_synthetic_is_learnable(registry):
    data = registry.make_dataset("synthetic").load()
    means = torch.stack([data.train.x[data.train.y == k].mean(0) for k in range(4)]).flatten(1)
    pred = torch.cdist(data.test.x.flatten(1), means).argmin(1)
    assert (pred == data.test.y).float().mean() > 0.95
