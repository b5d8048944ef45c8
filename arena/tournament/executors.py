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
    """Runs every task, one after another, in a worker process that the driver can kill
    (:mod:`arena.tournament.workers`): a crash, an exit, a hang past the hard time limit or
    memory a plugin keeps fails that task only, and the next task gets a fresh worker. Uses the
    GPU when present."""

    name = "local"
    parallelism = 1

    def __init__(self) -> None:
        self.pool = WorkerPool()

    def share(self, obj: Any) -> Any:
        return obj if isinstance(obj, Shared) else Shared.of(obj)

    def map(self, fn: Callable[..., Any], jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        for key, args, options in map(_unpack, jobs):
            try:
                yield key, self.pool.run(fn, args, **{k: v for k, v in options.items() if k in POOL_OPTIONS})
            except Interrupted:  # SIGTERM to the driver, not a fault of the task
                raise
            except Exception as exc:  # reported by the driver, never fatal to the tournament
                yield key, exc

    def close(self) -> None:
        self.pool.close()


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
                  num_gpus: float = 0.0) -> LocalExecutor | RayExecutor | InlineExecutor:
    if name == "local":
        return LocalExecutor()
    if name == "inline":
        return InlineExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus, num_gpus)
    raise ConfigError(f"unknown executor '{name}'; choose local, ray or inline")
