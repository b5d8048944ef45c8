"""Executors run the tournament's trainings and matches: in worker processes of this machine
(``local``, the default), as Ray tasks (``ray``), or in this very process (``inline``, for
debugging a plugin: no isolation).

Each exposes ``share(obj)`` (make a large object available to tasks once) and
``map(fn, jobs)``, which yields ``(key, result)`` pairs as tasks finish; a task that raised, or
whose worker died or was killed, yields its exception instead of a result. A job is
``(key, args)`` or ``(key, args, options)``; options are ``timeout`` (a hard limit in seconds:
the local executor kills the worker, a Ray worker ends itself; the inline executor has none),
``keep`` (``(handle, part)``: keep ``part(result)`` in the worker, to be shared as that handle)
and ``resources`` (``{"num_cpus": 2, "num_gpus": 0.5}``:
what the task asks a Ray cluster for instead of the executor's defaults; the other executors
ignore it). ``parallelism`` is how many tasks the executor runs at once (sharding reads it). The
driver alone writes the database.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from arena.errors import ConfigError, Interrupted
from arena.processes import WorkerFailed, steady_heap
from arena.tournament.workers import Shared, WorkerPool

Job = tuple[Any, ...]


def _unpack(job: Job) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
    key, args, *rest = job
    return key, args, (rest[0] if rest else {})


class InlineExecutor:
    """Runs every task in this process, one after another: for debugging a plugin (a
    breakpoint works), with no protection from a plugin that exits or hangs."""

    name = "inline"
    parallelism = 1

    def share(self, obj: Any) -> Any:
        return obj.value if isinstance(obj, Shared) else obj

    def map(self, fn: Callable[..., Any], jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        for key, args, _ in map(_unpack, jobs):
            try:
                yield key, fn(*args)
            except Interrupted:  # SIGTERM to the driver, not a fault of the task
                raise
            except Exception as exc:  # reported by the driver, never fatal to the tournament
                yield key, exc

    def close(self) -> None:
        pass


class LocalExecutor:
    """Runs tasks in worker processes that the driver can kill (:mod:`arena.tournament.workers`):
    a crash, an exit, a hang past the hard time limit or memory a plugin keeps fails that task
    only, and the next task gets a fresh worker. ``workers`` tasks run at once, each in its own
    worker (``arena run --workers N``); with more than one, each worker gets an equal share of the
    machine's torch threads (``OMP_NUM_THREADS``, or one per core, divided by ``workers``; at
    least one), so that the workers do not contend for the cores. Uses the GPU when present."""

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigError(f"workers: expected a whole number of worker processes of at least 1, got {workers!r}")
        threads = None
        if workers > 1:
            import torch  # this process's count is the machine's: OMP_NUM_THREADS, or one per core

            threads = max(1, torch.get_num_threads() // workers)
        self.pools = [WorkerPool(threads=threads) for _ in range(workers)]
        self.pool = self.pools[0]

    @property
    def parallelism(self) -> int:
        return len(self.pools)

    def share(self, obj: Any) -> Any:
        return obj if isinstance(obj, Shared) else Shared.of(obj)

    def map(self, fn: Callable[..., Any], jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        if len(self.pools) == 1:
            for key, args, options in map(_unpack, jobs):
                yield key, self._run(self.pool, fn, args, options)
            return
        yield from self._parallel(fn, jobs)

    def _run(self, pool: WorkerPool, fn: Callable[..., Any], args: tuple, options: dict[str, Any]) -> Any:
        try:
            return pool.run(fn, args, **{k: v for k, v in options.items() if k in POOL_OPTIONS})
        except Interrupted:  # SIGTERM to the driver, not a fault of the task
            raise
        except Exception as exc:  # reported by the driver, never fatal to the tournament
            return exc

    def _parallel(self, fn: Callable[..., Any], jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        """Up to one task per worker in flight, each waited on by a thread of its own; jobs are
        taken from ``jobs`` (in this thread) only as a worker falls idle, so that what the caller
        learns from a result can still change the jobs it has not handed out."""
        done: queue.Queue = queue.Queue()
        idle = list(reversed(self.pools))
        pending = iter(map(_unpack, jobs))
        running: dict[int, threading.Thread] = {}  # id(pool): the thread waiting on its task
        exhausted = False

        def one(pool: WorkerPool, key: Any, args: tuple, options: dict[str, Any]) -> None:
            try:
                result = self._run(pool, fn, args, options)
            except BaseException as exc:  # noqa: BLE001 (handed to the driver's thread, as a result)
                result = exc
            done.put((pool, key, result))

        try:
            while True:
                while idle and not exhausted:
                    try:
                        key, args, options = next(pending)
                    except StopIteration:
                        exhausted = True
                        break
                    pool = idle.pop()
                    thread = threading.Thread(target=one, args=(pool, key, args, options), daemon=True,
                                              name="arena-task-wait")
                    running[id(pool)] = thread
                    thread.start()
                if not running:
                    return
                pool, key, result = done.get()
                running.pop(id(pool)).join()
                idle.append(pool)
                yield key, result
        finally:  # left early (interrupted): no task may outlive this map in a worker a later one uses
            for pool in self.pools:
                thread = running.get(id(pool))
                if thread is not None:
                    pool.close()  # kills the busy worker: its thread's wait ends at once
                    thread.join(10)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()


POOL_OPTIONS = ("timeout", "keep")  # the job options a worker pool takes


def task_options(defaults: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The Ray options of one task: the executor's ``defaults`` with the job's ``resources``
    (``num_cpus``, ``num_gpus``: fractions pass through as they are) over them."""
    out = dict(defaults)
    for name, value in (options.get("resources") or {}).items():
        if name not in ("num_cpus", "num_gpus"):
            raise ValueError(f"unknown task resource {name!r}; tasks ask for num_cpus and num_gpus")
        if value is not None:
            out[name] = float(value)
    return out


class RayExecutor:
    """Runs trainings and matches as Ray tasks with ``num_cpus``/``num_gpus`` each (fractions
    allowed: ``num_gpus = 0.25`` puts four tasks on one GPU), or what a job's ``resources``
    option asks for instead (an attack's ``[resources.attacks]`` entry).

    With ``address`` it joins an existing cluster; without, it starts a local one (and stops
    it on :meth:`close`). Plugins are loaded in each worker from the installed entry points.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("the ray executor needs Ray: pip install 'adversarial-arena[ray]'") from None
        self.ray = ray
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": 0}
        self.expiries: Any = None  # the Expiries actor, once a task has a hard limit
        self.started = not ray.is_initialized()
        if self.started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = os.cpu_count() or 1
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot start or join the Ray cluster at {address or 'local'}: {exc}") from None

    @property
    def parallelism(self) -> int:
        """How many tasks of the default size the cluster runs at once (its CPUs over each
        task's, and its GPUs over each task's where tasks ask for GPUs)."""
        try:
            total = self.ray.cluster_resources()
        except Exception:  # a cluster that does not answer: no sharding for parallelism
            return 1
        counts = [total.get("CPU", 0.0) / self.options["num_cpus"]] if self.options["num_cpus"] else []
        if self.options["num_gpus"]:
            counts.append(total.get("GPU", 0.0) / self.options["num_gpus"])
        return max(1, int(min(counts) + 1e-9)) if counts else 1

    def share(self, obj: Any) -> Any:
        return self.ray.put(obj.value if isinstance(obj, Shared) else obj)

    def map(self, fn: Callable[..., Any], jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        """Every job submitted at once (the cluster queues what it cannot run yet); results as
        they come. A job's ``timeout`` is enforced in its Ray worker, from the moment the task
        starts there (not from submission: a queued task has not used its time): past it a
        watchdog thread notes the task in a small actor and ends the worker, and the task yields
        :class:`WorkerFailed` with ``timed_out``."""
        remote = self.ray.remote(**self.options)(_in_steady_heap)
        name = getattr(fn, "__name__", "task")  # Ray's task name: the function's, not the wrapper's
        pending = {}
        for key, args, options in map(_unpack, jobs):
            own = task_options(self.options, options)
            timeout = options.get("timeout")
            limit = None if timeout is None else (float(timeout), next(_tokens), self._expiries())
            pending[remote.options(name=name, **own).remote(fn, limit, *args)] = (key, limit)
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                key, limit = pending.pop(ref)
                try:
                    yield key, self.ray.get(ref)
                except Interrupted:
                    raise
                except Exception as exc:  # the task's own exception, wrapped by Ray
                    yield key, self._failure(exc, limit)

    def _expiries(self) -> Any:
        """The actor that hears of tasks ended at their hard limit (started on first use)."""
        if self.expiries is None:
            self.expiries = self.ray.remote(num_cpus=0)(Expiries).remote()
        return self.expiries

    def _failure(self, exc: Exception, limit: tuple[float, int, Any] | None) -> Exception:
        """What a failed task yields: the plugin's own exception, or for a worker that died a
        :class:`WorkerFailed` (timed out where its watchdog ended it at the hard limit)."""
        from ray.exceptions import WorkerCrashedError

        if not (isinstance(exc, WorkerCrashedError) or isinstance(getattr(exc, "cause", None), WorkerCrashedError)):
            return getattr(exc, "cause", None) or exc
        if limit is not None:
            timeout, token, expiries = limit
            try:
                expired = self.ray.get(expiries.has.remote(token), timeout=30)
            except Exception:  # the actor is gone: the death is reported as it is
                expired = False
            if expired:
                return WorkerFailed(f"killed after its hard time limit of {timeout:g} s", timed_out=True)
        return WorkerFailed("the Ray worker process died (a crash, an exit or the memory killer: the plugin's "
                            "task ended its process)")

    def close(self) -> None:
        if self.expiries is not None and not self.started:  # a cluster we joined keeps running
            try:
                self.ray.kill(self.expiries)
            except Exception:
                pass
        self.expiries = None
        if self.started:
            self.ray.shutdown()


_tokens = itertools.count(1)


class Expiries:
    """A Ray actor (no CPU): the tokens of the tasks whose watchdog ended their worker at the
    hard time limit, so that the driver tells such a death from a crash."""

    def __init__(self) -> None:
        self.tokens: set[int] = set()

    def add(self, token: int) -> None:
        self.tokens.add(token)

    def has(self, token: int) -> bool:
        return token in self.tokens


def _in_steady_heap(fn: Callable[..., Any], limit: tuple[float, int, Any] | None, *args: Any) -> Any:
    """A Ray task: ``fn(*args)`` in a worker whose heap keeps its freed buffers, as the local
    executor's workers do (:func:`arena.processes.steady_heap`). With ``limit`` (seconds, the
    task's token, the :class:`Expiries` actor) a watchdog thread ends the worker process if the
    task is still running after that many seconds, having told the actor: an attack that
    swallows its soft limit's exception, or never returns, cannot hold the worker (Ray starts a
    fresh one for the next task)."""
    steady_heap()
    watchdog = None
    if limit is not None:
        watchdog = threading.Timer(limit[0], _hard_limit, limit)
        watchdog.daemon = True
        watchdog.start()
    try:
        return fn(*args)
    finally:
        if watchdog is not None:
            watchdog.cancel()


def _hard_limit(timeout: float, token: int, expiries: Any) -> None:
    import ray

    try:
        ray.get(expiries.add.remote(token), timeout=30)
    finally:
        os._exit(1)


def make_executor(name: str, address: str | None = None, num_cpus: float = 1.0,
                  num_gpus: float = 0.0, workers: int = 1) -> LocalExecutor | RayExecutor | InlineExecutor:
    if name == "local":
        return LocalExecutor(workers)
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus, num_gpus)
    raise ConfigError(f"unknown executor '{name}'; choose local, ray or inline")
