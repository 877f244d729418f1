"""Cases prepared in worker processes that stop when the preparation stops.

``concurrent.futures.ProcessPoolExecutor`` does not fit a long preparation: a worker killed (as the
out-of-memory killer does) breaks the whole pool and loses every case queued, without saying which case
the dead worker held; a Ctrl-C reaches the workers as an exception that they hand back as a result before
taking the next case; and a SIGTERM to the main process leaves them running. Here each worker is handed
one item at a time, so the item a dead worker held is known; the workers ignore SIGINT and SIGTERM (a
stop sent to the whole process group is the main process's to handle) and die with the main process; and
however the main loop ends, every worker still alive is killed and reaped before it returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

__all__ = ["Lost", "run_in_workers"]

log = logging.getLogger("brasyn.cache")

Item = TypeVar("Item")
Result = TypeVar("Result")

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal a process gets when its parent dies."""


@dataclass(frozen=True)
class Lost:
    """What an item gets whose worker died before handing back its result."""

    exitcode: int | None
    """The worker's exit status: negative for the signal that killed it (-9: SIGKILL)."""

    def describe(self) -> str:
        if self.exitcode is not None and self.exitcode < 0:
            try:
                name = signal.Signals(-self.exitcode).name
            except ValueError:
                name = f"signal {-self.exitcode}"
            return f"killed by {name}"
        return f"ended with exit status {self.exitcode}"


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the process that started it dies, so that a main process killed
    outright (kill -9) leaves no worker writing on."""
    # elsewhere than Linux the main process's own clean-up still ends the workers
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _serve(connection: Connection, work: Callable[[Any], Any]) -> None:
    """A worker: items in, results out, one at a time, until the main process sends None or goes."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            item = connection.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        try:
            reply: tuple[str, Any] = ("done", work(item))
        except BaseException as exc:  # handed back whole, raised again in the main process
            reply = ("raised", exc)
        try:
            connection.send(reply)
        except Exception as exc:  # an exception that does not pickle: its text still travels
            connection.send(("raised", RuntimeError(f"{type(exc).__name__}: {exc}")))


@dataclass
class _Worker(Generic[Item]):
    process: multiprocessing.process.BaseProcess
    connection: Connection
    item: Item | None = None


def run_in_workers(
    items: Sequence[Item],
    work: Callable[[Item], Result],
    workers: int,
    collect: Callable[[Item, Result | Lost], None],
) -> None:
    """``work`` on each of ``items`` in ``workers`` processes; ``collect(item, result)`` in this process
    as each finishes, with :class:`Lost` where the worker died first (a new worker takes its place and the
    other items go on). An exception raised by ``work`` or ``collect`` (or a signal's) stops the rest:
    every worker is killed at once, before it is raised here."""
    context = multiprocessing.get_context()
    pending: deque[Item] = deque(items)
    pool: list[_Worker[Item]] = []
    finished = False

    def start() -> None:
        mine, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, work), daemon=True)
        process.start()
        theirs.close()
        pool.append(_Worker(process, mine))

    try:
        for _ in range(min(workers, len(pending))):
            start()
        while pending or any(w.item is not None for w in pool):
            for worker in pool:
                if worker.item is None and pending:
                    worker.item = pending.popleft()
                    with contextlib.suppress(OSError):  # a worker gone: its sentinel says so below
                        worker.connection.send(worker.item)
            busy = [w for w in pool if w.item is not None]
            ready = set(wait([w.connection for w in busy] + [w.process.sentinel for w in busy]))
            for worker in busy:
                item = worker.item
                if worker.connection in ready:
                    try:
                        kind, value = worker.connection.recv()
                    except (EOFError, OSError):
                        kind, value = "lost", None
                elif worker.process.sentinel in ready:
                    kind, value = "lost", None
                else:
                    continue
                worker.item = None
                if kind == "raised":
                    raise value
                if kind == "done":
                    collect(item, value)  # type: ignore[arg-type]
                    continue
                worker.process.join()
                lost = Lost(worker.process.exitcode)
                log.debug("prepare worker %s %s", worker.process.pid, lost.describe())
                worker.connection.close()
                pool.remove(worker)
                if pending:
                    start()
                collect(item, lost)  # type: ignore[arg-type]
        for worker in pool:
            worker.connection.send(None)
        finished = True
    finally:
        _end(pool, finished)


def _end(pool: list[_Worker[Any]], finished: bool) -> None:
    """Reap every worker: after the last item they leave on their own; on a stop or an error they are
    killed at once, so that none writes on."""
    for worker in pool:
        if not finished and worker.process.is_alive():
            worker.process.kill()
    for worker in pool:
        worker.process.join(timeout=10)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.connection.close()
