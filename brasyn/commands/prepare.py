"""``python -m brasyn.train prepare``: bring complete cases into model space once, into the case cache that
training reads (:mod:`brasyn.train.cache`).

    python -m brasyn.train prepare --data DIR [DIR ...] --cache DIR [--workers N] [--no-progress] [-v]

Exit status: 0 when every case is in the cache, 1 when some failed (each named with its reason), 2 when
nothing can start (no folder, no complete case, a cache that cannot be written) or the cache's disk is
full, 130 after Ctrl-C and 143 after SIGTERM (the workers stopped at once, the finished cases kept).
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from typing import Any

from brasyn.commands.command import HelpFormatter, parse_arguments, run_command
from brasyn.commands.converters import whole_number
from brasyn.commands.options import add_data_option, add_map_option, add_verbosity_option, contrast_mapping
from brasyn.common.errors import ExitCode
from brasyn.train.cache import prepare_folders

__all__ = ["build_parser", "main", "run_prepare"]

log = logging.getLogger("brasyn.cache")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m brasyn.train prepare",
        description="Bring complete cases into model space once, for training any of the four targets.",
        formatter_class=HelpFormatter,
    )
    add_data_option(p, required=True)
    p.add_argument("--cache", type=Path, required=True, help="the cache folder (made if absent)")
    p.add_argument("--workers", type=whole_number(1), default=1, help="cases prepared at once")
    add_map_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbosity_option(p)
    return p


class Terminated(BaseException):
    """SIGTERM: leave the preparation the way Ctrl-C does (the workers killed, nothing partial left)."""


def run_prepare(args: argparse.Namespace) -> ExitCode:
    return prepare_folders(
        args.data, args.cache, contrast_mapping(args), workers=args.workers, progress=not args.no_progress
    )


def main(argv: list[str] | None = None) -> int:
    def stop(signum: int, frame: Any) -> None:
        raise Terminated()

    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            return run_prepare(args)
        except Terminated:
            log.error("stopped by SIGTERM: the cases prepared so far are kept; run prepare again to go on")
            return ExitCode.TERMINATED
        finally:
            signal.signal(signal.SIGTERM, previous)

    return run_command(body)
