"""Child processes of the arena's own: a process with a duplex pipe that the parent can kill, and
exceptions made fit to travel back through the pipe. Used by the tournament's worker processes
(:mod:`arena.tournament.workers`) and the attacker process of black-box attacks
(:mod:`arena.isolation`)."""
from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

from arena.errors import ArenaError


class WorkerFailed(ArenaError):
    """A task's worker process died or was killed; the message says how. ``timed_out``: killed
    at the task's hard time limit."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out

    def __reduce__(self) -> tuple:
        return (WorkerFailed, (str(self), self.timed_out))


class Worker:
    """One worker process and its end of the pipe; ``held`` are the handles it has."""

    def __init__(self, ctx: Any, target: Callable[..., None], name: str | None = None) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        # The child closes the driver's end it inherits when forked, so that it sees the end of
        # the pipe (and exits) when the driver dies.
        self.process = ctx.Process(target=target, args=(child, self.conn), name=name, daemon=True)
        self.process.start()
        child.close()
        self.held: set[int] = set()

    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()

    def rss_bytes(self) -> int:
        """Resident memory of the worker (0 where /proc is not there)."""
        try:
            with open(f"/proc/{self.process.pid}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit
_TRIM_THRESHOLD = 128 << 20


def steady_heap() -> bool:
    """Keep this process's freed buffers of up to 32 MiB in its heap, instead of handing them
    back to the OS (glibc's defaults map a large block fresh and unmap it when freed, and trim
    the heap's top past a threshold that moves with the traffic): a worker that runs a model on
    batch after batch then reuses its activation buffers instead of faulting their pages in
    afresh at each call. Measured in the harness of the digits CNN's HopSkipJump (684 oracle
    calls of up to 256 rows, one thread): 110,000-180,000 minor faults and 0.35-0.85 s of system
    time per run with the attacker in its own process (whose pickled queries stir the harness's
    heap), 20,000-90,000 in process, and under 1,000 either way after this call. The cost: up to
    128 MiB of free heap kept by the process. Returns whether both settings took (False where
    the C library is not glibc)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    done = [mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD), mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)]
    return all(done)  # mallopt answers 1 where it took the value


def portable(exc: BaseException, wrap: Callable[[str], BaseException] = WorkerFailed) -> BaseException:
    """``exc`` if it pickles, else ``wrap`` of its text (and never SystemExit itself)."""
    import pickle

    if isinstance(exc, (SystemExit, KeyboardInterrupt)):
        return wrap(f"{type(exc).__name__}: {exc}".rstrip(": "))
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return wrap(traceback.format_exception_only(type(exc), exc)[-1].strip())
