"""The errors brasyn reports to its users. Each carries a sentence a radiographer can act on."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path

__all__ = ["BrasynError", "CaseError", "ExitCode", "UsageError", "WeightsError"]


class BrasynError(Exception):
    """Base class of every user-facing brasyn error."""


class UsageError(BrasynError):
    """The command cannot start: the message says why and what to do.

    Raised for bad arguments, parameter files, folders or environment variables; every command turns it
    into one log line and exit status 2 (:class:`ExitCode.USAGE`), never a traceback.
    """


class ExitCode(enum.IntEnum):
    """The exit statuses every brasyn command uses, so that job systems can tell the outcomes apart."""

    OK = 0
    """Everything asked for was done (or was already there)."""
    FAILED_CASES = 1
    """Some cases failed; all the others were still processed (the log and report say which and why)."""
    USAGE = 2
    """The command could not start: bad arguments, missing folders or weights (argparse's own status)."""
    INTERRUPTED = 130
    """Stopped by SIGINT (Ctrl-C): 128 + 2, as shells report it."""
    TERMINATED = 143
    """Stopped by SIGTERM (a job system's stop, ``docker stop``): 128 + 15."""


class CaseError(BrasynError):
    """One case cannot be processed; the other cases of the run go on.

    ``message`` says what is wrong and what to do; ``files`` are the files it concerns.
    """

    def __init__(self, case: str, message: str, files: Iterable[Path | str] = ()) -> None:
        self.case = case
        self.message = message
        self.files = tuple(Path(f) for f in files)
        super().__init__(f"{case}: {message}")


class WeightsError(BrasynError):
    """A weights folder, manifest or checkpoint is missing, corrupt or does not match."""
