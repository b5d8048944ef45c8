"""What running every match in a worker process costs: ``arena run`` end to end with the local
executor (worker processes) against the inline executor (the same tasks in the driver, the
executor every run used before workers), on the same tournament file.

Both runs share one model cache, filled by a first untimed run, so the figure is the cost of
isolation on the matches and entrant builds (loading, clean predictions), not training time.
Runs alternate (inline first in each pair); the report gives every run and the median ratio.

    .venv/bin/python benchmarks/isolation.py tournaments/quickstart.toml --repeats 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARENA = [sys.executable, "-c", "from arena.cli import main; main()"]


def timed(file: Path, executor: str, cache: Path, db: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([*ARENA, "run", str(file), "--executor", executor, "--db", str(db), "--cache-dir", str(cache),
                    "--quiet"], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (make test uses 1)")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        timed(args.file, "inline", cache, Path(tmp) / "warm.db", env)  # trains once, untimed
        runs: dict[str, list[float]] = {"inline": [], "local": []}
        for i in range(args.repeats):
            for executor in runs:
                runs[executor].append(timed(args.file, executor, cache, Path(tmp) / f"{executor}{i}.db", env))
    inline, local = (statistics.median(runs[k]) for k in ("inline", "local"))
    print(f"{args.file} (models cached, {args.threads} thread(s), {args.repeats} repeats)")
    for executor, times in runs.items():
        print(f"  {executor:6s} " + "  ".join(f"{t:6.2f}" for t in times) + f"   median {statistics.median(times):6.2f} s")
    print(f"  local / inline = {local / inline:.3f}")


if __name__ == "__main__":
    main()
