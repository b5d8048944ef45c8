"""Black-box and gray-box attacks run where what they must not see does not exist.

A black-box attack may see labels or scores and nothing else, and hiding the model behind an
object in the same process is not enough: a plugin can reach it through the oracle's closure,
the caller's stack frames or ``gc``. So the harness runs a black-box attack's ``run`` in an
*attacker process* started fresh (``spawn``: a new interpreter that never held a model), which
gets the attack, the inputs and a :class:`RemoteOracle`. Each oracle call sends its batch
through a pipe to the harness, which evaluates the model, counts every row in its own ledger
and answers with labels or scores only.

A gray-box attack (one that may see the base classifier, not the defense around it) is run
whole, harness included, in the attacker process, which is sent the base classifier only; the
tournament then judges its examples on the full defended model.

One attacker process serves the attacks of the process that started it, one at a time; it
starts on the first black-box attack (a second or two: it imports torch and the plugin's
module) and is started again if it dies. ``ARENA_ISOLATE_ATTACKS=0`` runs black-box attacks in
process instead (for debugging a plugin).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from arena.errors import AttackError, QueryBudgetExceeded
from arena.model import OracleView, QueryLedger, QueryOracle, seeded
from arena.processes import Worker, portable, steady_heap

SWITCH = "ARENA_ISOLATE_ATTACKS"
SPINS = "10000"  # libgomp's GOMP_SPINCOUNT in the attacker process
WAIT_SPIN = 0.003  # seconds the harness polls for the attacker's next query before it blocks
_lock = threading.Lock()
_host: "AttackerHost | None" = None
_owner = 0  # the pid of the process that started _host (a forked child starts its own)


def _send(conn: Any, message: Any) -> None:
    """Plain pickles over the pipe (torch's shared-memory reductions cost a file per tensor, far
    more than copying a batch of queries)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Any) -> Any:
    return pickle.loads(conn.recv_bytes())


def _wait(conn: Any, spin: float) -> Any:
    """The next message on ``conn``, polled for up to ``spin`` seconds (giving the CPU away
    between polls) before a blocking read. A query-bound attack such as HopSkipJump asks
    hundreds of queries a few milliseconds apart; a harness that sleeps in a blocking read
    between them leaves its vCPU idle, and waking it for each query (and running the forward
    pass on cold caches) is most of what the attacker process costs. ``sched_yield`` lets
    anything runnable on this CPU (the attacker's own threads) go first: a plain busy poll made
    the two-thread case slower, taking the core the attacker's second thread needed. Measured
    (benchmarks/blackbox_isolation.py, HopSkipJump on the digits CNN, 2-core VM, wall time over
    in process): 1.16x with a blocking wait, 1.11x with this one at one thread; 1.54-1.67x and
    1.25-1.33x at two. A closed pipe polls ready, so a dead attacker ends the wait at once
    (``EOFError``)."""
    if spin > 0 and not conn.poll(0):
        end = time.perf_counter() + spin
        while time.perf_counter() < end:
            os.sched_yield()
            if conn.poll(0):
                break
    return _recv(conn)


def _array(t: torch.Tensor) -> Any:
    """A tensor as a numpy array for the pipe (numpy pickles as its bytes; a tensor's storage
    pickles through torch's serializer, about a millisecond a query)."""
    return t.detach().cpu().numpy()


_forced: list[bool] = []


def enabled() -> bool:
    """Whether black-box and gray-box attacks run in the attacker process: the innermost
    :func:`setting`, else ``ARENA_ISOLATE_ATTACKS`` (default on)."""
    if _forced:
        return _forced[-1]
    return os.environ.get(SWITCH, "1") not in ("0", "false", "no")


@contextmanager
def setting(isolate: bool) -> Iterator[None]:
    """Isolation on or off inside the block (a tournament task carries its driver's setting to a
    worker, whose environment may be older)."""
    _forced.append(isolate)
    try:
        yield
    finally:
        _forced.pop()


class RemoteOracle(OracleView):
    """The attacker's side of the oracle: the same calls as :class:`arena.model.QueryOracle`
    (``oracle(x)``, ``oracle(x, index)``, ``budget``, ``counts``, ``total``, ``output``), each
    query answered by the harness in another process; the counts read here mirror the
    harness's ledger."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any, n: int, output: str, budget: int | None) -> None:
        self._conn, self._output, self._ledger = conn, output, QueryLedger(n, budget)

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        device = x.device
        _send(self._conn, ("query", _array(x), None if index is None else _array(index)))
        kind, value, counts = _recv(self._conn)
        self._ledger._counts = torch.from_numpy(counts)  # the mirror follows the harness's ledger
        if kind == "refused":
            raise value
        return torch.from_numpy(value).to(device)


class AttackerHost:
    """A fresh interpreter that runs black-box attacks against a :class:`RemoteOracle`."""

    def __init__(self) -> None:
        # The attacker and the harness take turns (the attacker waits on the harness for every
        # query, the harness on the attacker between queries), so each may use the cores while
        # the other waits: the attacker runs the harness's thread count for each task, and its
        # OpenMP threads spin only briefly (about 10 µs) when a parallel region ends before they
        # sleep, so that they do not spin on the cores the model's forward passes need while the
        # attacker waits for an answer. (OMP_WAIT_POLICY=PASSIVE, sleeping at once, made the
        # substitute attack's training 2.6x slower; libgomp's default spins about 30x longer.)
        with _environment(GOMP_SPINCOUNT=SPINS):
            self.worker = Worker(mp.get_context("spawn"), target=_serve, name="arena-attacker")
        self.conn = self.worker.conn

    def alive(self) -> bool:
        return self.worker.alive()

    def kill(self) -> None:
        self.worker.kill()

    def call(self, attack: Any, model: Any, x: torch.Tensor, y: torch.Tensor, eps: float | None,
             seed: int | None, targets: torch.Tensor | None = None) -> Any:
        """The whole harness call ``attack(model, x, y, eps, targets, seed=seed)`` in the attacker
        process, which holds ``model`` and nothing else of the caller's; returns the AttackResult."""
        device = x.device
        _send(self.conn, ("call", torch.get_num_threads(), attack, model, x.cpu(), y.cpu(), eps, str(device),
                          seed, None if targets is None else targets.cpu()))
        kind, value = _recv(self.conn)
        if kind == "error":
            raise value
        for name in ("x_adv", "success", "distance", "queries"):
            setattr(value, name, getattr(value, name).to(device))
        return value

    def run(self, attack: Any, oracle: QueryOracle, x: torch.Tensor, y: torch.Tensor, eps: float | None,
            targets: torch.Tensor | None, seed: int | None) -> Any:
        """``attack.run(remote oracle, x, y, eps, targets)`` in the attacker process, answering its
        queries with ``oracle`` here; returns what ``run`` returned."""
        device = x.device
        _send(self.conn, ("attack", torch.get_num_threads(), attack, x.cpu(), y.cpu(), eps,
                          None if targets is None else targets.cpu(), str(device), seed, oracle.output,
                          oracle.budget))
        while True:
            kind, *rest = _wait(self.conn, WAIT_SPIN)
            if kind == "query":
                qx, index = (None if a is None else torch.from_numpy(a).to(device) for a in rest)
                try:
                    answer: tuple = ("answer", _array(oracle(qx, index)))
                except (QueryBudgetExceeded, ValueError) as exc:
                    answer = ("refused", exc)
                _send(self.conn, (*answer, _array(oracle.counts)))
            elif kind == "done":
                return _to(rest[0], device)
            else:
                raise rest[0]


def host() -> AttackerHost:
    """This process's attacker process, started (again) when needed."""
    global _host, _owner
    with _lock:
        if _owner != os.getpid():  # inherited through fork: the parent's, not ours
            _host = None
        if _host is None or not _host.alive():
            if _host is not None:
                _host.kill()
            _host, _owner = AttackerHost(), os.getpid()
        return _host


def _guarded(attack: Any, work: Any) -> Any:
    """``work(host())``; a dead attacker process fails the attack and is started again next time."""
    global _host
    try:
        return work(host())
    except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as exc:
        with _lock:
            if _host is not None:
                _host.kill()
                _host = None
        raise AttackError(f"attack '{attack.id}': its attacker process died ({type(exc).__name__})") from None


def run_blackbox(attack: Any, oracle: QueryOracle, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                 targets: torch.Tensor | None, seed: int | None) -> Any:
    """Run a black-box attack's ``run`` in the attacker process, answering its queries here."""
    return _guarded(attack, lambda h: h.run(attack, oracle, x, y, eps, targets, seed))


def call_elsewhere(attack: Any, model: Any, x: torch.Tensor, y: torch.Tensor, eps: float | None,
                   seed: int | None, targets: torch.Tensor | None = None) -> Any:
    """The harness call ``attack(model, x, y, eps, targets, seed=seed)`` in the attacker process,
    where nothing but ``model`` exists (a gray-box attack on the base classifier)."""
    return _guarded(attack, lambda h: h.call(attack, model, x, y, eps, seed, targets))


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block (a spawned process inherits them)."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _to(out: Any, device: torch.device) -> Any:
    if isinstance(out, torch.Tensor):
        return out.to(device)
    if hasattr(out, "x_adv"):  # a RunOutput
        out.x_adv = out.x_adv.to(device)
        if out.queries is not None:
            out.queries = out.queries.to(device)
    return out


def _serve(conn: Any, harness_end: Any = None) -> None:
    """The attacker process's loop: one attack at a time, queries through ``conn``."""
    import signal

    if harness_end is not None:
        harness_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its harness handles ^C
    steady_heap()
    while True:
        try:
            task = _recv(conn)
        except (EOFError, OSError):
            return
        if torch.get_num_threads() != task[1]:
            torch.set_num_threads(task[1])  # the harness's, while it waits on this process
        if task[0] == "call":
            _call(conn, *task[2:])
            continue
        _, _, attack, x, y, eps, targets, device, seed, output, budget = task
        device = torch.device(device)
        oracle = RemoteOracle(conn, x.shape[0], output, budget)
        try:
            with seeded(seed, device):
                out = attack.run(oracle, x.to(device), y.to(device), eps,
                                 None if targets is None else targets.to(device))
            out = out.cpu() if isinstance(out, torch.Tensor) else _to(out, torch.device("cpu"))
            _send(conn, ("done", out))
        except BaseException as exc:  # the plugin's own error, reported by the harness
            if not _report(conn, exc):
                return


def _call(conn: Any, attack: Any, model: Any, x: torch.Tensor, y: torch.Tensor, eps: float | None,
          device: str, seed: int | None, targets: torch.Tensor | None) -> None:
    try:
        model = model.to(device)
        result = attack(model, x.to(device), y.to(device), eps,
                        None if targets is None else targets.to(device), seed=seed)
        for name in ("x_adv", "success", "distance", "queries"):
            setattr(result, name, getattr(result, name).cpu())
        _send(conn, ("done", result))
    except BaseException as exc:
        _report(conn, exc)


def _report(conn: Any, exc: BaseException) -> bool:
    """Send the harness the error ``exc`` of its task; False where the harness is gone (killed,
    e.g. at its hard time limit: the error was most likely the closed pipe itself), and this
    process ends quietly (its next read sees the end of the pipe)."""
    try:
        _send(conn, ("error", portable(exc, AttackError)))
        return True
    except (OSError, EOFError):
        return False
