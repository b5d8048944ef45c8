"""Executors run the tournament's trainings and matches: in worker processes of this machine
(``local``, the default), as Ray tasks (``ray``), or in this very process (``inline``, for
debugging a plugin: no isolation).

Each exposes ``share(obj)`` (make a large object available to tasks once) and
``map(fn, jobs)``, which yields ``(key, result)`` pairs as tasks finish; a task that raised, or
whose worker died or was killed, yields its exception instead of a result. A job is
``(key, args)`` or ``(key, args, options)``; options are ``timeout`` (a hard limit in seconds:
the local executor kills the worker), ``keep`` (``(handle, part)``: keep ``part(result)`` in
the worker, to be shared as that handle) and ``resources`` (``{"num_cpus": 2, "num_gpus": 0.5}``:
what the task asks a Ray cluster for instead of the executor's defaults; the other executors
ignore it). ``parallelism`` is how many tasks the executor runs at once (sharding reads it). The
driver alone writes the database.
"""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from arena.errors import ConfigError, Interrupted
from arena.processes import steady_heap
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
        remote = self.ray.remote(**self.options)(_in_steady_heap)
        name = getattr(fn, "__name__", "task")  # Ray's task name: the function's, not the wrapper's
        pending = {}
        for key, args, options in map(_unpack, jobs):
            own = task_options(self.options, options)
            pending[remote.options(name=name, **own).remote(fn, *args)] = key
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    yield key, self.ray.get(ref)
                except Interrupted:
                    raise
                except Exception as exc:  # the task's own exception, wrapped by Ray
                    yield key, getattr(exc, "cause", None) or exc

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def _in_steady_heap(fn: Callable[..., Any], *args: Any) -> Any:
    """A Ray task: ``fn(*args)`` in a worker whose heap keeps its freed buffers, as the local
    executor's workers do (:func:`arena.processes.steady_heap`)."""
    steady_heap()
    return fn(*args)


def make_executor(name: str, address: str | None = None, num_cpus: float = 1.0,
                  num_gpus: float = 0.0, workers: int = 1) -> LocalExecutor | RayExecutor | InlineExecutor:
    if name == "local":
        return LocalExecutor(workers)
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus, num_gpus)
    raise ConfigError(f"unknown executor '{name}'; choose local, ray or inline")
