"""Executors run the tournament's trainings and matches: in this process, or as Ray tasks.

Both expose ``share(obj)`` (make a large object available to tasks once) and
``map(fn, jobs)``, which yields ``(key, result)`` pairs as tasks finish; a task that raised
yields its exception instead of a result. The driver alone writes the database.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from arena.errors import ConfigError

Job = tuple[Any, tuple[Any, ...]]


class LocalExecutor:
    """Runs every task in this process, one after another (uses the GPU when present)."""

    name = "local"

    def share(self, obj: Any) -> Any:
        return obj

    def map(self, fn: Callable[..., Any], jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        for key, args in jobs:
            try:
                yield key, fn(*args)
            except Exception as exc:  # reported by the driver, never fatal to the tournament
                yield key, exc

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs trainings and matches as Ray tasks with ``num_cpus``/``num_gpus`` each.

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

    def share(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def map(self, fn: Callable[..., Any], jobs: Iterable[Job]) -> Iterator[tuple[Any, Any]]:
        remote = self.ray.remote(**self.options)(fn)
        pending = {remote.remote(*args): key for key, args in jobs}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    yield key, self.ray.get(ref)
                except Exception as exc:  # the task's own exception, wrapped by Ray
                    yield key, getattr(exc, "cause", None) or exc

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def make_executor(name: str, address: str | None = None, num_cpus: float = 1.0,
                  num_gpus: float = 0.0) -> LocalExecutor | RayExecutor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address, num_cpus, num_gpus)
    raise ConfigError(f"unknown executor '{name}'; choose local or ray")
