"""Worker processes the driver can kill: where the local executor runs trainings and matches.

A plugin runs in a worker, never in the driver, so that whatever it does stays in its task: an
exception, ``sys.exit``, ``os._exit``, a segfault, running out of memory or ignoring its time
limit fails that task only. The driver kills a worker that runs past the task's hard time
limit, reports a worker that died, and starts a fresh one for the next task.

Workers are forked from a multiprocessing *forkserver* that imports torch and the installed
plugins once, when the pool is made (in parallel with the driver's own start), so a new worker
starts in tens of milliseconds with no thread pool, CUDA or TensorFlow state of the driver's. A
script that runs a tournament needs the usual ``if __name__ == "__main__":`` guard. Large
arguments (the data, trained entrants) travel once per worker: the driver wraps them in
:class:`Shared` handles, each worker keeps what it was sent, and a task's result can be kept in
the worker under a handle the driver names (an entrant built there is attacked there without
being sent back). Tensors cross the pipe through torch's shared-memory reductions.
"""
from __future__ import annotations

import faulthandler
import itertools
import multiprocessing as mp
import pickle
import signal
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

from arena.processes import Worker, WorkerFailed, portable, steady_heap

PRELOAD = "arena.tournament.preload"
_handles = itertools.count(1)


@dataclass(frozen=True)
class Shared:
    """A large argument sent to each worker once (``value`` stays in the driver for new workers)."""

    id: int
    value: Any

    @classmethod
    def of(cls, value: Any) -> "Shared":
        return cls(next(_handles), value)


@dataclass(frozen=True)
class _Ref:
    id: int


def _refs(arg: Any, held: set[int], sends: dict[int, Any]) -> Any:
    """``arg`` with its Shared values (itself, or a dict's values) as references, collecting in
    ``sends`` the values the worker does not hold yet."""
    if isinstance(arg, dict):
        return {k: _refs(v, held, sends) for k, v in arg.items()}
    if not isinstance(arg, Shared):
        return arg
    if arg.id not in held:
        sends[arg.id] = arg.value
    return _Ref(arg.id)


def _resolve(arg: Any, held: dict[int, Any]) -> Any:
    if isinstance(arg, dict):
        return {k: _resolve(v, held) for k, v in arg.items()}
    return held[arg.id] if isinstance(arg, _Ref) else arg


def warm_up() -> Any:
    """Start the forkserver now (it imports torch and the plugins in the background) and return
    its context; cheap, and done before the driver imports torch itself, the two imports run side
    by side."""
    from multiprocessing import forkserver

    ctx = _context()
    forkserver.ensure_running()
    return ctx


def _context() -> Any:
    """Workers come from a forkserver: a process that imported torch and the plugins before any
    thread pool, CUDA context or TensorFlow runtime existed, forked for each new worker. (A worker
    forked from the driver itself hangs in its first parallel torch operation once the driver has
    used OpenMP threads, and in TensorFlow once the driver has loaded it.)"""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD])
    return ctx


class WorkerPool:
    """Runs tasks one at a time in a worker process, replacing it when it dies, is killed, or
    holds more than ``max_rss`` bytes after a task (memory a plugin kept)."""

    def __init__(self, max_rss: int | None = 8 << 30, threads: int | None = None) -> None:
        self.max_rss = max_rss
        self.threads = threads  # the worker's torch threads (None: torch's default)
        self.ctx = warm_up()
        self.worker: Worker | None = None
        self.started = 0
        self.busy = False  # a task is in flight (close() then kills the worker at once)
        self._lock = threading.Lock()

    def _worker(self) -> Worker:
        with self._lock:
            if self.worker is None or not self.worker.alive():
                if self.worker is not None:
                    self.worker.kill()
                self.worker = Worker(self.ctx, _serve if self.threads is None else partial(_serve, threads=self.threads))
                self.started += 1
            return self.worker

    def run(self, fn: Callable[..., Any], args: tuple, *, timeout: float | None = None,
            keep: tuple[int, Callable[[Any], Any]] | None = None) -> Any:
        """``fn(*args)`` in a worker: its result, or its exception (raised here). ``Shared``
        arguments (also as the values of a dict argument) are sent to a worker that does not
        hold them yet; ``keep = (handle, part)`` keeps ``part(result)`` in the worker under that
        handle. Past ``timeout`` seconds the worker is killed and :class:`WorkerFailed` raised."""
        worker = self._worker()
        self.busy = True
        sends: dict[int, Any] = {}
        plain = tuple(_refs(arg, worker.held, sends) for arg in args)
        try:
            worker.conn.send((fn, plain, sends, keep))
        except (BrokenPipeError, EOFError, OSError) as exc:
            self._lost(worker)
            raise WorkerFailed(f"the worker process could not be reached ({type(exc).__name__})") from None
        worker.held.update(sends)
        if keep is not None:
            worker.held.add(keep[0])
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready = worker.conn.poll(wait if wait is None else min(wait, 1.0))
            except (EOFError, OSError):
                ready = True
            if ready:
                break
            if not worker.alive():
                break
            if deadline is not None and time.monotonic() >= deadline:
                self._lost(worker)
                raise WorkerFailed(f"killed after its hard time limit of {timeout:g} s", timed_out=True)
        try:
            status, value = pickle.loads(worker.conn.recv_bytes())
        except (EOFError, OSError):
            code = self._lost(worker)
            raise WorkerFailed(f"the worker process died ({_describe_exit(code)})") from None
        self.busy = False
        if self.max_rss is not None and worker.rss_bytes() > self.max_rss:
            self._lost(worker)  # memory a plugin kept is given back with the process
        if status == "ok":
            return value
        raise value

    def _lost(self, worker: Worker) -> int | None:
        worker.kill()
        self.worker = None
        return worker.process.exitcode

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.worker is None:
            return
        if not self.busy:  # an idle worker ends itself; one interrupted in a task is killed at once
            try:
                self.worker.conn.send(None)
                self.worker.process.join(2)
            except (BrokenPipeError, OSError):
                pass
        self.worker.kill()
        self.worker = None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _serve(conn: Any, driver_end: Any = None, threads: int | None = None) -> None:
    """The worker's loop: run each task sent, answer ("ok", result) or ("error", exception),
    with ``threads`` torch threads when given (workers side by side share the cores)."""
    if driver_end is not None:
        driver_end.close()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    mp.current_process().daemon = False  # a worker may start an attacker process (arena.isolation)
    faulthandler.disable()  # a crashing plugin is reported by the driver, not dumped by a handler it inherited
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles ^C and ends its workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the driver's handler, if it forked us
    steady_heap()  # the models' activation buffers reused from call to call, not faulted in afresh
    held: dict[int, Any] = {}
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        fn, args, sends, keep = task
        held.update(sends)
        try:
            result = fn(*[_resolve(a, held) for a in args])
            if keep is not None:
                held[keep[0]] = keep[1](result)
            answer: tuple[str, Any] = ("ok", result)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt of a plugin included
            answer = ("error", portable(exc))
        try:
            data = _by_value(answer)
        except Exception as exc:  # a result that cannot be pickled fails its task, not the worker
            data = _by_value(("error", WorkerFailed(f"the task's result could not be sent back: "
                                                    f"{type(exc).__name__}: {exc}")))
        try:
            conn.send_bytes(data)
        except OSError:  # the driver is gone (killed): nobody to answer, nothing to print
            return


def _by_value(answer: tuple[str, Any]) -> bytes:
    """A worker's answer as plain pickle bytes: every tensor travels by value. (A connection's
    own pickler shares torch tensors instead: CPU storage through file descriptors, CUDA memory
    through CUDA IPC, which lives only as long as the worker that made it; the driver keeps an
    entrant's model after its worker is killed or replaced, and sends it to the next one.)"""
    return pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
