"""How a batch stops on SIGTERM or Ctrl-C (SIGINT): the first signal ends the loop where it is, every
later one is only noted, so a stop that has begun always ends with its summary, report and exit status."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["Interrupted", "Stopper", "raise_if_stopped", "signal_name"]

_ACTIVE: list[Stopper] = []


class Interrupted(BaseException):
    """A stop signal arrived: the batch ends after discarding the case in progress."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Stopper:
    """SIGTERM and SIGINT stop the loop: the first one raises :class:`Interrupted` where the loop is;
    every later one (a job manager signalling the process group while a wrapper forwards the same
    signal) is only noted, so the stop that has begun always ends with a report and its exit status,
    and after a stop both signals stay ignored for the rest of the process. Outside the main thread,
    where Python cannot install handlers, the caller's handling stays.

    The handler's exception can be lost: Python runs a handler between any two bytecodes of the main
    thread, also inside a ``__del__``, a weakref callback or a library's ``except BaseException``, which
    swallow it. So the loop also asks :meth:`check` (and the sampling, :func:`raise_if_stopped`) at every
    case and every step: a stop that was signalled always ends the loop."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopping = False
        self.finished = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        if not self.stopping:
            self.stopping = True
            raise Interrupted(signum)

    def __enter__(self) -> Stopper:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        _ACTIVE.append(self)
        return self

    def check(self) -> None:
        """Raises :class:`Interrupted` when a signal arrived while the loop runs, also where the
        handler's own exception never reached the loop."""
        if self.signum is not None and not self.finished:
            raise Interrupted(self.signum)

    def finish(self) -> None:
        """The loop is over: a signal from now on is noted (it stops nothing that is left)."""
        self.stopping = True
        self.finished = True

    def __exit__(self, *exc: object) -> None:
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        for signum, previous in self._previous.items():
            # once a stop has begun the process is on its way out: a repeated signal must not kill it
            # before it has returned its exit status
            signal.signal(signum, signal.SIG_IGN if self.signum is not None else previous)


def raise_if_stopped() -> None:
    """Raises :class:`Interrupted` when the batch in progress (the innermost :class:`Stopper`) has had a
    stop signal; nothing outside a batch. Called at every sampling step."""
    if _ACTIVE:
        _ACTIVE[-1].check()


def signal_name(signum: int | None) -> str:
    """``SIGTERM``, ``SIGINT`` ... as a reader knows them."""
    if signum is None:
        return "a signal"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
