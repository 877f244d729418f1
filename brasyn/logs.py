"""Log set-up for the command-line entry points: everything under the ``brasyn`` logger, to stderr."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


def configure_logging(verbosity: int = 0) -> None:
    """Send brasyn's log to the current stderr: INFO by default, DEBUG from ``verbosity`` 1 (one ``-v``),
    WARNING below 0 (quiet).

    Every command calls this once with its ``-v`` count, so ``-v`` means the same everywhere. The handler
    is replaced on every call so that it writes to whatever ``sys.stderr`` is now (tests capture it).
    """
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger("brasyn")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
