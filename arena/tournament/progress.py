"""Progress of a tournament run: what runs now, what finished how, and when the rest will be done.

The runner reports three events: a task starts (:meth:`Progress.feed` wraps the jobs it hands
to the executor; every executor pulls a job just before it runs it, Ray all of them at
submission), a training finished (:meth:`Progress.trained`), a match finished
(:meth:`Progress.matched`). The same events arrive from every executor, so the output is the
same for ``local``, ``inline`` and ``ray``.

On a terminal the run shows one bar: the phase (``training 2/5``, ``matches 7/40``), the running
task, the estimated time left and the robust accuracy of the last finished match. Elsewhere (a
log file, CI) it prints one line per finished task::

    [12/45 00:31] match pgd-linf vs gda (eps=0.1): ok, robust 41.5%, 2.3 s, ETA 01:10

Only finished matches report a robust accuracy: a worker process answers once, at the end of
its task, so a running attack's per-batch figures never reach the driver.

The time left is weighted by expected cost (:class:`Estimator`): each task has an expected cost
in *units*, about one forward and backward pass of one sample (a training: epochs × training
samples × what its defense adds per sample; a match: attacked samples × the attack's steps ×
restarts × ... per call; a black-box query counts a third, a forward pass), and the seconds per
unit are measured on the finished tasks: of the same defense or attack where there are some, of
the same kind (training, match) else, of any kind else. A run whose cheap tasks come first so
does not promise that its expensive remainder is nearly done.
"""
from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from arena.labels import budget_label

MODES = ("auto", "bar", "lines", "quiet", "off")
TICK = 1.0  # seconds between redraws of the bar (its clock and ETA move between events too)
ANY = "*"  # the calibration group of every task
QUERY = 1 / 3  # a query (a forward pass) in units: about a third of a forward and backward pass
ITERATIONS = ("steps", "max_iterations", "iterations", "draws")
MULTIPLIERS = ("binary_search_steps", "restarts", "n_target_classes", "eot_iter", "eot_samples", "rounds",
               "init_evals")


@dataclass(frozen=True)
class Output:
    """How a run shows its progress on stderr, and where else it logs it.

    ``mode``: ``auto`` (a bar on a terminal, one line per finished task elsewhere), ``bar``,
    ``lines``, ``quiet`` (only the lines of tasks that failed) or ``off`` (nothing). ``verbose``
    adds a line when a task starts and the stored row's details under each finished task's
    line. ``log``: a file the lines (with the verbose details when ``verbose``) are appended to,
    whatever ``mode``.
    """

    mode: str = "auto"
    verbose: bool = False
    log: Path | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown progress mode {self.mode!r}; choose {', '.join(MODES)}")


# ------------------------------------------------------------------------------ the estimate

@dataclass
class Task:
    """One training or match of a run, with its expected cost in units."""

    key: Any
    kind: str  # "training" or "match"
    name: str  # "gda", "pgd-linf vs gda"
    units: float
    groups: tuple[str, ...] = (ANY,)  # calibration groups, the most specific first
    detail: str = ""  # "(training-time)", "(eps=0.1, 0.2)"
    started: float | None = None
    started_at: float | None = None  # the wall-clock time (time.time()) it started
    finished: float | None = None
    seconds: float | None = None  # wall time attributed to it (since the previous task finished)
    failed: bool = False
    teaches: tuple[str, ...] | None = None  # the groups it calibrates when finished (None: all its groups)

    @property
    def done(self) -> bool:
        return self.finished is not None


class Estimator:
    """Time left from expected costs, calibrated online.

    Each finished task is charged the wall time since the previous task finished (or since the
    estimator started): with one task at a time that is its own time, with parallel tasks (Ray)
    the run's throughput, and the charges add up to the elapsed time either way. A task that
    calibrates adds its charge and its units to each of its groups; the seconds per unit of a
    pending task are those of its first group with a calibrating task, and the time left is the
    sum over pending tasks of units × seconds per unit, less the time since the last finish.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.begun = self.last = clock()
        self.tasks: dict[Any, Task] = {}
        self.sums: dict[str, list[float]] = {}  # group -> [seconds, units]

    def add(self, task: Task) -> Task:
        self.tasks[task.key] = task
        return task

    def start(self, key: Any, now: float | None = None) -> Task:
        task = self.tasks[key]
        if task.started is None:
            task.started = self.clock() if now is None else now
            task.started_at = time.time()
        return task

    def finish(self, key: Any, now: float | None = None, calibrate: bool = True, failed: bool = False) -> Task:
        """Mark ``key`` finished; with ``calibrate`` its charge calibrates its groups (a task that
        failed, timed out or came from a cache says nothing of what the others will cost)."""
        now = self.clock() if now is None else now
        task = self.tasks[key]
        task.seconds = max(0.0, now - self.last)
        task.finished, task.failed = now, failed
        if task.started is None:
            task.started = now - task.seconds
        self.last = now
        if calibrate and task.units > 0:
            for group in task.groups if task.teaches is None else task.teaches:
                sums = self.sums.setdefault(group, [0.0, 0.0])
                sums[0] += task.seconds
                sums[1] += task.units
        return task

    def rate(self, task: Task) -> float | None:
        """Seconds per unit for ``task``: from its most specific calibrated group."""
        for group in task.groups:
            seconds, units = self.sums.get(group, (0.0, 0.0))
            if units > 0:
                return seconds / units
        return None

    def expected(self, task: Task) -> float | None:
        rate = self.rate(task)
        return None if rate is None else rate * task.units

    def pending(self) -> list[Task]:
        return [t for t in self.tasks.values() if not t.done]

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until every pending task is done; None before anything calibrated."""
        pending = self.pending()
        if not pending:
            return 0.0
        total = 0.0
        for task in pending:
            expected = self.expected(task)
            if expected is None:
                return None
            total += expected
        now = self.clock() if now is None else now
        return max(0.0, total - (now - self.last))

    @property
    def total_units(self) -> float:
        return sum(t.units for t in self.tasks.values())

    @property
    def done_units(self) -> float:
        return sum(t.units for t in self.tasks.values() if t.done)


# ------------------------------------------------------------------------------ expected costs

def _number(config: Any, name: str) -> float | None:
    value = getattr(config, name, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)


def attack_units(attack: Any) -> float:
    """The expected cost of one call of ``attack`` per attacked sample, in units: its iterations
    (``steps``, ``max_iterations``, ``iterations``, ``draws``) times its restarts, binary-search
    steps, target classes, EOT draws and rounds, times an inner attack's cost; for a black-box
    attack its queries (``max_queries`` where set) at a third each."""
    cfg = getattr(attack, "config", None)
    units = next((v for v in (_number(cfg, n) for n in ITERATIONS) if v is not None), 1.0)
    for name in MULTIPLIERS:
        units *= _number(cfg, name) or 1.0
    units += (_number(cfg, "square_iterations") or 0.0) * QUERY
    inner = getattr(attack, "inner", None)
    if inner is not None and hasattr(inner, "config"):
        units *= attack_units(inner)
    if getattr(getattr(attack, "knowledge", None), "value", None) == "black-box":
        queries = _number(cfg, "max_queries") or units * (2 * (_number(cfg, "samples") or 0.5))
        units = queries * QUERY
    return units


def _targets(attack: Any, num_classes: int) -> float:
    mode = getattr(attack, "targets", None)
    if mode is None or mode in ("random", "least-likely"):
        return 1.0
    if mode == "all":
        return float(max(1, num_classes - 1))
    return float(mode) if isinstance(mode, int) else 1.0


def match_units(attack: Any, budgets: tuple[float, ...], samples: float, num_classes: int = 10,
                craft: bool = True) -> float:
    """A match of the planned ``attack`` (an :class:`~arena.tournament.plan.AttackPlan`) at
    ``budgets`` on ``samples`` attacked samples: one call per budget (one for a minimal attack),
    each of :func:`attack_units` per sample, and a clean pass; ``craft=False``: a transfer
    attack's scoring on one more defense (its examples crafted once already)."""
    try:
        calls = 1 if getattr(attack, "minimal", False) else max(1, len(budgets))
        per_call = attack_units(attack.attack) * _targets(attack, num_classes) if craft else QUERY
        return samples * (calls * per_call + 1)
    except Exception:  # an estimate never stops a run
        return samples * max(1, len(budgets))


def _attack_of(ref: Any) -> Any:
    """An attack reference of a defense's config (adversarial training), built; else None."""
    cls = getattr(ref, "cls", None)
    if getattr(cls, "kind", None) != "attack" or not hasattr(ref, "build"):
        return None
    try:
        return ref.build()
    except Exception:
        return None


def training_units(defense: Any, train_size: int, samples: int) -> float:
    """Building the entrant of the planned ``defense`` (a
    :class:`~arena.tournament.plan.DefensePlan`): its epochs (fine-tuning epochs for a
    ``finetune_from`` entry) × the training samples × what the defense adds per sample (its
    noisy ``copies``, the steps of its inner ``attack``, ``power_iterations``), times its
    ``rounds``; a detector scores the training set once; every entrant is judged on the
    evaluated samples."""
    try:
        instance = defense.defense
        cfg = instance.config
        kind = getattr(getattr(instance, "defense_kind", None), "value", "")
        units = float(samples)
        epochs = _number(cfg, "finetune_epochs" if defense.finetune_from else "epochs")
        if epochs is not None and (kind == "training-time" or getattr(instance, "learned", False)
                                   or _number(cfg, "epochs")):
            factor = 1.0 + (_number(cfg, "copies") or 0.0)
            inner = _attack_of(getattr(cfg, "attack", None))
            if inner is not None:
                factor += attack_units(inner)
            factor *= 1.0 + (_number(cfg, "power_iterations") or 0.0)
            units += epochs * train_size * factor * (_number(cfg, "rounds") or 1.0)
        elif kind == "detector":
            units += train_size * QUERY
        return units
    except Exception:  # an estimate never stops a run
        return float(samples + train_size)


# ------------------------------------------------------------------------------ formatting

def clock_time(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour on."""
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _budget(b: float) -> str:
    return budget_label(b, ascii=True)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 600 else clock_time(value)


def _title(task: Task) -> str:
    return f"{task.kind} {task.name}" + (f" {task.detail}" if task.detail else "")


def _first_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------ the display

def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    """An event handler, run under the lock the bar's redraw thread takes too."""

    @functools.wraps(method)
    def wrapper(self: Progress, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class Progress:
    """The progress of one run (see the module docstring); a context manager around the run.

    ``trainings``: the entrants to build, as :class:`Task` (key ``("training", label)``; see
    :func:`training_task`); ``todo``: the runner's matches to run, per defense label the
    (attack plan, budgets) pairs, read again at every event (the runner may add matches while it
    runs); ``units``: the expected units of a match, from (label, attack, budgets).
    """

    def __init__(self, output: Output | bool, trainings: Iterable[Task], todo: dict[str, list],
                 units: Callable[[str, Any, tuple[float, ...]], float], *, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, title: str = "",
                 cached: Callable[[dict[str, Any], Task], bool] | None = None,
                 clean: dict[str, float] | None = None) -> None:
        if isinstance(output, bool):
            output = Output() if output else Output(mode="off")
        self.output = output
        self.stream = stream if stream is not None else sys.stderr
        mode = output.mode
        if mode == "auto":
            mode = "bar" if _isatty(self.stream) else "lines"
        self.mode = mode
        self.todo, self.units, self.title = todo, units, title
        self.cached = cached or (lambda row, task: False)
        self.estimator = Estimator(clock)
        for task in trainings:
            self.estimator.add(task)
        self.crafting: dict[str, float] = {}  # transfer attacks crafting now, by label
        self.clean = clean if clean is not None else {}  # clean accuracy of each built entrant
        self.last_robust = ""
        self.bar: Any = None
        self.log: TextIO | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._sync()

    # ---------------------------------------------------------------- tasks
    def _sync(self) -> None:
        """Tasks for the matches in ``todo`` not seen yet; new budgets for pending ones."""
        for label, items in self.todo.items():
            for attack, budgets in items:
                key = ("match", label, attack.label)
                task = self.estimator.tasks.get(key)
                detail = _eps(tuple(budgets))
                if task is None:
                    self.estimator.add(match_task(label, attack, tuple(budgets),
                                                  self.units(label, attack, tuple(budgets))))
                elif not task.done and task.detail != detail:
                    task.units, task.detail = self.units(label, attack, tuple(budgets)), detail

    def _tasks(self, kind: str) -> list[Task]:
        return [t for t in self.estimator.tasks.values() if t.kind == kind]

    @property
    def total(self) -> int:
        """The number of tasks (matches the runner added to ``todo`` since included)."""
        self._sync()
        return len(self.estimator.tasks)

    @property
    def done(self) -> int:
        return sum(t.done for t in self.estimator.tasks.values())

    # ---------------------------------------------------------------- context
    def __enter__(self) -> Progress:
        if self.output.log is not None:
            self.log = open(self.output.log, "a", encoding="utf-8")
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=1000, file=self.stream, dynamic_ncols=True, leave=True,
                            bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}{postfix}")
            self._ticker = threading.Thread(target=self._tick, name="arena-progress", daemon=True)
            self._ticker.start()
        trainings, matches = len(self._tasks("training")), len(self._tasks("match"))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._header(f"{stamp} {self.title}: {trainings} training{'s' * (trainings != 1)}, "
                     f"{matches} match{'es' * (matches != 1)} to run")
        self._refresh()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                self._refresh()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(2 * TICK)
            self._ticker = None
        elapsed = clock_time(self.estimator.clock() - self.estimator.begun)
        failed = sum(t.failed for t in self.estimator.tasks.values())
        if exc_type is None:
            self._header(f"done in {elapsed}: {self.done} tasks, {failed} failed")
        else:
            self._header(f"stopped after {elapsed} ({exc_type.__name__}): {self.done} of {self.total} tasks done")
        if self.bar is not None:
            self._refresh()
            self.bar.close()
            self.bar = None
        if self.log is not None:
            self.log.close()
            self.log = None

    # ---------------------------------------------------------------- events
    def feed(self, kind: str, jobs: Iterable[Any]) -> Iterator[Any]:
        """The executor's ``jobs``, each marked started as the executor takes it. ``kind``:
        ``training`` (key: the label), ``match`` (key: (label, attack plan)) or ``craft`` (a
        transfer attack crafting on its surrogate; key: the attack's label)."""
        for job in jobs:
            self._started(kind, job[0])
            yield job

    @_locked
    def _started(self, kind: str, key: Any) -> None:
        if kind == "craft":
            self.crafting[key] = self.estimator.clock()
            if self.output.verbose:
                self._line(f"start crafting {key} on its surrogate", start=True)
            self._refresh()
            return
        self._sync()
        tkey = ("training", key) if kind == "training" else ("match", key[0], key[1].label)
        if tkey not in self.estimator.tasks:
            return
        task = self.estimator.start(tkey)
        if kind == "match":
            self.crafting.pop(key[1].label, None)
        if self.output.verbose:
            expected = self.estimator.expected(task)
            guess = f", expected {_seconds(expected)}" if expected is not None else ""
            self._line(f"start {_title(task)}{guess}", start=True)
        self._refresh()

    @_locked
    def trained(self, label: str, result: Any) -> None:
        """An entrant was built (``result``: its :class:`~arena.tournament.entrants.Prepared`)
        or failed to be (``result``: the exception); a failed one's pending matches end with it."""
        self._sync()
        key = ("training", label)
        if key not in self.estimator.tasks:
            return
        task = self.estimator.tasks[key]
        row = getattr(result, "model_row", None) if not isinstance(result, BaseException) else None
        if row is None:
            wall = self.estimator.clock() - (task.started or self.estimator.clock())
            self.estimator.finish(key, calibrate=False, failed=True)
            reason = _first_line(result) if isinstance(result, BaseException) else repr(result)
            self._line(f"{_title(task)}: failed: {reason}, {_seconds(wall)}", failed=True)
            for other in self._tasks("match"):
                if other.key[1] == label and not other.done:
                    self.estimator.finish(other.key, calibrate=False, failed=True)
                    self._line(f"{_title(other)}: failed: defense '{label}' could not be built",
                               failed=True)
            self._refresh()
            return
        cached = self.cached(row, task)
        self.estimator.finish(key, calibrate=not cached)
        clean = row.get("clean_accuracy")
        if isinstance(clean, (int, float)):
            self.clean[label] = float(clean)
            self._reprice(label)
        fpr = row.get("false_positive_rate")
        extra = f", false positives {_percent(fpr)}" if fpr is not None else ""
        seconds = row.get("train_seconds") or 0.0
        details = []
        if self.output.verbose:
            details.append(f"clean accuracy {_percent(clean)}, cache key {row.get('cache_key') or '-'}, "
                           f"built in {_seconds(seconds)}")
            details += [f"metric {m.get('metric')}: {m.get('status')}, {m.get('value')}"
                        for m in row.get("metrics") or []]
        self._line(f"{_title(task)}: ok{' (cached)' if cached else ''}, clean {_percent(clean)}"
                   f"{extra}, {_seconds(seconds)}", details=details)
        self._refresh()

    def _reprice(self, label: str) -> None:
        """The pending matches of ``label`` priced again now that its clean accuracy (the share
        of samples attacked) is known."""
        for items in (self.todo.get(label, []),):
            for attack, budgets in items:
                task = self.estimator.tasks.get(("match", label, attack.label))
                if task is not None and not task.done:
                    task.units = self.units(label, attack, tuple(budgets))

    @_locked
    def matched(self, label: str, attack: Any, outcome: Any) -> None:
        """A match ended: ``outcome`` is its :class:`~arena.tournament.matches.MatchOutcome` or
        the exception its task raised (a worker that died, a hard time limit)."""
        self._sync()
        key = ("match", label, attack.label)
        task = self.estimator.tasks.get(key)
        if task is None:
            task = self.estimator.add(Task(key, "match", f"{attack.label} vs {label}", 0.0, ("match", ANY)))
        self.crafting.pop(attack.label, None)
        rows = getattr(outcome, "rows", None) if not isinstance(outcome, BaseException) else None
        if rows is None:
            wall = self.estimator.clock() - (task.started or self.estimator.clock())
            self.estimator.finish(key, calibrate=False, failed=True)
            status = "timed-out" if getattr(outcome, "timed_out", False) else "failed"
            reason = _first_line(outcome) if isinstance(outcome, BaseException) else repr(outcome)
            self._line(f"{_title(task)}: {status}: {reason}, {_seconds(wall)}", failed=True)
            self._refresh()
            return
        ok = [r for r in rows if r.status == "ok"]
        failed = len(ok) < len(rows)
        self.estimator.finish(key, calibrate=bool(rows) and not failed, failed=failed)
        seconds = sum(r.wall_seconds or 0.0 for r in rows)
        if not failed:
            status = "ok"
        elif not ok:
            status = rows[0].status + (f": {rows[0].error}" if rows[0].error else "")
        else:
            bad = next(r for r in rows if r.status != "ok")
            status = f"partly {bad.status} (eps={_budget(bad.budget)}" + (f": {bad.error})" if bad.error else ")")
        robust = " / ".join(_percent(r.robust_accuracy) for r in rows)
        if ok:
            self.last_robust = f"{task.name}: robust {robust}"
        details = [self._row_details(r) for r in rows] if self.output.verbose else []
        self._line(f"{_title(task)}: {status}, robust {robust}, {_seconds(seconds)}",
                   failed=failed, details=details)
        self._refresh()

    @staticmethod
    def _row_details(row: Any) -> str:
        parts = [f"eps={_budget(row.budget)}: {row.status}", f"robust {_percent(row.robust_accuracy)}",
                 f"success {_percent(row.success_rate)}"]
        if row.mean_distance is not None:
            parts.append(f"mean distance {row.mean_distance:.4g}")
        if row.mean_queries is not None:
            parts.append(f"mean queries {row.mean_queries:.4g}")
        if row.wall_seconds is not None:
            parts.append(_seconds(row.wall_seconds))
        for m in getattr(row, "metrics", None) or []:
            parts.append(f"{m.get('metric')} {m.get('value')}")
        if row.error:
            parts.append(f"error: {row.error}")
        return ", ".join(parts)

    # ---------------------------------------------------------------- output
    def _prefix(self) -> str:
        elapsed = self.estimator.clock() - self.estimator.begun
        return f"[{self.done}/{self.total} {clock_time(elapsed)}] "

    def _eta(self) -> str:
        left = self.estimator.remaining()
        if not self.estimator.pending():
            return ""
        return f", ETA {clock_time(left)}" if left is not None else ""

    def _line(self, text: str, *, failed: bool = False, start: bool = False, details: Iterable[str] = ()) -> None:
        """One task's line: on stderr in ``lines`` mode (in ``bar`` and ``quiet`` mode only when
        it failed, or with ``verbose``), and in the log file."""
        line = self._prefix() + text + ("" if start else self._eta())
        details = [f"    {d}" for d in details]
        if self.log is not None:
            self.log.write("\n".join([line, *details]) + "\n")
            self.log.flush()
        shown = {"lines": True, "bar": failed or self.output.verbose, "quiet": failed, "off": False}[self.mode]
        if shown:
            self._write([line, *(details if self.output.verbose else [])])

    def _header(self, text: str) -> None:
        """A line that is not a task's (the run's start and end): in the log file, and on stderr
        with ``verbose``."""
        if self.log is not None:
            self.log.write(f"# {text}\n")
            self.log.flush()
        if self.output.verbose and self.mode in ("lines", "bar"):
            self._write([text])

    def _write(self, lines: list[str]) -> None:
        if self.bar is not None:
            self.bar.write("\n".join(lines), file=self.stream)
        else:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def describe(self) -> str:
        """What runs now: ``matches 7/40 pgd-linf vs gda`` (the phase, its count, the running task)."""
        running = [t for t in self.estimator.tasks.values() if t.started is not None and not t.done]
        if running:
            current = min(running, key=lambda t: t.started or 0.0)
            kind, name = current.kind, current.name
            more = f" (+{len(running) - 1} running)" if len(running) > 1 else ""
        elif self.crafting:
            return f"crafting {next(iter(self.crafting))}"
        else:
            done = [t for t in self.estimator.tasks.values() if t.done]
            kind = max(done, key=lambda t: t.finished or 0.0).kind if done else "training"
            name, more = "", ""
        tasks = self._tasks(kind)
        phase = "training" if kind == "training" else "matches"
        return f"{phase} {sum(t.done for t in tasks)}/{len(tasks)} {name}{more}".rstrip()

    def _refresh(self) -> None:
        if self.bar is None:
            return
        total = self.estimator.total_units
        self.bar.n = int(1000 * self.estimator.done_units / total) if total > 0 else 0
        self.bar.set_description_str(self.describe(), refresh=False)
        left = self.estimator.remaining()
        post = [f"ETA {clock_time(left)}" if left is not None else "ETA ?"]
        if self.last_robust:
            post.append(f"last {self.last_robust}")
        self.bar.set_postfix_str(", ".join(post), refresh=False)
        self.bar.refresh()

    # ---------------------------------------------------------------- for the runner
    @classmethod
    def for_run(cls, runner: Any, needed: set[str], todo: dict[str, list]) -> Progress:
        """The progress of ``runner``'s run (its plan, data, cache and ``progress`` option) over
        the entrants ``needed`` and the matches ``todo``."""
        plan = runner.plan
        samples = len(runner.eval)
        train_size = len(runner.data.train)
        num_classes = int(getattr(runner.data, "num_classes", 10) or 10)
        trainings = [training_task(d, training_units(d, train_size, samples)) for d in plan.defenses
                     if d.label in needed]
        first_scoring: dict[str, str] = {}  # a transfer attack's crafting is charged to its first match
        for label, items in todo.items():
            for attack, _ in items:
                if attack.view.surrogate is not None:
                    first_scoring.setdefault(attack.label, label)
        clean: dict[str, float] = {}  # filled in by the progress as entrants are built

        def units(label: str, attack: Any, budgets: tuple[float, ...]) -> float:
            attacked = samples * clean.get(label, 1.0)
            if attack.view.surrogate is None:
                return match_units(attack, budgets, attacked, num_classes)
            scoring = match_units(attack, budgets, samples, num_classes, craft=False)
            if first_scoring.get(attack.label) != label:
                return scoring
            crafted = samples * clean.get(attack.view.surrogate, 1.0)
            return scoring + match_units(attack, budgets, crafted, num_classes)

        cache_root = getattr(runner, "cache_root", None)
        title = f"run {getattr(runner, 'run_id', '?')} of '{plan.name}'"
        if getattr(runner, "source", None):
            title += f" ({runner.source})"
        return cls(runner.progress, trainings, todo, units, cached=_cache_check(cache_root), title=title, clean=clean)


def training_task(defense: Any, units: float) -> Task:
    """The task of building the planned ``defense``, priced with the trainings of the same
    defense id, then of the same kind of defense, then every training. An entrant that trains
    nothing (a model file, an inference-time wrapper without parameters of its own) calibrates
    only its own id and kind: loading a model costs time that no count of samples predicts."""
    instance = defense.defense
    kind = instance.defense_kind.value
    groups = (f"training:{defense.id}", f"training:{kind}", "training", ANY)
    trains = kind == "training-time" or getattr(instance, "learned", False) or \
        _number(instance.config, "epochs") is not None
    return Task(("training", defense.label), "training", defense.label, units, groups, f"({kind})",
                teaches=None if trains else groups[:2])


def match_task(label: str, attack: Any, budgets: tuple[float, ...], units: float) -> Task:
    """The task of the match of the planned ``attack`` against ``label`` at ``budgets``,
    calibrated with the matches of the same attack entry, then attack id, then every match."""
    return Task(("match", label, attack.label), "match", f"{attack.label} vs {label}", units,
                (f"match:{attack.label}", f"match:{attack.id}", "match", ANY), _eps(budgets))


def _eps(budgets: tuple[float, ...]) -> str:
    return f"(eps={', '.join(map(_budget, budgets))})"


def _cache_check(root: str | None) -> Callable[[dict[str, Any], Task], bool]:
    """Whether a built entrant's weights came from the model cache: its entry was written before
    the task started (an entry the task wrote is newer). Unknown (a cache on another machine): no."""

    def cached(row: dict[str, Any], task: Task) -> bool:
        key = row.get("cache_key")
        if root is None or not key or task.started_at is None:
            return False
        try:
            return (Path(root) / f"{key}.pt").stat().st_mtime < task.started_at
        except OSError:
            return False

    return cached


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
