"""A user's own arrays: images and labels from one ``.npz`` or ``.safetensors`` file.

The file holds ``x`` (images) and ``y`` (integer labels), and optionally ``x_test`` and ``y_test``;
without them a seeded, stratified share ``test_fraction`` of ``x`` is held out. ``.npz`` files are
read by numpy with ``allow_pickle=False``; ``.safetensors`` files are parsed here (an 8-byte
header length, a JSON header, raw little-endian data), so neither format can run code and the
``safetensors`` package is not needed. The helpers :func:`holdout` and :func:`finish` are shared
with the ``image-folder`` dataset.
"""
from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from arena import hookimpl
from arena.data import DataSplits, Dataset, Split, seeded_split
from arena.errors import ConfigError
from arena.plugin import PluginConfig

DEFAULT_TEST_FRACTION = 0.2
SUFFIXES = (".npz", ".safetensors")
CHANNEL_COUNTS = (1, 3)  # what a channel axis looks like to layout = "auto": grey or RGB
KEYS = ("x", "y", "x_test", "y_test")
HINT = "set path=... to a .npz or .safetensors file holding x (images) and y (integer labels)"
# safetensors dtype -> numpy dtype (BF16 is widened to float32 by hand)
ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
             "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
MAX_HEADER = 100 * 2**20


# ------------------------------------------------------------------ shared with image-folder
def holdout(x: torch.Tensor, y: torch.Tensor, test_fraction: float | None, seed: int,
            source: str) -> tuple[Split, Split]:
    """A seeded, stratified train/test split of ``(x, y)``; a side left empty is a ConfigError."""
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    train, test = seeded_split(x, y, fraction, seed)
    for name, split in (("test", test), ("training", train)):
        if len(split) == 0:
            raise ConfigError(f"{source}: test_fraction = {fraction} of {len(y)} samples leaves no "
                              f"{name} samples; change test_fraction or add samples")
    return train, test


def finish(name: str, train: Split, test: Split, num_classes: int, config: Any, seed: int) -> DataSplits:
    """The splits capped by the config's ``train_size`` / ``test_size`` (seeded subsets)."""
    return DataSplits(name=name, train=train.take(config.train_size, seed),
                      test=test.take(config.test_size, seed), num_classes=num_classes)


# ------------------------------------------------------------------ reading the file
def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of :data:`KEYS` present in an ``.npz`` file, loaded without pickle."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: not a readable .npz file: {exc}") from None
    if not hasattr(archive, "files"):
        raise ConfigError(f"{path}: holds a single array, not named ones; "
                          "save it with numpy.savez(path, x=..., y=...)")
    with archive:
        try:
            return {key: archive[key] for key in KEYS if key in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise ConfigError(f"{path}: not a readable .npz file: {exc}") from None


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The arrays of :data:`KEYS` present in a ``.safetensors`` file, checked against its header."""

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{path}: not a safetensors file: {reason}")

    try:
        with path.open("rb") as fh:
            size = path.stat().st_size
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"only {len(head)} bytes")
            length = int.from_bytes(head, "little")
            if length > min(MAX_HEADER, size - 8):
                raise bad(f"header of {length} bytes in a file of {size}")
            try:
                header = json.loads(fh.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise bad(f"header is not JSON ({exc})") from None
            if not isinstance(header, dict):
                raise bad("header is not a JSON object")
            start = 8 + length
            out = {}
            for key in KEYS:
                if key in header:
                    out[key] = _st_tensor(fh, header[key], key, start, size, bad)
            return out
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None


def _st_tensor(fh: Any, entry: Any, key: str, start: int, size: int, bad: Any) -> np.ndarray:
    try:
        dtype, shape, (begin, end) = entry["dtype"], [int(s) for s in entry["shape"]], entry["data_offsets"]
        begin, end = int(begin), int(end)
    except (TypeError, KeyError, ValueError) as exc:
        raise bad(f"entry {key!r}: malformed ({type(exc).__name__}: {exc})") from None
    if not isinstance(dtype, str) or dtype not in ST_DTYPES:
        raise bad(f"entry {key!r}: unknown dtype {dtype!r}")
    np_dtype = np.dtype(ST_DTYPES[dtype])
    count = math.prod(shape)
    if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != count * np_dtype.itemsize \
            or start + end > size:
        raise bad(f"entry {key!r}: offsets {[begin, end]} do not fit shape {shape} of {dtype} "
                  f"in a file of {size} bytes")
    fh.seek(start + begin)
    array = np.frombuffer(fh.read(end - begin), dtype=np_dtype).reshape(shape)
    if dtype == "BF16":  # the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


# ------------------------------------------------------------------ checking the arrays
def channel_layout(shape: tuple[int, ...], layout: str, source: str) -> str:
    """``"nchw"`` or ``"nhwc"`` for a 4-D ``shape``: ``layout`` unless it is ``"auto"``, which decides
    only when exactly one of axes 1 and 3 has size 1 or 3 (grey or RGB)."""
    if layout != "auto":
        return layout
    first, last = shape[1] in CHANNEL_COUNTS, shape[3] in CHANNEL_COUNTS
    if first != last:
        return "nchw" if first else "nhwc"
    raise ConfigError(f"{source}: cannot tell the channel axis of shape {shape} (axis 1 or 3 of size 1 "
                      f"or 3, not both): set layout = \"nchw\" or \"nhwc\"")


def to_images(array: np.ndarray, layout: str, source: str) -> torch.Tensor:
    """``(N, C, H, W)`` float32 in [0, 1] from ``(N, C, H, W)``, ``(N, H, W, C)`` or ``(N, H, W)``
    uint8 (divided by 255) or floats (which must lie in [0, 1] already)."""
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4:
        if layout == "nhwc":
            array = array.transpose(0, 3, 1, 2)
    else:
        raise ConfigError(f"{source}: expected images of shape (N, C, H, W), (N, H, W, C) or grey "
                          f"(N, H, W), got {tuple(array.shape)}")
    if 0 in array.shape:
        raise ConfigError(f"{source}: no images (shape {tuple(array.shape)})")
    if array.dtype == np.uint8:
        x = array.astype(np.float32)
        x /= 255.0
    elif array.dtype.kind == "f":
        x = array.astype(np.float32)
        if not np.isfinite(x).all():
            raise ConfigError(f"{source}: holds NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ConfigError(f"{source}: float pixels must lie in [0, 1], found {lo:.4g} .. {hi:.4g}; "
                              "scale them (or store uint8 0..255, which is divided by 255)")
    else:
        raise ConfigError(f"{source}: dtype {array.dtype} is not supported: store uint8 (0..255, divided "
                          "by 255) or floats in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(x))


def to_labels(array: np.ndarray, n: int, source: str, images: str) -> torch.Tensor:
    """``(N,)`` int64 labels (``(N, 1)`` is accepted); anything but integers is a ConfigError."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        onehot = " (one-hot? store y.argmax(1))" if array.ndim == 2 else ""
        raise ConfigError(f"{source}: labels must be 1-D, got shape {tuple(array.shape)}{onehot}")
    if array.dtype.kind not in "iu":
        raise ConfigError(f"{source}: labels must be integers, got dtype {array.dtype}")
    if len(array) != n:
        raise ConfigError(f"{source}: {len(array)} labels for {n} images in {images}")
    if n and int(array.min()) < 0:
        raise ConfigError(f"{source}: label {int(array.min())} is negative; labels lie in [0, num_classes)")
    if n and int(array.max()) > np.iinfo(np.int64).max:
        raise ConfigError(f"{source}: label {int(array.max())} is too large")
    return torch.from_numpy(array.astype(np.int64))


class TensorFile(Dataset):
    """A user's images and labels as arrays in one ``.npz`` or ``.safetensors`` file.

    Not from a paper: the way to bring one's own data to the image-classification setting of
    the seed papers (seed 000 §IV-B, seed 001 §4.1, seed 002 §4, seed 003 §4). ``x`` holds
    ``(N, C, H, W)`` or ``(N, H, W, C)`` images (``layout``; ``"auto"`` decides only when exactly
    one of axes 1 and 3 has size 1 or 3) or ``(N, H, W)`` grey ones, as uint8 (divided by
    255) or floats in [0, 1]; ``y`` integer labels in [0, ``num_classes``) (inferred as the largest
    label + 1 unless given). ``x_test`` / ``y_test`` in the same file are the test split; else
    a seeded, stratified share ``test_fraction`` (0.2) of each class is held out.
    ``train_size`` / ``test_size`` take seeded subsets.
    """

    id: ClassVar[str] = "tensor-file"

    class Config(PluginConfig):
        path: str = Field(description=".npz or .safetensors file with x and y (and x_test, y_test)")
        layout: Literal["auto", "nchw", "nhwc"] = Field("auto", description="axis order of 4-D images")
        num_classes: int | None = Field(None, ge=2, description="class count (default: largest label + 1)")
        test_fraction: float | None = Field(None, gt=0, lt=1,
                                            description="share of each class held out (default 0.2)")
        train_size: PositiveInt | None = Field(None, description="cap on training samples")
        test_size: PositiveInt | None = Field(None, description="cap on test samples")

    def read(self) -> tuple[Path, dict[str, np.ndarray]]:
        path = Path(self.config.path).expanduser()
        if not path.is_file():
            raise self.missing(path, HINT)
        suffix = path.suffix.lower()
        if suffix not in SUFFIXES:
            raise ConfigError(f"dataset '{self.id}': path: {path}: unsupported file type "
                              f"'{path.suffix}'; expected .npz or .safetensors")
        return path, (read_npz(path) if suffix == ".npz" else read_safetensors(path))

    def load(self, seed: int = 42) -> DataSplits:
        cfg = self.config
        path, arrays = self.read()
        for key in ("x", "y"):
            if key not in arrays:
                raise ConfigError(f"{path}: no array '{key}' (it needs x and y; x_test and y_test are optional)")
        if ("x_test" in arrays) != ("y_test" in arrays):
            have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
            raise ConfigError(f"{path}: has {have} but no {lack}")
        has_test = "x_test" in arrays
        if has_test and cfg.test_fraction is not None:
            raise ConfigError(f"dataset '{self.id}': test_fraction: not used, {path} has its own x_test "
                              "and y_test")
        layout = channel_layout(arrays["x"].shape, cfg.layout, f"{path}: x") if arrays["x"].ndim == 4 else ""
        x = to_images(arrays["x"], layout, f"{path}: x")
        y = to_labels(arrays["y"], len(x), f"{path}: y", "x")
        parts = [(x, y, "y")]
        if has_test:
            x_test = to_images(arrays["x_test"], layout, f"{path}: x_test")
            if x_test.shape[1:] != x.shape[1:]:
                raise ConfigError(f"{path}: x_test: images of shape {tuple(x_test.shape[1:])}, "
                                  f"but x has {tuple(x.shape[1:])} (C, H, W)")
            parts.append((x_test, to_labels(arrays["y_test"], len(x_test), f"{path}: y_test", "x_test"),
                          "y_test"))
        largest = max(int(labels.max()) for _, labels, _ in parts)
        num_classes = cfg.num_classes if cfg.num_classes is not None else largest + 1
        for _, labels, key in parts:
            top = int(labels.max())
            if top >= num_classes:
                raise ConfigError(f"{path}: {key}: label {top} outside [0, {num_classes}) "
                                  f"(num_classes = {num_classes})")
        if num_classes < 2:
            raise ConfigError(f"{path}: y: every label is 0; a classifier needs at least 2 classes "
                              "(or set num_classes)")
        if has_test:
            train, test = Split(x, y), Split(*parts[1][:2])
        else:
            train, test = holdout(x, y, cfg.test_fraction, seed, f"dataset '{self.id}': {path}")
        return finish(f"{self.id}({path.name})", train, test, num_classes, cfg, seed)


@hookimpl
def arena_register_datasets(register) -> None:
    register(TensorFile)
