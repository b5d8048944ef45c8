"""Every tournament file under tournaments/ runs end to end, cut to toy scale by
:func:`arena.tournament.smoke.shrink` (every entry, budget, threat view and metric kept); all but
keras-mixed.toml, whose model files `arena train` writes first.

The paper-scale MNIST and CIFAR-10 files (tournaments/papers/mnist/, cifar10/) have no copy of
their data here. They run on a stand-in local copy in the format they read (idx files; the
python pickle batches), made of classes that a network can learn in the few training steps
left, so that the attacks have correctly classified samples to attack. Measured: in each MNIST
file, and in the CIFAR-10 seed 001, 003 and 004 files, some entrants classify some of the 4
samples correctly; in the CIFAR-10 seed 000 (VGG-19) and seed 002 files none does, so there
the attacks find no sample to attack, and the trainings, defenses, metrics and bookkeeping are
what is exercised. The figures mean nothing; that no training, match or metric fails does.
Without this, a mistake in one of these files would show only hours into a user's run."""
from __future__ import annotations

import gzip
import pickle
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest

from arena.tournament.executors import InlineExecutor
from arena.tournament.plan import parse_tournament
from arena.tournament.runner import Runner
from arena.tournament.smoke import shrink
from arena.tournament.store import Store

TOURNAMENTS = Path(__file__).parent.parent / "tournaments"
#: Every tournament file but keras-mixed.toml, whose model files `arena train` writes first.
FILES = sorted(p for p in TOURNAMENTS.glob("**/*.toml") if p.name != "keras-mixed.toml")
FASHION = Path("/usr/share/datasets/fashion-mnist")


def images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images whose class is where a bright block sits (one of ten cells of a grid), in noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    x = rng.integers(0, 70, size=(n, channels, size, size)).astype(np.uint8)
    cell = size // 4
    for i, c in enumerate(labels):
        r, k = divmod(int(c), 4)
        x[i, :, r * cell:(r + 1) * cell, k * cell:(k + 1) * cell] = 230
    return x, labels.astype(np.uint8)


def idx_copy(root: Path, n: int = 300) -> Path:
    """MNIST's four idx files (gzip), 28x28."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, seed in (("train", 0), ("t10k", 1)):
        x, y = images(n, 28, 1, seed)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as fh:
            fh.write(struct.pack(">II", 0x801, n) + y.tobytes())
    return root


def cifar_copy(root: Path, n: int = 60) -> Path:
    """CIFAR-10's pickle batches (five training batches and the test batch), 3x32x32."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        x, y = images(n, 32, 3, i)
        with (folder / name).open("wb") as fh:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": [int(v) for v in y]}, fh)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(TOURNAMENTS).as_posix() for p in FILES])
def test_the_tournament_file_runs_end_to_end_at_toy_scale(path, registry, tmp_path):
    data = shrink(tomllib.loads(path.read_text()), registry)
    dataset = data["dataset"] if isinstance(data["dataset"], dict) else {"id": data["dataset"]}
    if dataset["id"] in ("mnist", "cifar10"):  # no copy here: a stand-in in the format the file reads
        copy = idx_copy if dataset["id"] == "mnist" else cifar_copy
        dataset["params"]["path"] = str(copy(tmp_path / "data"))
    elif dataset["id"] == "fashion-mnist" and not FASHION.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make test installs it)")
    plan = parse_tournament(data, registry, source=str(path))
    store = Store(tmp_path / "r.db")
    run = Runner(plan, store, cache_dir=tmp_path / "cache", progress=False, executor=InlineExecutor()).run()
    models, matches = store.models(run), store.matches(run)
    assert {m.defense for m in models} == {d.label for d in plan.defenses}
    assert [(m.defense, m.attack, m.budget, m.error) for m in matches if not m.ok] == []
    assert len(matches) >= len(plan.attacks)
    bad_metrics = [(r.metric, r.defense, r.attack, r.error) for r in store.metrics(run) if r.status == "failed"]
    assert bad_metrics == []
    store.close()


