"""MNIST's idx format: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) and MNIST.

A directory holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or gzipped (``.gz``);
the dotted spelling ``train-images.idx3-ubyte`` of some mirrors is accepted too. Files are
parsed with numpy (big-endian header, magic 2051 for images and 2049 for labels) and nothing
is cached on disk.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field, PositiveInt

from arena import hookimpl
from arena.data import DataSplits, Dataset, Split
from arena.errors import ConfigError
from arena.plugin import PluginConfig

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
FASHION_HINT = "install Debian's dataset-fashion-mnist or set path=..."
MNIST_HINT = "set path=... (or ARENA_MNIST_DIR) to a directory of MNIST's idx files"


def find_file(directory: Path, prefix: str, kind: str, hint: str) -> Path:
    """``{prefix}-{kind}`` in ``directory``, plain or ``.gz``, dash or dot spelling."""
    dashed = f"{prefix}-{kind}"
    for stem in (dashed, dashed.replace("-idx", ".idx", 1)):
        for name in (stem, f"{stem}.gz"):
            if (directory / name).is_file():
                return directory / name
    raise Dataset.missing(directory / f"{prefix}-{kind}[.gz]", hint)


def read_bytes(path: Path) -> bytes:
    """The (decompressed) contents of ``path``; a broken gzip stream is a ConfigError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"{path}: cannot read idx file: {exc}") from None


def parse_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of an idx file: ``(N, rows, cols)`` for images, ``(N,)`` for labels."""
    data = read_bytes(path)
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise ConfigError(f"{path}: corrupt idx file: only {len(data)} bytes")
    found, *dims = np.frombuffer(data, dtype=">u4", count=1 + ndim).tolist()
    if found != magic:
        what = "image" if magic == IMAGES_MAGIC else "label"
        raise ConfigError(
            f"{path}: corrupt idx {what} file: magic number {found}, expected {magic}"
        )
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise ConfigError(
            f"{path}: corrupt idx file: header promises {size} bytes of data, "
            f"found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_split(directory: Path, prefix: str, hint: str, num_classes: int) -> Split:
    """Images and labels of one split (``train`` or ``t10k``), validated against each other."""
    images_path = find_file(directory, prefix, "images-idx3-ubyte", hint)
    labels_path = find_file(directory, prefix, "labels-idx1-ubyte", hint)
    images = parse_idx(images_path, IMAGES_MAGIC)
    labels = parse_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise ConfigError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise ConfigError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    x = images.astype(np.float32)[:, None]
    x /= 255.0
    return Split(torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)))


class IdxConfig(PluginConfig):
    path: str | None = Field(None, description="directory of the four idx files")
    train_size: PositiveInt | None = Field(None, description="cap on training samples")
    test_size: PositiveInt | None = Field(None, description="cap on test samples")


class IdxDataset(Dataset):
    """Base of the idx-format datasets (not registered itself): subclasses set the defaults."""

    num_classes: ClassVar[int] = 10
    hint: ClassVar[str] = FASHION_HINT
    Config = IdxConfig

    def configured_path(self) -> str | None:
        """Where the idx files are, before checking that the directory exists."""
        return self.config.path

    def directory(self) -> Path:
        """The directory to read; a ConfigError where none is configured or it is absent."""
        configured = self.configured_path()
        if not configured:
            raise ConfigError(f"dataset '{self.id}': no path configured: {self.hint}")
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise self.missing(path, self.hint)
        return path

    def load(self, seed: int = 42) -> DataSplits:
        directory = self.directory()
        train = read_split(directory, "train", self.hint, self.num_classes)
        test = read_split(directory, "t10k", self.hint, self.num_classes)
        return DataSplits(
            name=self.id,
            train=train.take(self.config.train_size, seed),
            test=test.take(self.config.test_size, seed),
            num_classes=self.num_classes,
        )


class FashionMNIST(IdxDataset):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 28x28 grey images of 10 clothing classes.

    The offline drop-in for MNIST (seed 000 §IV-B, seed 001 §4.1, seed 002 §4, seed 003 §4,
    seed 004), read from Debian's ``dataset-fashion-mnist`` under
    ``/usr/share/datasets/fashion-mnist`` unless ``path`` says otherwise. Standard 60,000 /
    10,000 split; ``train_size`` / ``test_size`` take seeded subsets.
    """

    id: ClassVar[str] = "fashion-mnist"

    class Config(IdxConfig):
        path: str | None = Field("/usr/share/datasets/fashion-mnist", description="idx directory")


class MNIST(IdxDataset):
    """MNIST (LeCun et al. 1998), the dataset of seed 000 §IV-B, seed 001 §4.1, seed 002 §4 and
    seed 003 §4: 70,000 28x28 handwritten digits from a local directory of idx files.

    ``path`` names the directory, else the environment variable ``ARENA_MNIST_DIR``; nothing is
    downloaded. Standard 60,000 / 10,000 split; ``train_size`` / ``test_size`` take seeded subsets.
    """

    id: ClassVar[str] = "mnist"
    hint: ClassVar[str] = MNIST_HINT

    class Config(IdxConfig):
        pass

    def configured_path(self) -> str | None:
        return self.config.path or os.environ.get("ARENA_MNIST_DIR") or None


@hookimpl
def arena_register_datasets(register) -> None:
    register(FashionMNIST)
    register(MNIST)
