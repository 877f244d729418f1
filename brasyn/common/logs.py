"""Log set-up for the command-line entry points: everything under the ``brasyn`` logger, to stderr.

One format for every command: ``2026-12-01 20:15:03 INFO message`` (the date too: batches run overnight).
Lines are written through tqdm, so a log line printed while a progress bar is drawn appears above the bar
instead of breaking it. Logs go to stderr; tables and other results a command prints go to stdout.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

__all__ = ["DATE_FORMAT", "LOG_FORMAT", "configure_logging", "demoted"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _TqdmHandler(logging.StreamHandler):
    """Writes each record with ``tqdm.write``, which clears any bar on the stream, writes the line and
    redraws the bar below it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # as logging's own handlers do: a broken stream must not stop the run
            self.handleError(record)


def configure_logging(verbosity: int = 0) -> None:
    """Send brasyn's log to the current stderr: INFO by default, DEBUG from ``verbosity`` 1 (one ``-v``),
    WARNING and ERROR only below 0 (``-q``).

    Every command calls this once with its ``-v``/``-q`` (:func:`brasyn.commands.command.parse_arguments`),
    so they mean the same everywhere. The handler is replaced on every call so that it writes to whatever
    ``sys.stderr`` is now (tests capture it).
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    root = logging.getLogger("brasyn")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@contextmanager
def demoted(logger_name: str, prefix: str, level: int = logging.DEBUG) -> Iterator[None]:
    """While in the block, records logged on ``logger_name`` itself whose message starts with ``prefix``
    are logged at ``level`` instead: for a caller that reports those outcomes its own way (a validation
    during training, where an early model's failed case is expected, not an error)."""

    def lower(record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(prefix):
            record.levelno, record.levelname = level, logging.getLevelName(level)
            return logging.getLogger(logger_name).isEnabledFor(level)
        return True

    logger = logging.getLogger(logger_name)
    logger.addFilter(lower)
    try:
        yield
    finally:
        logger.removeFilter(lower)
