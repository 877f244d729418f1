"""The errors brasyn reports to its users. Each carries a sentence a radiographer can act on."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["BrasynError", "CaseError", "WeightsError"]


class BrasynError(Exception):
    """Base class of every user-facing brasyn error."""


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
