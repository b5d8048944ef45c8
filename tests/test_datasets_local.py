"""A user's own data: the ``image-folder``, ``tensor-file`` and ``cifar100`` datasets on tiny files
written in their real formats, through the installed registry, and one tournament on an image tree."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import arena
from arena import testing
from arena.data import DataSplits
from arena.testing import DatasetContract

Image = pytest.importorskip("PIL.Image", reason="Pillow (a dependency of matplotlib) is not installed")

CLASSES = ("cat", "dog", "emu")


def same(a: DataSplits, b: DataSplits) -> bool:
    return all(torch.equal(getattr(getattr(a, s), f), getattr(getattr(b, s), f))
               for s in ("train", "test") for f in ("x", "y"))


def check_splits(data: DataSplits, shape: tuple[int, ...], num_classes: int) -> None:
    for split in (data.train, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64 and len(split) > 0
        assert tuple(split.x.shape[1:]) == shape
        assert 0 <= float(split.x.min()) and float(split.x.max()) <= 1
        assert 0 <= int(split.y.min()) and int(split.y.max()) < num_classes
    assert data.num_classes == num_classes and data.input_shape == shape


def one_line_error(registry, dataset_id: str, match: str, **params) -> str:
    """The ConfigError of building and loading the dataset: one line, matching ``match``."""
    with pytest.raises(arena.ConfigError, match=match) as info:
        registry.make_dataset(dataset_id, **params).load(seed=0)
    assert "\n" not in str(info.value)
    return str(info.value)


# ------------------------------------------------------------------ files in the real formats
def write_tree(root: Path, per_class: int = 5, size: tuple[int, int] = (8, 8), mode: str = "RGB",
               classes: tuple[str, ...] = CLASSES, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """``root/<class>/<i>.png``: class k is a noisy image of brightness (k + 1) / (K + 1)."""
    rng = np.random.default_rng(seed)
    pixels: dict[str, list[np.ndarray]] = {}
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        pixels[name] = []
        for i in range(per_class):
            shape = size if mode == "L" else (*size, 3)
            base = 255 * (k + 1) / (len(classes) + 1)
            array = np.clip(base + rng.normal(0, 20, shape), 0, 255).astype(np.uint8)
            Image.fromarray(array, mode=None).save(root / name / f"{i:02d}.png")
            pixels[name].append(array)
    return pixels


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def write_safetensors(path: Path, **arrays: np.ndarray) -> Path:
    """The safetensors layout, by hand: u64 header length, JSON header, little-endian data."""
    codes = {np.dtype("float32"): "F32", np.dtype("float64"): "F64", np.dtype("uint8"): "U8",
             np.dtype("int64"): "I64", np.dtype("int32"): "I32"}
    header, blobs, offset = {"__metadata__": {"format": "np"}}, [], 0
    for key, array in arrays.items():
        blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[key] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                       "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    return path


def images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 4) -> Path:
    """``cifar-100-python/{train,test,meta}`` as the real copy pickles them (protocol 2, bytes keys)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [(7 * j + len(name)) % 100 for j in range(n)]
        batch = {b"filenames": [f"img_{j}.png".encode() for j in range(n)], b"batch_label": name.encode(),
                 b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                 b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    with (folder / "meta").open("wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return folder


# ------------------------------------------------------------------ the contract suites
class TestImageFolderContract(DatasetContract):
    dataset_id = "image-folder"

    @pytest.fixture(autouse=True)
    def _files(self, tmp_path):
        write_tree(tmp_path / "tree", per_class=3)
        self.params = {"path": str(tmp_path / "tree"), "test_fraction": 0.34}


class TestTensorFileContract(DatasetContract):
    dataset_id = "tensor-file"

    @pytest.fixture(autouse=True)
    def _files(self, tmp_path):
        write_npz(tmp_path / "d.npz", x=images(12, (1, 6, 6)), y=np.arange(12) % 3)
        self.params = {"path": str(tmp_path / "d.npz")}


class TestCIFAR100Contract(DatasetContract):
    dataset_id = "cifar100"

    @pytest.fixture(autouse=True)
    def _files(self, tmp_path):
        self.params = {"path": str(write_cifar100(tmp_path))}


def test_registered_as_built_ins_with_docstrings(registry):
    for dataset_id, plugin in (("image-folder", "datasets-folder"), ("tensor-file", "datasets-tensors"),
                               ("cifar100", "datasets-cifar100")):
        cls = registry.datasets[dataset_id]
        assert cls.id == dataset_id and (cls.__doc__ or "").strip()
        assert registry.owners[("datasets", dataset_id)].plugin == plugin


# ------------------------------------------------------------------ image-folder
def test_image_folder_reads_classes_in_sorted_order(registry, tmp_path):
    train_px = write_tree(tmp_path / "train", per_class=4)
    test_px = write_tree(tmp_path / "test", per_class=2, seed=1)
    ds = registry.make_dataset("image-folder", path=str(tmp_path / "train"), test_path=str(tmp_path / "test"))
    data = ds.load(seed=0)
    check_splits(data, (3, 8, 8), 3)
    assert ds.classes == CLASSES and data.name == "image-folder(cat, dog, emu)"
    assert data.train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and data.test.y.tolist() == [0, 0, 1, 1, 2, 2]
    expected = np.stack([a.transpose(2, 0, 1) for name in CLASSES for a in train_px[name]]) / 255.0
    np.testing.assert_allclose(data.train.x.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(data.test.x[5].numpy(), test_px["emu"][1].transpose(2, 0, 1) / 255.0, atol=1e-6)


def test_image_folder_holdout_is_seeded_stratified_and_capped(registry, tmp_path):
    write_tree(tmp_path, per_class=10)
    ds = registry.make_dataset("image-folder", path=str(tmp_path))
    a, b, c = ds.load(seed=1), ds.load(seed=1), ds.load(seed=2)
    assert same(a, b) and not same(a, c)
    assert torch.bincount(a.test.y).tolist() == [2, 2, 2] and len(a.train) == 24  # default test_fraction 0.2
    half = registry.make_dataset("image-folder", path=str(tmp_path), test_fraction=0.5).load(seed=1)
    assert torch.bincount(half.test.y).tolist() == [5, 5, 5]
    capped = registry.make_dataset("image-folder", path=str(tmp_path), train_size=7, test_size=4)
    x, y = capped.load(seed=3), capped.load(seed=3)
    assert (len(x.train), len(x.test)) == (7, 4) and same(x, y)


def test_image_folder_classes_param_orders_and_restricts(registry, tmp_path):
    write_tree(tmp_path)
    ds = registry.make_dataset("image-folder", path=str(tmp_path), classes=["emu", "cat"], test_fraction=0.4)
    data = ds.load(seed=0)
    assert data.num_classes == 2 and ds.classes == ("emu", "cat") and data.name == "image-folder(emu, cat)"
    brightest = data.train.x[data.train.y == 0].mean()  # emu is the brightest class of write_tree
    assert brightest > data.train.x[data.train.y == 1].mean()


def test_image_folder_resizes_converts_and_reads_every_format(registry, tmp_path):
    from PIL import features

    rng = np.random.default_rng(0)
    rgb = lambda h, w: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    (tmp_path / "a" / "nested").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    rgb(10, 12).save(tmp_path / "a" / "x.jpg")
    rgb(5, 5).save(tmp_path / "a" / "y.JPEG")
    rgb(7, 3).save(tmp_path / "a" / "nested" / "z.bmp")
    rgb(8, 8).convert("P").save(tmp_path / "a" / "p.gif")
    Image.fromarray(rng.integers(0, 256, (6, 9, 4), dtype=np.uint8), "RGBA").save(tmp_path / "b" / "alpha.png")
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "b" / "deep.png")  # 16-bit grey
    Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)).save(tmp_path / "b" / "grey.PNG")
    n_b = 3
    if features.check("webp"):
        rgb(4, 4).save(tmp_path / "b" / "w.webp")
        n_b += 1
    (tmp_path / "b" / "notes.txt").write_text("not an image")  # ignored
    (tmp_path / "b" / ".hidden.png").write_bytes(b"garbage")  # hidden: skipped
    (tmp_path / ".git").mkdir()  # hidden folder: not a class
    for grayscale, channels in ((False, 3), (True, 1)):
        data = registry.make_dataset("image-folder", path=str(tmp_path), size=[4, 6], grayscale=grayscale,
                                     test_fraction=0.5).load(seed=0)
        check_splits(data, (channels, 4, 6), 2)
        assert len(data.train) + len(data.test) == 4 + n_b
    deep = registry.make_dataset("image-folder", path=str(tmp_path), size=[2, 2], grayscale=True,
                                 test_fraction=0.5).load(seed=0)
    every = torch.cat([deep.train.x, deep.test.x])
    assert int((every == 1).flatten(1).all(1).sum()) == 1  # the 16-bit white image, scaled by 65535


FOLDER_ERRORS = [
    ("missing", r"not found at .*nowhere: path must name a folder"),
    ("file", r"path: .*f\.png is not a folder"),
    ("no-classes", r"path: .* has no class subfolders.*move them into one subfolder per class"),
    ("one-class", r"path: .* has one class folder \('cat'\)"),
    ("empty-class", r"dog: no images \(\.png, .*\) for class 'dog'"),
    ("odd-size", r"dog/00\.png: 7x8 pixels \(height x width\), but .*cat/00\.png is 8x8; set size = \[H, W\]"),
    ("unreadable", r"emu/00\.png: not a readable image"),
    ("test-classes", r"test_path: .* has other classes than path; missing 'emu'; extra 'yak'"),
    ("test-missing", r"not found at .*nope: test_path must name a folder"),
    ("absent-class", r"classes: no folder .*/yak \(in path\)"),
    ("tiny-holdout", r"test_fraction = 0\.1 of 6 samples leaves no test samples"),
]


@pytest.mark.parametrize("case, match", FOLDER_ERRORS, ids=[case for case, _ in FOLDER_ERRORS])
def test_image_folder_errors_are_one_line_config_errors(registry, tmp_path, case, match):
    root, params = tmp_path / "tree", {}
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "file":
        root = tmp_path / "f.png"
        root.write_bytes(b"x")
    elif case == "no-classes":
        root.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "loose.png")
    elif case == "one-class":
        write_tree(root, classes=("cat",))
    elif case == "tiny-holdout":
        write_tree(root, per_class=2)
        params["test_fraction"] = 0.1
    else:
        write_tree(root, per_class=2)
    if case == "empty-class":
        for f in (root / "dog").iterdir():
            f.unlink()
    elif case == "odd-size":
        Image.fromarray(np.zeros((7, 8, 3), np.uint8)).save(root / "dog" / "00.png")
    elif case == "unreadable":
        (root / "emu" / "00.png").write_bytes(b"\x89PNG garbage")
    elif case == "test-classes":
        write_tree(tmp_path / "test", per_class=1, classes=("cat", "dog", "yak"))
        params["test_path"] = str(tmp_path / "test")
    elif case == "test-missing":
        params["test_path"] = str(tmp_path / "nope")
    elif case == "absent-class":
        params["classes"] = ["cat", "yak"]
    one_line_error(registry, "image-folder", match, path=str(root), **params)


@pytest.mark.parametrize("params, match", [
    ({"test_path": "t", "test_fraction": 0.3}, r"test_fraction: not used when test_path is given"),
    ({"size": [0, 4]}, r"size\[0\]: Input should be greater than 0"),
    ({"size": [4]}, r"size\[1\]: Field required"),
    ({"classes": ["a", "b", "a"]}, r"classes: 'a' listed twice"),
    ({"classes": ["a"]}, r"classes: Tuple should have at least 2 items"),
    ({"trian_size": 4}, r"trian_size: unknown key \(did you mean 'train_size'\?\)"),
], ids=["fraction-and-test-path", "size-zero", "size-one-number", "class-twice", "one-class", "typo"])
def test_image_folder_bad_params_fail_before_loading(registry, params, match):
    with pytest.raises(arena.ConfigError, match=match) as info:
        registry.make_dataset("image-folder", path="anywhere", **params)
    assert "\n" not in str(info.value)
    with pytest.raises(arena.ConfigError, match=r"path: Field required"):
        registry.make_dataset("image-folder")


# ------------------------------------------------------------------ tensor-file
@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "grey"])
def test_tensor_file_layouts_and_formats(registry, tmp_path, fmt, layout):
    nchw = images(10, (3, 5, 6)) if layout != "grey" else images(10, (1, 5, 6))
    stored = {"nchw": nchw, "nhwc": nchw.transpose(0, 2, 3, 1), "grey": nchw[:, 0]}[layout]
    x_test = images(4, nchw.shape[1:], seed=1)
    arrays = {"x": stored, "y": np.arange(10, dtype=np.int64) % 4,
              "x_test": {"nchw": x_test, "nhwc": x_test.transpose(0, 2, 3, 1), "grey": x_test[:, 0]}[layout],
              "y_test": np.array([3, 2, 1, 0], dtype=np.int32)}
    writer = write_npz if fmt == "npz" else write_safetensors
    path = writer(tmp_path / f"d.{fmt}", **arrays)
    data = registry.make_dataset("tensor-file", path=str(path)).load(seed=0)
    check_splits(data, nchw.shape[1:], 4)
    np.testing.assert_allclose(data.train.x.numpy(), nchw / 255.0, atol=1e-7)
    np.testing.assert_allclose(data.test.x.numpy(), x_test / 255.0, atol=1e-7)
    assert data.test.y.tolist() == [3, 2, 1, 0] and data.name == f"tensor-file(d.{fmt})"


def test_tensor_file_floats_holdout_and_num_classes(registry, tmp_path):
    x = np.random.default_rng(0).random((20, 2, 5, 5))  # float64 in [0, 1), two channels: say the layout
    path = write_safetensors(tmp_path / "f.safetensors", x=x, y=np.arange(20, dtype=np.int64) % 2)
    one_line_error(registry, "tensor-file", r"x: cannot tell the channel axis of shape \(20, 2, 5, 5\).*layout",
                   path=str(path))
    ds = registry.make_dataset("tensor-file", path=str(path), layout="nchw", num_classes=5, test_fraction=0.5)
    a, b, c = ds.load(seed=0), ds.load(seed=0), ds.load(seed=1)
    check_splits(a, (2, 5, 5), 5)
    assert same(a, b) and not same(a, c) and torch.bincount(a.test.y).tolist() == [5, 5]
    assert torch.equal(torch.cat([a.train.x, a.test.x]).sort(0).values,
                       torch.from_numpy(x.astype(np.float32)).sort(0).values)
    capped = registry.make_dataset("tensor-file", path=str(path), layout="nchw", train_size=3, test_size=2)
    assert (len(capped.load(0).train), len(capped.load(0).test)) == (3, 2)
    ambiguous = write_npz(tmp_path / "a.npz", x=images(8, (3, 4, 3)), y=np.arange(8) % 2)
    assert registry.make_dataset("tensor-file", path=str(ambiguous), layout="nhwc").load(0).input_shape == (3, 3, 4)


TENSOR_ERRORS = [
    ("missing", r"not found at .*nowhere\.npz: set path=\.\.\. to a \.npz or \.safetensors file"),
    ("suffix", r"path: .*d\.pt: unsupported file type '\.pt'; expected \.npz or \.safetensors"),
    ("not-zip", r"d\.npz: not a readable \.npz file"),
    ("pickled", r"d\.npz: not a readable \.npz file: .*allow_pickle"),
    ("no-x", r"d\.npz: no array 'x'"),
    ("no-y", r"d\.npz: no array 'y'"),
    ("no-y-test", r"d\.npz: has x_test but no y_test"),
    ("range", r"d\.npz: x: float pixels must lie in \[0, 1\], found 0 \.\. \d+; scale them"),
    ("nan", r"d\.npz: x: holds NaN or infinite values"),
    ("rank", r"d\.npz: x: expected images of shape \(N, C, H, W\), \(N, H, W, C\) or grey \(N, H, W\), got \(6, 16\)"),
    ("dtype", r"d\.npz: x: dtype int16 is not supported"),
    ("float-labels", r"d\.npz: y: labels must be integers, got dtype float32"),
    ("one-hot", r"d\.npz: y: labels must be 1-D, got shape \(6, 3\) \(one-hot\? store y\.argmax\(1\)\)"),
    ("negative", r"d\.npz: y: label -1 is negative"),
    ("too-large", r"d\.npz: y: label 3 outside \[0, 3\) \(num_classes = 3\)"),
    ("test-too-large", r"d\.npz: y_test: label 7 outside \[0, 3\)"),
    ("lengths", r"d\.npz: y: 5 labels for 6 images in x"),
    ("test-shape", r"d\.npz: x_test: images of shape \(1, 4, 5\), but x has \(1, 4, 4\)"),
    ("one-class", r"d\.npz: y: every label is 0; a classifier needs at least 2 classes"),
    ("fraction", r"test_fraction: not used, .*d\.npz has its own x_test and y_test"),
]


@pytest.mark.parametrize("case, match", TENSOR_ERRORS, ids=[case for case, _ in TENSOR_ERRORS])
def test_tensor_file_errors_are_one_line_config_errors(registry, tmp_path, case, match):
    x, y = images(6, (4, 4)), np.array([0, 1, 2, 0, 1, 2])
    arrays = {"x": x, "y": y}
    params = {}
    path = tmp_path / "d.npz"
    if case == "missing":
        path = tmp_path / "nowhere.npz"
    elif case == "suffix":
        path = tmp_path / "d.pt"
        path.write_bytes(b"x")
    elif case == "not-zip":
        path.write_bytes(b"definitely not a zip archive")
    else:
        arrays.update({
            "pickled": {"x": np.array([{"a": 1}] * 6, dtype=object)},
            "no-x": {"x": None}, "no-y": {"y": None}, "no-y-test": {"x_test": x},
            "range": {"x": x.astype(np.float32)}, "nan": {"x": np.full((6, 4, 4), np.nan, np.float32)},
            "rank": {"x": x.reshape(6, 16)}, "dtype": {"x": x.astype(np.int16)},
            "float-labels": {"y": y.astype(np.float32)}, "one-hot": {"y": np.eye(3)[y].astype(np.int64)},
            "negative": {"y": y - 1}, "too-large": {"y": y + 1}, "lengths": {"y": y[:5]},
            "one-class": {"y": np.zeros(6, np.int64)},
            "test-too-large": {"x_test": x[:2], "y_test": np.array([0, 7])},
            "test-shape": {"x_test": images(2, (4, 5)), "y_test": np.array([0, 1])},
            "fraction": {"x_test": x[:2], "y_test": np.array([0, 1])},
        }.get(case, {}))
        params = {"too-large": {"num_classes": 3}, "test-too-large": {"num_classes": 3},
                  "fraction": {"test_fraction": 0.5}}.get(case, {})
        write_npz(path, **{k: v for k, v in arrays.items() if v is not None})
    one_line_error(registry, "tensor-file", match, path=str(path), **params)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:5], r"only 5 bytes"),
    (lambda b: (10**9).to_bytes(8, "little") + b[8:], r"header of 1000000000 bytes"),
    (lambda b: b[:8] + b"!" + b[9:], r"header is not JSON"),
    (lambda b: b[:-4], r"entry 'y': offsets \[16, 48\] do not fit shape \[4\] of I64 in a file of \d+ bytes"),
], ids=["short", "huge-header", "not-json", "truncated"])
def test_tensor_file_broken_safetensors(registry, tmp_path, damage, match):
    path = write_safetensors(tmp_path / "d.safetensors", x=images(4, (2, 2)), y=np.arange(4, dtype=np.int64) % 2)
    path.write_bytes(damage(path.read_bytes()))
    one_line_error(registry, "tensor-file", rf"d\.safetensors: not a safetensors file: {match}", path=str(path))


# ------------------------------------------------------------------ cifar100
@pytest.mark.parametrize("parent", [True, False], ids=["root", "python-dir"])
def test_cifar100_reads_the_pickle_directory(registry, tmp_path, parent):
    folder = write_cifar100(tmp_path)
    ds = registry.make_dataset("cifar100", path=str(tmp_path if parent else folder))
    data = ds.load()
    check_splits(data, (3, 32, 32), 100)
    assert (len(data.train), len(data.test)) == (6, 4) and data.name == "cifar100"
    assert ds.classes == tuple(f"fine{i}" for i in range(100))
    with (folder / "train").open("rb") as fh:
        train = pickle.load(fh, encoding="bytes")
    blue = (data.train.x[2, 2] * 255).round().numpy()
    np.testing.assert_array_equal(blue, train[b"data"][2][2048:].reshape(32, 32))
    assert data.train.y.tolist() == train[b"fine_labels"]
    coarse = registry.make_dataset("cifar100", path=str(folder), label="coarse")
    data = coarse.load()
    check_splits(data, (3, 32, 32), 20)
    assert data.train.y.tolist() == train[b"coarse_labels"] and data.name == "cifar100-coarse"
    assert coarse.classes[19] == "coarse19"


def test_cifar100_caps_are_seeded_and_label_is_checked(registry, tmp_path):
    write_cifar100(tmp_path, n_train=12)
    ds = registry.make_dataset("cifar100", path=str(tmp_path), train_size=5, test_size=2)
    a, b = ds.load(seed=0), ds.load(seed=0)
    assert (len(a.train), len(a.test)) == (5, 2) and same(a, b)
    with pytest.raises(arena.ConfigError, match=r"label: Input should be 'fine' or 'coarse'"):
        registry.make_dataset("cifar100", path=str(tmp_path), label="super")


def test_cifar100_missing_incomplete_or_corrupt(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("ARENA_CIFAR100_DIR", raising=False)
    one_line_error(registry, "cifar100", r"no path configured: .*ARENA_CIFAR100_DIR")
    one_line_error(registry, "cifar100", r"not found at .*nowhere: set path", path=str(tmp_path / "nowhere"))
    folder = write_cifar100(tmp_path / "c")
    monkeypatch.setenv("ARENA_CIFAR100_DIR", str(tmp_path / "c"))
    assert len(registry.make_dataset("cifar100").load().test) == 4
    (folder / "meta").unlink()
    one_line_error(registry, "cifar100", r"not found at .*cifar-100-python: it lacks meta; set path")
    folder = write_cifar100(tmp_path / "d")
    (folder / "test").write_bytes(b"garbage")
    one_line_error(registry, "cifar100", r"cifar-100-python/test: not a CIFAR-100 file", path=str(folder))
    with (folder / "test").open("wb") as fh:
        pickle.dump({b"data": Path("x"), b"fine_labels": []}, fh)
    one_line_error(registry, "cifar100", r"test: not a CIFAR-100 file: UnpicklingError: refusing to load pathlib",
                   path=str(folder))
    with (folder / "test").open("wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"coarse_labels": [0, 1]}, fh)
    one_line_error(registry, "cifar100", r"test: not a CIFAR-100 file: no 'fine_labels' entry", path=str(folder))
    with (folder / "test").open("wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, fh)
    one_line_error(registry, "cifar100", r"test: labels outside 0\.\.99", path=str(folder))
    with (folder / "meta").open("wb") as fh:
        pickle.dump({b"fine_label_names": [b"a"] * 10, b"coarse_label_names": [b"b"] * 20}, fh)
    one_line_error(registry, "cifar100", r"meta: fine_label_names: 10 names, expected 100", path=str(folder))


def test_cifar100_never_downloads_unless_asked(registry, tmp_path):
    one_line_error(registry, "cifar100", "not found", path=str(tmp_path))
    try:
        import torchvision  # noqa: F401
    except ImportError:
        one_line_error(registry, "cifar100", "torchvision", path=str(tmp_path), download=True)


# ------------------------------------------------------------------ a user's images in a tournament
TOURNAMENT = """
name = "my-images"
dataset = {{ id = "image-folder", params = {{ path = "{path}", grayscale = true, test_fraction = 0.25 }} }}
architecture = "digits-cnn"
samples = 12
[training]
epochs = 1
batch_size = 8
lr = 0.01
[[defenses]]
id = "standard"
[[attacks]]
id = "fgsm"
budgets = [0.1, 0.3]
"""


def test_an_image_folder_enters_a_tournament(tmp_path):
    """8x8 grey images in three class folders: trained one epoch, attacked with FGSM on 12 samples."""
    from click.testing import CliRunner

    from arena import cli as arena_cli
    from arena.tournament.store import Store

    write_tree(tmp_path / "images", per_class=16, mode="L")
    path = tmp_path / "mine.toml"

    def run(tree: Path):
        path.write_text(TOURNAMENT.format(path=tree))
        return CliRunner().invoke(arena_cli.cli, ["run", str(path), "--db", str(tmp_path / "r.db"), "--quiet",
                                                  "--executor", "inline", "--cache-dir", str(tmp_path / "cache")],
                                  obj=arena_cli.CliState(testing.registry()))

    result = run(tmp_path / "images")
    assert result.exit_code == 0, result.output
    assert "my-images on image-folder" in result.stdout
    store = Store(tmp_path / "r.db")
    matches, (model,) = store.matches(1), store.models(1)
    assert [(m.defense, m.attack, m.budget, m.status) for m in matches] == [
        ("standard", "fgsm", 0.1, "ok"), ("standard", "fgsm", 0.3, "ok")]
    assert all(len(m.robust_mask) == 12 and m.robust_accuracy <= model.clean_accuracy for m in matches)
    assert store.run(1).config["dataset"]["params"]["path"] == str(tmp_path / "images")  # the data's provenance
    broken = run(tmp_path / "elsewhere")  # a wrong path: exit 2 and one line, before anything trains
    assert broken.exit_code == 2 and "not found at" in broken.output and "Traceback" not in broken.output
    assert len(broken.output.strip().splitlines()) == 1, broken.output
