"""A user's own images: an ImageFolder tree ``path/<class>/<image>`` read with Pillow.

Classes are the subfolders of ``path`` in sorted order (labels 0..K-1), or the list ``classes``;
hidden entries (names starting with a dot) are skipped. Each class folder is searched
recursively, in sorted order, for ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif`` and
``.webp`` files (any case; other files are ignored; a GIF or WebP gives its first frame). Images
are converted to RGB (or to grey with ``grayscale = true``; an alpha channel is dropped), resized
to ``size = [H, W]`` with Pillow's antialiased bilinear filter when it is given, and scaled to
[0, 1] (8-bit channels by 255, 16-bit grey PNGs by 65535). Pillow is imported on the first load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, PositiveInt, ValidationInfo, field_validator

from arena import hookimpl
from arena.data import DataSplits, Dataset, Split
from arena.errors import ConfigError
from arena.plugin import PluginConfig
from arena_builtins.datasets.tensors import finish, holdout

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
NAMED_CLASSES = 8  # at most this many class names in DataSplits.name


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, hidden entries skipped), in sorted order."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top, f) for f in files if not f.startswith(".") and f.lower().endswith(SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def subfolders(root: Path) -> list[str]:
    """The names of the visible subfolders of ``root``, sorted."""
    return sorted(e.name for e in os.scandir(root) if not e.name.startswith(".") and e.is_dir())


def summary(classes: tuple[str, ...]) -> str:
    """The class names for ``DataSplits.name``: all of them, or the first few and the count."""
    if len(classes) <= NAMED_CLASSES:
        return ", ".join(classes)
    return ", ".join(classes[:NAMED_CLASSES]) + f", ... ({len(classes)} classes)"


class Reader:
    """Reads image files into ``(C, H, W)`` float32 arrays of one size: ``size`` when given, else
    the size of the first file read (``first``), which every later file must share."""

    def __init__(self, size: tuple[int, int] | None, grayscale: bool) -> None:
        self.size, self.grayscale = size, grayscale
        self.first: tuple[Path, tuple[int, int]] | None = None

    @property
    def shape(self) -> tuple[int, int, int] | None:
        hw = self.size or (self.first[1] if self.first else None)
        return (1 if self.grayscale else 3, *hw) if hw else None

    def read(self, path: Path) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as img:
                hw = (img.height, img.width)
                if self.size is None:
                    if self.first is None:
                        self.first = (path, hw)
                    elif hw != self.first[1]:
                        (first, (h, w)) = self.first
                        raise ConfigError(f"{path}: {hw[0]}x{hw[1]} pixels (height x width), but {first} is "
                                          f"{h}x{w}; set size = [H, W] to resize every image")
                return self.pixels(img, path)
        except ConfigError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ConfigError(f"{path}: not a readable image: {type(exc).__name__}: {exc}") from None

    def pixels(self, img: Any, path: Path) -> np.ndarray:
        from PIL import Image

        resample = Image.Resampling.BILINEAR
        target = (self.size[1], self.size[0]) if self.size else None  # Pillow's (width, height)
        if img.mode in SIXTEEN_BIT:  # 16-bit grey PNGs: scale by 65535 in float ("F") images
            values = np.asarray(img).astype(np.float64)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise ConfigError(f"{path}: {img.mode} pixels outside 0..65535")
            grey = Image.fromarray((values / 65535.0).astype(np.float32))
            if target:
                grey = grey.resize(target, resample)
            out = np.clip(np.asarray(grey, dtype=np.float32), 0.0, 1.0)[None]
            return out if self.grayscale else np.repeat(out, 3, axis=0)
        if img.mode == "F":
            raise ConfigError(f"{path}: floating-point images (mode F) are not supported; save 8- or "
                              "16-bit images")
        img = img.convert("L" if self.grayscale else "RGB")
        if target:
            img = img.resize(target, resample)
        values = np.asarray(img, dtype=np.uint8)
        values = values[None] if self.grayscale else values.transpose(2, 0, 1)
        return values.astype(np.float32) / 255.0


class ImageFolder(Dataset):
    """A user's images in an ImageFolder tree, ``path/<class>/<image>`` (one folder per class).

    Not from a paper: the way to bring one's own images to the image-classification setting of
    the seed papers (seed 000 §IV-B, seed 001 §4.1, seed 002 §4, seed 003 §4), laid out as
    torchvision's ``ImageFolder`` reads it. Labels 0..K-1 follow the sorted class folder names,
    or the order of ``classes`` when given (which also restricts the classes used). The test
    split is a second tree ``test_path`` with the same classes, else a seeded, stratified share
    ``test_fraction`` (0.2) of each class. Without ``size = [H, W]`` every image must have one
    size. ``grayscale = true`` gives one channel, else three (RGB); pixels lie in [0, 1].
    ``train_size`` / ``test_size`` take seeded subsets.
    """

    id: ClassVar[str] = "image-folder"

    class Config(PluginConfig):
        path: str = Field(description="folder of class subfolders of images")
        classes: tuple[str, ...] | None = Field(
            None, min_length=2, description="class folders to use, label i first (default: all, sorted)")
        test_path: str | None = Field(None, description="a second tree with the same classes: the test split")
        test_fraction: float | None = Field(None, gt=0, lt=1,
                                            description="share of each class held out (default 0.2)")
        size: tuple[PositiveInt, PositiveInt] | None = Field(None, description="[height, width] to resize to")
        grayscale: bool = Field(False, description="one grey channel instead of RGB")
        train_size: PositiveInt | None = Field(None, description="cap on training samples")
        test_size: PositiveInt | None = Field(None, description="cap on test samples")

        @field_validator("classes")
        @classmethod
        def _distinct(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
            if value is not None and len(set(value)) != len(value):
                twice = sorted({c for c in value if value.count(c) > 1})
                raise ValueError(f"{', '.join(map(repr, twice))} listed twice")
            return value

        @field_validator("test_fraction")
        @classmethod
        def _no_fraction_with_test_path(cls, value: float | None, info: ValidationInfo) -> float | None:
            if value is not None and info.data.get("test_path") is not None:
                raise ValueError("not used when test_path is given (the test split is that tree)")
            return value

    classes: tuple[str, ...] = ()  # the class names of the last load, label i first

    def tree(self, field: str) -> Path:
        """The folder named by the config field ``field`` (``path`` or ``test_path``), checked."""
        root = Path(getattr(self.config, field)).expanduser()
        if not root.exists():
            raise self.missing(root, f"{field} must name a folder with one subfolder of images per class "
                                     f"({field}/<class>/<image>.png)")
        if not root.is_dir():
            raise ConfigError(f"dataset '{self.id}': {field}: {root} is not a folder (expected "
                              f"{field}/<class>/<image>)")
        return root

    def class_names(self, root: Path, field: str) -> tuple[str, ...]:
        """The classes of the tree ``root``: ``classes`` when configured, else its sorted subfolders."""
        found = subfolders(root)
        if self.config.classes is not None:
            absent = [c for c in self.config.classes if c not in found]
            if absent:
                raise ConfigError(f"dataset '{self.id}': classes: no folder {root / absent[0]} (in {field})")
            return self.config.classes
        if not found:
            loose = " (it holds images directly: move them into one subfolder per class)" if image_files(root) else ""
            raise ConfigError(f"dataset '{self.id}': {field}: {root} has no class subfolders, expected "
                              f"{field}/<class>/<image>{loose}")
        if len(found) < 2:
            raise ConfigError(f"dataset '{self.id}': {field}: {root} has one class folder ({found[0]!r}); "
                              "a classifier needs at least 2")
        return tuple(found)

    def files(self, root: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
        """``(file, label)`` for every image of the tree, class by class."""
        out = []
        for label, name in enumerate(classes):
            found = image_files(root / name)
            if not found:
                raise ConfigError(f"{root / name}: no images ({', '.join(SUFFIXES)}) for class {name!r}")
            out += [(f, label) for f in found]
        return out

    def read_tree(self, files: list[tuple[Path, int]], reader: Reader) -> tuple[torch.Tensor, torch.Tensor]:
        x: np.ndarray | None = None
        for i, (path, _) in enumerate(files):
            pixels = reader.read(path)
            if x is None:  # the shape is known from the first image (or size): fill in place
                x = np.empty((len(files), *reader.shape), dtype=np.float32)
            x[i] = pixels
        y = np.array([label for _, label in files], dtype=np.int64)
        return torch.from_numpy(x), torch.from_numpy(y)

    def load(self, seed: int = 42) -> DataSplits:
        cfg = self.config
        root = self.tree("path")
        classes = self.class_names(root, "path")
        train_files = self.files(root, classes)
        test_files = None
        if cfg.test_path is not None:
            test_root = self.tree("test_path")
            if cfg.classes is None:
                other = self.class_names(test_root, "test_path")
                if other != classes:
                    missing = [c for c in classes if c not in other]
                    extra = [c for c in other if c not in classes]
                    raise ConfigError(
                        f"dataset '{self.id}': test_path: {test_root} has other classes than path"
                        + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
                        + (f"; extra {', '.join(map(repr, extra))}" if extra else ""))
            else:
                self.class_names(test_root, "test_path")
            test_files = self.files(test_root, classes)
        reader = Reader(cfg.size, cfg.grayscale)
        x, y = self.read_tree(train_files, reader)
        if test_files is None:
            train, test = holdout(x, y, cfg.test_fraction, seed, f"dataset '{self.id}': {root}")
        else:
            train, test = Split(x, y), Split(*self.read_tree(test_files, reader))
        self.classes = classes
        return finish(f"{self.id}({summary(classes)})", train, test, len(classes), cfg, seed)


@hookimpl
def arena_register_datasets(register) -> None:
    register(ImageFolder)
