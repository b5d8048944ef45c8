"""CIFAR-10 from the standard python pickle directory (``cifar-10-batches-py``)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, PositiveInt

from arena import hookimpl
from arena.data import DataSplits, Dataset, Split
from arena.errors import ConfigError
from arena.plugin import PluginConfig

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
HINT = (
    "set path=... (or ARENA_CIFAR10_DIR) to the cifar-10-batches-py directory or its parent, "
    "or download=true where torchvision and the internet are available"
)

# The only globals a CIFAR-10 batch needs: numpy arrays (numpy 1 and 2 spellings, every
# pickle protocol) and the latin-1 codec protocol 2 uses for bytes written by Python 3.
ALLOWED_GLOBALS = frozenset(
    [(f"numpy.{core}.multiarray", name) for core in ("core", "_core")
     for name in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
)


class BatchUnpickler(pickle.Unpickler):
    """Reads the standard pickle batches but refuses to import anything beyond numpy arrays."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


READ_ERRORS = (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
               IndexError, AttributeError)


def unpickle(path: Path, what: str) -> dict:
    """The dict pickled in ``path`` (a CIFAR-10 or CIFAR-100 file), read with :class:`BatchUnpickler`;
    anything else, or a file that wants more than numpy arrays, is a ConfigError naming ``path``."""
    try:
        with path.open("rb") as fh:
            obj = BatchUnpickler(fh, encoding="bytes").load()
    except READ_ERRORS as exc:
        raise ConfigError(f"{path}: not a {what}: {type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: not a {what}: it holds a {type(obj).__name__}, not a dict")
    return obj


def read_arrays(path: Path, what: str, labels_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and the labels ``labels_key`` ``(N,)`` of one pickled file,
    checked against each other and against ``0..num_classes - 1``."""
    batch = unpickle(path, what)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[labels_key], dtype=np.int64)
    except KeyError as exc:
        key = exc.args[0].decode() if isinstance(exc.args[0], bytes) else exc.args[0]
        raise ConfigError(f"{path}: not a {what}: no {key!r} entry") from None
    except READ_ERRORS as exc:
        raise ConfigError(f"{path}: not a {what}: {type(exc).__name__}: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise ConfigError(f"{path}: corrupt {what}: data {data.shape}, labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"{path}: labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` of one pickled batch."""
    return read_arrays(path, "CIFAR-10 batch", b"labels", 10)


def read_split(directory: Path, names: tuple[str, ...]) -> Split:
    """The batches ``names`` of ``directory`` concatenated, as a float32 split in [0, 1]."""
    parts = [read_batch(directory / name) for name in names]
    return to_split(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    """uint8 images ``(N, 3, 32, 32)`` and int64 labels as a float32 split in [0, 1]."""
    x = images.astype(np.float32)
    x /= 255.0
    return Split(torch.from_numpy(x), torch.from_numpy(labels))


def download(root: Path) -> None:
    """Fetch CIFAR-10 into ``root`` through torchvision (only on ``download=true``)."""
    try:
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10
    except ImportError:
        raise ConfigError(
            "dataset 'cifar10': download=true needs torchvision, which is not available; "
            f"place {FOLDER} under path=... instead"
        ) from None
    for train in (True, False):
        TorchvisionCIFAR10(root=str(root), train=train, download=True)


class CIFAR10(Dataset):
    """CIFAR-10 (Krizhevsky 2009): 60,000 32x32 colour images of 10 classes.

    The CIFAR-10 dataset of seed 000 §IV-B, seed 001 §4.1, seed 002 §4 and seed 003 §4, read
    from the python pickle batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) in
    ``path`` (the ``cifar-10-batches-py`` directory or its parent; else ``ARENA_CIFAR10_DIR``).
    Nothing is downloaded unless ``download=true``, which uses torchvision. Standard 50,000 /
    10,000 split; ``train_size`` / ``test_size`` take seeded subsets.
    """

    id: ClassVar[str] = "cifar10"

    class Config(PluginConfig):
        path: str | None = Field(None, description="cifar-10-batches-py or its parent directory")
        download: bool = Field(False, description="fetch through torchvision when absent")
        train_size: PositiveInt | None = Field(None, description="cap on training samples")
        test_size: PositiveInt | None = Field(None, description="cap on test samples")

    def root(self) -> Path:
        """The configured directory (not yet checked)."""
        configured = self.config.path or os.environ.get("ARENA_CIFAR10_DIR")
        if not configured:
            raise ConfigError(f"dataset 'cifar10': no path configured: {HINT}")
        return Path(configured).expanduser()

    def directory(self) -> Path:
        """The directory holding the batches, downloading into the root only when asked to."""
        root = self.root()
        for candidate in (root / FOLDER, root):
            if all((candidate / name).is_file() for name in TRAIN_FILES + TEST_FILES):
                return candidate
        if self.config.download:
            download(root)
            return root / FOLDER
        raise self.missing(root, HINT)

    def load(self, seed: int = 42) -> DataSplits:
        directory = self.directory()
        train = read_split(directory, TRAIN_FILES)
        test = read_split(directory, TEST_FILES)
        return DataSplits(
            name=self.id,
            train=train.take(self.config.train_size, seed),
            test=test.take(self.config.test_size, seed),
            num_classes=10,
        )


@hookimpl
def arena_register_datasets(register) -> None:
    register(CIFAR10)
