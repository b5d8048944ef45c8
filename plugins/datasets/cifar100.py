"""CIFAR-100 from the standard python pickle directory (``cifar-100-python``).

The directory holds three pickled dicts: ``train`` (50,000 images) and ``test`` (10,000), each with
``data`` (``(N, 3072)`` uint8, 1024 red, 1024 green then 1024 blue values per row),
``fine_labels`` and ``coarse_labels``, and ``meta`` with ``fine_label_names`` (100) and
``coarse_label_names`` (20). They are read with CIFAR-10's safe unpickler, which refuses any
global beyond numpy arrays.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, PositiveInt

from arena import hookimpl
from arena.data import DataSplits, Dataset, Split
from arena.errors import ConfigError
from arena.plugin import PluginConfig
from arena_builtins.datasets.cifar10 import read_arrays, to_split, unpickle

FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
# label -> (labels key of train/test, names key of meta, class count)
LABELS = {"fine": (b"fine_labels", b"fine_label_names", 100),
          "coarse": (b"coarse_labels", b"coarse_label_names", 20)}
HINT = (
    "set path=... (or ARENA_CIFAR100_DIR) to the cifar-100-python directory (train, test, meta) "
    "or its parent, or download=true where torchvision and the internet are available"
)


def read_names(path: Path, key: bytes, count: int) -> tuple[str, ...]:
    """The ``count`` class names stored under ``key`` in the ``meta`` file."""
    meta = unpickle(path, "CIFAR-100 meta file")
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise ConfigError(f"{path}: not a CIFAR-100 meta file: no list of names under {key.decode()!r}")
    if len(names) != count:
        raise ConfigError(f"{path}: {key.decode()}: {len(names)} names, expected {count}")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def download(root: Path) -> None:
    """Fetch CIFAR-100 into ``root`` through torchvision (only on ``download=true``)."""
    try:
        from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100
    except ImportError:
        raise ConfigError(
            "dataset 'cifar100': download=true needs torchvision, which is not available; "
            f"place {FOLDER} under path=... instead"
        ) from None
    for train in (True, False):
        TorchvisionCIFAR100(root=str(root), train=train, download=True)


class CIFAR100(Dataset):
    """CIFAR-100 (Krizhevsky 2009): 60,000 32x32 colour images of 100 classes in 20 superclasses.

    CIFAR-10's sibling from the same report (Krizhevsky, "Learning Multiple Layers of Features
    from Tiny Images", 2009, ch. 3): a harder stand-in for the CIFAR-10 of seed 000 §IV-B,
    seed 001 §4.1, seed 002 §4 and seed 003 §4. Read from the python pickle files ``train``,
    ``test`` and ``meta`` in ``path`` (the ``cifar-100-python`` directory or its parent; else
    ``ARENA_CIFAR100_DIR``). ``label = "fine"`` (default) gives the 100 classes, ``"coarse"`` the
    20 superclasses. Nothing is downloaded unless ``download=true``, which uses torchvision.
    Standard 50,000 / 10,000 split; ``train_size`` / ``test_size`` take seeded subsets.
    """

    id: ClassVar[str] = "cifar100"

    class Config(PluginConfig):
        path: str | None = Field(None, description="cifar-100-python or its parent directory")
        label: Literal["fine", "coarse"] = Field("fine", description="100 fine classes or 20 coarse ones")
        download: bool = Field(False, description="fetch through torchvision when absent")
        train_size: PositiveInt | None = Field(None, description="cap on training samples")
        test_size: PositiveInt | None = Field(None, description="cap on test samples")

    classes: tuple[str, ...] = ()  # the class names of the last load, label i first

    def root(self) -> Path:
        """The configured directory (not yet checked)."""
        configured = self.config.path or os.environ.get("ARENA_CIFAR100_DIR")
        if not configured:
            raise ConfigError(f"dataset 'cifar100': no path configured: {HINT}")
        return Path(configured).expanduser()

    def directory(self) -> Path:
        """The directory holding the three files, downloading into the root only when asked to."""
        root = self.root()
        candidates = (root / FOLDER, root)
        for candidate in candidates:
            if all((candidate / name).is_file() for name in FILES):
                return candidate
        if self.config.download:
            download(root)
            return root / FOLDER
        for candidate in candidates:  # a copy with some files only: say which are missing
            if any((candidate / name).is_file() for name in FILES):
                absent = ", ".join(name for name in FILES if not (candidate / name).is_file())
                raise self.missing(candidate, f"it lacks {absent}; {HINT}")
        raise self.missing(root, HINT)

    def load(self, seed: int = 42) -> DataSplits:
        directory = self.directory()
        labels_key, names_key, count = LABELS[self.config.label]
        self.classes = read_names(directory / "meta", names_key, count)
        splits: list[Split] = []
        for name in ("train", "test"):
            images, labels = read_arrays(directory / name, "CIFAR-100 file", labels_key, count)
            splits.append(to_split(images, labels))
        train, test = splits
        return DataSplits(
            name=self.id if self.config.label == "fine" else f"{self.id}-coarse",
            train=train.take(self.config.train_size, seed),
            test=test.take(self.config.test_size, seed),
            num_classes=count,
        )


@hookimpl
def arena_register_datasets(register) -> None:
    register(CIFAR100)
