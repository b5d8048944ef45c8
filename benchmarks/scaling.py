"""How a tournament's wall time scales with workers: the runner's schedule simulated on measured times.

Reads the task times of a finished run from its results database, measures the per-task
overhead of a trivial task through the local executor and (with Ray installed) a local Ray
cluster, and simulates the schedule on k = 1, 2, 4, ..., 32 workers:

* the runner's dependency levels (``Runner._run_all``): each level's trainings, then that level's
  matches (in a cascade, one attack's wave after the other), then the next level; every phase
  ends when its last task does (``executor.map`` is drained before the next phase is submitted);
* list scheduling inside a phase: each task, in the runner's submission order (``fifo``, what a
  Ray cluster does with the tasks it was handed) or longest first (``lpt``), goes to the worker
  that frees first;
* (a) one task per match, as today; (b) sharded as :mod:`arena.tournament.shards` shards: each
  attack call of a match (one per budget of a fixed-budget attack, one for a minimal attack) is
  split into its batches, each a task, here at the finest (one batch a shard, ``shards`` at
  least the batch count), with batches of ``s`` samples (``batch_size = s``), a shard costing its
  call's time times its share of the call's samples plus one task overhead (trainings are never
  split). A batch size other than the file's changes the batches' seeds, so the results too (a
  sharded run equals the unsharded run of the same batch size, not of another). From two workers
  on, the start of a fresh Ray cluster's workers (each importing torch, the tournament and the
  plugins) is added once.

Task times. A training's time is its ``train_seconds`` (the defense's ``enter``) plus its share
of the rest of its phase (clean predictions, model checks, sending the entrant). A match's is the
sum of its rows' ``wall_seconds``: a fixed-budget attack runs once per budget, a minimal attack
once for all the budgets it serves and its row's wall is that run divided by the budgets, so the
sum over the rows is the task's attack time either way (the rows of one call share ``started``,
which gives each call's time). What the task does outside its timed
attack loop (judging, metrics, sending the rows back, the store) is read from the gaps between
the sequential run's timestamps and added to it ("judging" below). The check compares the
1-worker sum with the run's measured wall time.

    .venv/bin/arena run tournaments/fashion-mnist.toml --db /tmp/fm.db --cache-dir /tmp/cache  # once
    .venv/bin/python benchmarks/scaling.py --db /tmp/fm.db [--shard 100 --shard 50 --shard 25]
        [--no-ray] [--validate-ray tournaments/fashion-mnist.toml --cache-dir /tmp/ray-cache]

``--validate-ray`` also runs a subset of the tournament on a local Ray cluster (one CPU a task)
and sets its measured wall time against the model's prediction from its own task times.
"""
from __future__ import annotations

import argparse
import heapq
import json
import operator
import os
import sqlite3
import statistics
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

WORKERS = (1, 2, 4, 8, 16, 32)


@dataclass
class Match:
    defense: str
    attack: str
    attack_seconds: float  # the sum of its rows' wall_seconds: its attack runs
    samples: int  # attacked samples (the defense's clean-correct ones)
    start: float  # when its first run started (sequential run: its place in the runner's order)
    calls: list[float] = field(default_factory=list)  # each attack call's time, in order
    judging: float = 0.0  # outside the timed attack loop, from the run's timestamps

    @property
    def seconds(self) -> float:
        return self.attack_seconds + self.judging


@dataclass
class Phase:
    """Tasks the runner hands to the executor at once (one ``executor.map``): durations in the
    runner's order, and for a match phase the matches themselves (to shard)."""

    name: str
    trainings: list[tuple[str, float]] = field(default_factory=list)
    matches: list[Match] = field(default_factory=list)


@dataclass
class Measured:
    phases: list[Phase]
    run_wall: float
    train_sum: float
    attack_sum: float
    judging_sum: float
    phase_rest: float  # training phases' time beyond train_seconds (clean predictions, checks, sending)
    description: str
    batch_size: int = 100


def read_run(db: Path, run_id: int | None = None) -> Measured:
    """The phases of a finished run, with each task's measured time."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    run = conn.execute("SELECT * FROM runs WHERE status = 'finished' " + ("AND id = ?" if run_id else "")
                       + " ORDER BY id DESC LIMIT 1", (run_id,) if run_id else ()).fetchone()
    if run is None:
        raise SystemExit(f"{db}: no finished run{f' {run_id}' if run_id else ''}")
    config = json.loads(run["config_json"])
    provenance = json.loads(run["provenance_json"] or "{}")
    samples, cascade = int(config["samples"]), bool(config.get("cascade"))
    models = {r["defense"]: r for r in conn.execute("SELECT * FROM models WHERE run_id = ?", (run["id"],))}
    rows = conn.execute("SELECT * FROM matches WHERE run_id = ? ORDER BY started", (run["id"],)).fetchall()
    if any(json.loads(r["provenance_json"] or "{}").get("reused") for r in rows):
        raise SystemExit(f"{db}: run {run['id']} reused stored results; time a run made with --fresh")
    if any(json.loads(r["provenance_json"] or "{}").get("surrogate") for r in rows):
        print("note: transfer attacks (crafted once per surrogate) are not modelled; their rows are left out")
        rows = [r for r in rows if not json.loads(r["provenance_json"] or "{}").get("surrogate")]

    matches: dict[tuple[str, str], Match] = {}
    calls: dict[tuple[str, str], dict[float, float]] = {}  # the rows of one attack call share `started`
    for r in rows:
        key = (r["defense"], r["attack"])
        clean = models[r["defense"]]["clean_accuracy"] if r["defense"] in models else 1.0
        m = matches.setdefault(key, Match(*key, 0.0, max(1, round(clean * samples)), r["started"] or 0.0))
        m.attack_seconds += r["wall_seconds"] or 0.0
        m.start = min(m.start, r["started"] or m.start)
        call = calls.setdefault(key, {})
        call[r["started"] or 0.0] = call.get(r["started"] or 0.0, 0.0) + (r["wall_seconds"] or 0.0)
    for key, by_start in calls.items():
        matches[key].calls = [by_start[t] for t in sorted(by_start)]

    # the runner's levels: a defense's depth over its parents ("on", "finetune_from")
    labels, depth = [], {}
    for d in config["defenses"]:
        label = d.get("name") or d["id"]
        labels.append(label)
        parents = [p for p in (d.get("on"), d.get("finetune_from")) if p]
        depth[label] = 1 + max((depth[p] for p in parents if p in depth), default=-1)
    attack_order = [a.get("name") or a["id"] for a in config["attacks"]]

    ordered = sorted(matches.values(), key=operator.attrgetter("start"))
    phases: list[Phase] = []
    for level in range(max(depth.values(), default=-1) + 1):
        members = [label for label in labels if depth[label] == level]
        phases.append(Phase(f"level {level} trainings",
                            trainings=[(label, models[label]["train_seconds"] or 0.0) for label in members
                                       if label in models]))
        level_matches = [m for m in ordered if m.defense in members]
        if cascade:
            for attack in attack_order:
                wave = [m for m in level_matches if m.attack == attack]
                if wave:
                    phases.append(Phase(f"level {level} wave {attack}", matches=wave))
        elif level_matches:
            phases.append(Phase(f"level {level} matches", matches=level_matches))

    # judging: in the sequential run, the gap from a match's attack time to the next match's start
    # within its phase; a phase's last match gets the median of those (a parallel run's gaps say
    # nothing of the kind: its tasks are their attack time alone)
    sequential = provenance.get("executor") in ("local", "inline")
    for phase in phases if sequential else ():
        for a, b in zip(phase.matches, phase.matches[1:]):
            a.judging = max(0.0, b.start - a.start - a.attack_seconds)
    gaps = [m.judging for p in phases for m in p.matches[:-1]]
    typical = statistics.median(gaps) if gaps else 0.0
    for phase in phases if sequential else ():
        if phase.matches:
            phase.matches[-1].judging = typical

    # a training phase lasts from the end of the previous phase to its matches' first start: the
    # part beyond train_seconds is split among its trainings
    rest_total, previous_end = 0.0, run["started"]
    for i, phase in enumerate(phases):
        if phase.trainings:
            following = phases[i + 1] if i + 1 < len(phases) and phases[i + 1].matches else None
            end = following.matches[0].start if following else None
            if end is not None and sequential:
                rest = max(0.0, end - previous_end - sum(s for _, s in phase.trainings))
                rest_total += rest
                phase.trainings = [(label, s + rest / len(phase.trainings)) for label, s in phase.trainings]
        elif phase.matches:
            last = phase.matches[-1]
            previous_end = last.start + last.seconds

    description = (f"run {run['id']} of '{run['name']}' in {db} ({provenance.get('executor', '?')} executor, "
                   f"device {provenance.get('device', '?')}, {provenance.get('torch_threads', '?')} torch threads): "
                   f"{sum(len(p.trainings) for p in phases)} trainings, {len(matches)} matches, "
                   f"{samples} samples, batch {config.get('batch_size')}")
    return Measured(phases, run["finished"] - run["started"],
                    sum(models[label]["train_seconds"] or 0.0 for label in models),
                    sum(m.attack_seconds for m in matches.values()), sum(m.judging for m in matches.values()),
                    rest_total, description, batch if isinstance(batch := config.get("batch_size"), int) else 100)


def shards(match: Match, size: int | None) -> list[float]:
    """The match's tasks: the whole match (``size`` None), else each attack call split into its
    batches of ``size`` attacked samples, each costing its share of the call's time (the match's
    judging spread over its calls)."""
    if size is None:
        return [match.seconds]
    scale = match.seconds / match.attack_seconds if match.attack_seconds > 0 else 1.0
    calls = match.calls or [match.attack_seconds]
    if match.attack_seconds <= 0:
        calls = [match.seconds / len(calls)] * len(calls)
        scale = 1.0
    return [c * scale * min(size, match.samples - lo) / match.samples
            for c in calls for lo in range(0, match.samples, size)]


def simulate(phases: list[Phase], workers: int, overhead: float, shard: int | None = None,
             policy: str = "fifo") -> float:
    """The wall time of ``phases`` on ``workers`` workers: each phase list-scheduled, one after
    the other."""
    total = 0.0
    for phase in phases:
        tasks = [s for _, s in phase.trainings] + [t for m in phase.matches for t in shards(m, shard)]
        if not tasks:
            continue
        tasks = [t + overhead for t in tasks]
        if policy == "lpt":
            tasks.sort(reverse=True)
        free = [0.0] * min(workers, len(tasks))
        for t in tasks:
            heapq.heappush(free, heapq.heappop(free) + t)
        total += max(free)
    return total


def simulate_unbarred(phases: list[Phase], workers: int, overhead: float, shard: int | None = None) -> float:
    """Like :func:`simulate` in the runner's order, but without the phase barriers: a match may
    start as soon as its own entrant is trained (a training as soon as its parents are; entrants
    are taken to depend on everything of the phases before theirs)."""
    free = [0.0] * workers
    ready: dict[str, float] = {}
    floor = 0.0  # everything of the previous levels done
    for phase in phases:
        ends = []
        for label, seconds in phase.trainings:
            start = max(heapq.heappop(free), floor)
            ready[label] = start + seconds + overhead
            heapq.heappush(free, ready[label])
            ends.append(ready[label])
        for m in phase.matches:
            for t in shards(m, shard):
                start = max(heapq.heappop(free), ready.get(m.defense, floor))
                heapq.heappush(free, start + t + overhead)
                ends.append(start + t + overhead)
        if phase.matches:
            floor = max([floor, *ends])
    return max(free)


# ------------------------------------------------------------------------------- overheads

def _timed_tasks(executor, count: int) -> list[float]:
    """Seconds per trivial task (``json.dumps([1, 2])``: a plain Python function, which both
    executors send by reference), one at a time, after a warm-up."""
    for _ in executor.map(json.dumps, [(i, ([1, 2],)) for i in range(3)]):
        pass
    out = []
    for i in range(count):
        start = time.perf_counter()
        for _ in executor.map(json.dumps, [(i, ([1, 2],))]):
            pass
        out.append(time.perf_counter() - start)
    return out


def local_overhead(count: int = 50) -> float:
    from arena.tournament.executors import LocalExecutor

    executor = LocalExecutor()
    try:
        return statistics.median(_timed_tasks(executor, count))
    finally:
        executor.close()


def _warm_up() -> int:
    """What a fresh Ray worker does before its first tournament task: import torch, the
    tournament and the installed plugins."""
    import arena
    import arena.tournament.runner  # noqa: F401

    arena.load_plugins()
    return os.getpid()


@dataclass
class RayOverheads:
    latency: float  # a trivial task, one at a time (median)
    in_flight: float  # worker time per trivial task with many submitted at once
    cold_start: float  # a fresh cluster's workers until each has imported the tournament and the plugins
    init: float  # ray.init itself (before a run starts, as the local executor's forkserver)
    cpus: int


def ray_overheads(count: int = 50, burst: int = 200) -> RayOverheads | None:
    """The per-task overheads of a local Ray cluster (None without Ray)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return None
    from arena.tournament.executors import RayExecutor

    start = time.perf_counter()
    executor = RayExecutor(num_cpus=1)
    try:
        init, start = time.perf_counter() - start, time.perf_counter()
        cpus = int(executor.ray.cluster_resources().get("CPU", 1))
        for _ in executor.map(_warm_up, [(i, ()) for i in range(cpus)]):
            pass
        cold = time.perf_counter() - start
        latency = statistics.median(_timed_tasks(executor, count))
        start = time.perf_counter()
        for _ in executor.map(json.dumps, [(i, ([1, 2],)) for i in range(burst)]):
            pass
        return RayOverheads(latency, (time.perf_counter() - start) * cpus / burst, cold, init, cpus)
    finally:
        executor.close()


# ------------------------------------------------------------------------------- validation

def ray_subset(tournament: Path, attacks: list[str], cache_dir: Path, db: Path) -> tuple[float, float]:
    """Run the tournament with only ``attacks`` on a local Ray cluster (one CPU a task);
    returns the run's wall time and the cluster's CPUs."""
    import arena
    from arena.tournament.executors import RayExecutor
    from arena.tournament.plan import parse_tournament
    from arena.tournament.runner import Runner
    from arena.tournament.store import Store

    data = tomllib.loads(tournament.read_text())
    data["attacks"] = [a for a in data["attacks"] if (a.get("name") or a["id"]) in attacks]
    registry = arena.load_plugins()
    try:  # one task per match, as the model's (a) (where the runner shards matches)
        plan = parse_tournament({**data, "shards": 1}, registry)
    except arena.ConfigError:  # a runner without sharding
        plan = parse_tournament(data, registry)
    executor = RayExecutor(num_cpus=1)
    try:
        cpus = executor.ray.cluster_resources().get("CPU", 1)
        store = Store(db)
        run_id = Runner(plan, store, cache_dir=cache_dir, progress=False, executor=executor, reuse=False).run()
        record = store.run(run_id)
        return record.finished - record.started, cpus
    finally:
        executor.close()


def subset(measured: Measured, attacks: list[str]) -> list[Phase]:
    return [Phase(p.name, p.trainings, [m for m in p.matches if m.attack in attacks]) for p in measured.phases]


# ------------------------------------------------------------------------------- report

def table(measured: Measured, overhead: float, sizes: list[int], policy: str, startup: float = 0.0) -> str:
    """Workers -> wall, speed-up and efficiency for (a) and each shard size of (b); ``startup`` is
    added from two workers on (a cluster's start, against the local executor on one)."""
    base = simulate(measured.phases, 1, overhead, None, policy)
    schemes = [("(a) one task per match", None)] + [(f"(b) batch {s}, 1 a shard", s) for s in sizes]
    head = f"{'workers':>7} |" + "|".join(f" {name:<24}" for name, _ in schemes)
    sub = f"{'':>7} |" + "|".join(f" {'wall s':>7} {'speed-up':>8} {'eff.':>6} " for _ in schemes)
    lines = [head, sub, "-" * len(sub)]
    for k in WORKERS:
        cells = []
        for _, size in schemes:
            wall = simulate(measured.phases, k, overhead, size, policy) + (startup if k > 1 else 0.0)
            cells.append(f" {wall:7.1f} {base / wall:7.2f}x {base / wall / k:6.0%} ")
        lines.append(f"{k:>7} |" + "|".join(cells))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, required=True, help="results database of a finished, sequential run")
    parser.add_argument("--run", type=int, help="run id (default: the newest finished run)")
    parser.add_argument("--shard", type=int, action="append", help="batch size of the sharded case, one batch a "
                        "shard (repeatable; default: the run's batch size, 50 and 25)")
    parser.add_argument("--no-ray", action="store_true", help="do not start a local Ray cluster")
    parser.add_argument("--overhead", type=float, help="per-task overhead in seconds (default: Ray's measured "
                        "latency, else the local executor's)")
    parser.add_argument("--startup", type=float, help="seconds added from 2 workers on (default: a fresh Ray "
                        "cluster's measured start, else 0)")
    parser.add_argument("--validate-ray", type=Path, metavar="TOURNAMENT",
                        help="also run a subset of this tournament file on a local Ray cluster and compare")
    parser.add_argument("--subset", default="fgsm-linf,bim,pgd-linf,pgd-l2,deepfool-l2,jsma",
                        help="the attacks of the Ray validation run")
    parser.add_argument("--validate-db", type=Path, help="database of the validation run (default: a temporary one)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".arena/cache"),
                        help="model cache of the validation run (its one-thread models: trained on the first "
                        "such run, loaded by later ones)")
    args = parser.parse_args()
    measured = read_run(args.db, args.run)
    sizes = args.shard or sorted({measured.batch_size, 50, 25}, reverse=True)
    print(measured.description)
    print(f"load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs")
    local = local_overhead()
    ray = None if args.no_ray else ray_overheads()
    print(f"per-task overhead (trivial task, median of 50, one at a time): local executor {1e3 * local:.1f} ms"
          + (f"; local Ray cluster {1e3 * ray.latency:.1f} ms (with 200 in flight: {1e3 * ray.in_flight:.1f} ms of "
             f"worker time each on {ray.cpus} CPUs); a fresh Ray cluster's workers take {ray.cold_start:.1f} s to "
             f"import the tournament and the plugins (after ray.init's {ray.init:.1f} s, which comes before a run "
             f"starts)" if ray else "; Ray: not measured"))
    overhead = args.overhead if args.overhead is not None else (ray.latency if ray else local)
    startup = args.startup if args.startup is not None else (ray.cold_start if ray else 0.0)

    tasks = sum(len(p.trainings) + len(p.matches) for p in measured.phases)
    one = measured.train_sum + measured.phase_rest + measured.attack_sum + measured.judging_sum
    timed = measured.train_sum + measured.attack_sum + tasks * local
    print(f"check (1 worker): trainings {measured.train_sum:.1f} s + matches' attack runs {measured.attack_sum:.1f} s"
          f" + {tasks} x {1e3 * local:.1f} ms local overhead = {timed:.1f} s, against the run's wall "
          f"{measured.run_wall:.1f} s ({timed / measured.run_wall:.1%}); the rest, "
          f"{measured.run_wall - timed:.1f} s, is judging outside the attack loop "
          f"({measured.judging_sum:.1f} s) and the trainings' clean predictions, checks and sending "
          f"({measured.phase_rest:.1f} s), read from the timestamps and added to the tasks: "
          f"{one:.1f} s modelled, simulated 1-worker wall {simulate(measured.phases, 1, 0.0):.1f} s")
    longest = max((m for p in measured.phases for m in p.matches), key=operator.attrgetter("seconds"))
    slowest = max((t for p in measured.phases for t in p.trainings), key=operator.itemgetter(1))
    print(f"critical tasks: training {slowest[0]} {slowest[1]:.1f} s; match {longest.attack} vs "
          f"{longest.defense} {longest.seconds:.1f} s ({longest.samples} attacked samples, "
          f"{len(longest.calls)} attack call(s))")
    for policy, what in (("fifo", "in the runner's order (FIFO)"), ("lpt", "longest first (LPT)")):
        print(f"\nlist scheduling {what}, per-task overhead {1e3 * overhead:.1f} ms, from 2 workers on "
              f"+ {startup:.1f} s for the Ray workers' start; speed-up and efficiency against the 1-worker time of (a)")
        print(table(measured, overhead, sizes, policy, startup))

    unbarred = (f"{k} workers {simulate_unbarred(measured.phases, k, overhead, min(sizes)) + startup * (k > 1):.1f} s"
                for k in WORKERS)
    print(f"\nwithout the level barrier (a match starts once its own entrant is built), runner's order, "
          f"batch {min(sizes)}, one a shard: " + ", ".join(unbarred))

    if args.validate_ray:
        attacks = [a for a in args.subset.split(",") if a]
        with tempfile.TemporaryDirectory() as tmp:
            db = args.validate_db or Path(tmp) / "ray.db"
            wall, cpus = ray_subset(args.validate_ray, attacks, args.cache_dir, db)
            own = read_run(db)
        k = int(cpus)
        ray_overhead, cold = (ray.latency, ray.cold_start) if ray else (overhead, startup)
        sub = subset(measured, attacks)
        seq_matches = sum(m.seconds for p in sub for m in p.matches)
        own_matches = sum(m.seconds for p in own.phases for m in p.matches)
        print(f"\nvalidation: {args.validate_ray} with attacks {', '.join(attacks)} on a local Ray cluster of "
              f"{k} CPUs, one task per CPU (one torch thread each: the model cache key holds the thread count, "
              f"so the first such run trains its models again, a later one loads them)")
        print(f"  measured wall {wall:.1f} s (trainings {own.train_sum:.1f} s, matches {own_matches:.1f} s of "
              f"task time); the model on that run's own task times: {simulate(own.phases, k, ray_overhead):.1f} s "
              f"(fifo), {simulate(own.phases, k, ray_overhead, policy='lpt'):.1f} s (lpt), + {cold:.1f} s workers' "
              f"start = {simulate(own.phases, k, ray_overhead) + cold:.1f} s (fifo)")
        for phase, mine in zip(sub, own.phases):  # the trainings as they ran in the Ray run
            phase.trainings = mine.trainings if mine.trainings else phase.trainings
        slower = own_matches / seq_matches if seq_matches else float("nan")
        print(f"  the same matches took {seq_matches:.1f} s in the sequential run ({slower:.2f}x "
              f"as long with one thread each, two at a time on these {os.cpu_count()} cores); with those times the "
              f"model says {simulate(sub, k, ray_overhead) + cold:.1f} s on {k} workers: what {k} workers of the "
              f"sequential run's speed (each with its own cores) would take")


if __name__ == "__main__":
    main()
