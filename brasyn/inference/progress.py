"""Progress bars, on a terminal only: one bar for the batch (cases done, elapsed time, the time left) and,
below it, one for the steps of the case being sampled.

A bar redraws itself with carriage returns; in a log file or a pipe each redraw would stay as a line of
``\\r`` frames, so where stderr is not a terminal no bar is drawn at all (the per-case log lines say how
far a batch has come).
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

__all__ = ["BatchBar", "on_terminal", "step_bar"]


def on_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is a terminal a bar can redraw on."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def step_bar(total: int, description: str) -> tqdm | None:
    """The steps of one case, or None where stderr is no terminal."""
    if not on_terminal():
        return None
    return tqdm(total=total, desc=description, file=sys.stderr, leave=False, mininterval=0.5)


def _clock(seconds: float) -> str:
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute:02d}:{second:02d}"


class BatchBar:
    """``batch: 40%|####      | 2/5 cases [01:10 elapsed, ETA 01:45]`` on a terminal, nothing elsewhere.

    The time left is the mean time of the cases synthesised so far times the cases still to come: a
    kept (skipped) case takes no time and would make a rate over all cases far too hopeful."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} cases [{elapsed} elapsed{postfix}]"

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self._seconds: list[float] = []
        self._bar = (
            tqdm(
                total=total,
                desc="batch",
                file=sys.stderr,
                bar_format=self.FORMAT,
                leave=False,
                mininterval=0.5,
                postfix="ETA ?",
            )
            if enabled and total > 0 and on_terminal()
            else None
        )

    def case_done(self, synthesised_seconds: float | None) -> None:
        """One more case is finished; ``synthesised_seconds`` is its time where it was synthesised."""
        if synthesised_seconds is not None:
            self._seconds.append(synthesised_seconds)
        if self._bar is None:
            return
        self._bar.set_postfix_str(self.eta_text(self._bar.n + 1), refresh=False)
        self._bar.update(1)

    def eta_text(self, done: int) -> str:
        """``ETA m:ss`` after ``done`` cases, ``ETA ?`` before the first synthesised one."""
        if not self._seconds:
            return "ETA ?"
        left = max(self.total - done, 0)
        return f"ETA {_clock(left * sum(self._seconds) / len(self._seconds))}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
