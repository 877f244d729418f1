"""How every brasyn command starts and ends, so that they all fail, stop and exit the same way.

A command's ``main(argv)`` parses its arguments and does its work inside a body function and hands it to
:func:`run_command`, which prepares the process (writable caches in a container without a home), runs
the body, and turns what escapes it into the exit statuses of :class:`brasyn.common.errors.ExitCode`: one log
line and 2 for anything that stops the command from starting, 130 for Ctrl-C, never a traceback for a
user's mistake.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brasyn.common.errors import BrasynError, ExitCode
from brasyn.common.files import atomic_write
from brasyn.common.logs import configure_logging
from brasyn.common.runtime import writable_cache_environment

__all__ = [
    "HelpFormatter",
    "HelpParser",
    "Subcommands",
    "parse_arguments",
    "print_json",
    "run_command",
    "verbosity",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` that shows a default only where one means something: not on required options or options
    without a default (``default: None``), not on switches and counters (``default: False``, ``0``), and
    not where the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        silent = (
            "default" in text.lower()
            or "%(default)" in text
            or default is None
            or default is argparse.SUPPRESS
            or action.required
            or isinstance(default, bool)
            or isinstance(action, argparse._CountAction)
            or not action.option_strings
            or default == []
        )
        return text if silent else super()._get_help_string(action)


class HelpParser(argparse.ArgumentParser):
    """An argument parser whose ``--help`` uses :class:`HelpFormatter`; sub-commands are made with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


log = logging.getLogger(__name__)


def run_command(
    body: Callable[[], int | ExitCode],
    *,
    usage_errors: tuple[type[Exception], ...] = (BrasynError,),
) -> int:
    """Run a command's ``body`` and return its exit status as an int.

    - argparse's ``SystemExit`` (``--help``, ``--version``, a bad argument, after argparse has printed its
      message): 0 stays 0, anything else becomes 2;
    - a :class:`~brasyn.common.errors.BrasynError` (``UsageError``, ``WeightsError`` ...), or any of
      ``usage_errors`` (for commands that treat ``ValueError`` or ``OSError`` as a bad setup): its message
      logged as an error, 2;
    - ``KeyboardInterrupt``: 130, as a shell reports Ctrl-C.

    Cache variables (HOME, XDG_CACHE_HOME, TORCH_HOME, MPLCONFIGDIR) are first pointed at a writable place
    when the process has no usable home, as in a container started with an arbitrary uid.
    """
    os.environ.update(writable_cache_environment())
    configure_logging(0)  # until the arguments say otherwise: a refusal before parsing is a log line too
    try:
        code = body()
    except SystemExit as exc:  # argparse has printed its message
        return int(ExitCode.OK if exc.code in (0, None) else ExitCode.USAGE)
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C)")
        return int(ExitCode.INTERRUPTED)
    except (BrasynError, *usage_errors) as exc:
        log.error("%s", exc)
        return int(ExitCode.USAGE)
    return int(code)


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with ``parser`` and set up the log as its ``-v`` or ``-q`` asks: the one place where
    a command's log is configured (``add_verbosity_option`` gives every parser its ``-v`` and ``-q``)."""
    args = parser.parse_args(argv)
    configure_logging(verbosity(args))
    return args


def verbosity(args: argparse.Namespace) -> int:
    """-1 for ``-q``, else the number of ``-v`` (0 when the parser has neither)."""
    return -1 if getattr(args, "quiet", False) else getattr(args, "verbose", 0) or 0


def print_json(result: Any, path: Path | None = None) -> None:
    """A measuring command's result: as JSON on stdout (its only output there), and into ``path`` (its
    ``--json FILE``) too when given."""
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda handle: handle.write((text + "\n").encode()))
        except OSError as exc:
            raise BrasynError(
                f"cannot write {path}: {exc.strerror or exc}; the JSON printed above is the whole result"
            ) from exc


Main = Callable[[list[str]], int]
"""A command's body on its own arguments (the words after its name), returning the exit status."""


@dataclass(frozen=True)
class Subcommands:
    """A command whose first word may name a subcommand (``python -m brasyn.bench gpu ...``); any other
    first word, or none, goes to ``default`` with every argument. Called as ``main(argv=None)``, it is the
    command's ``main``, console scripts included. Each subcommand runs its own :func:`run_command`."""

    table: Mapping[str, Main]
    default: Main

    def __call__(self, argv: Sequence[str] | None = None) -> int:
        words = list(sys.argv[1:] if argv is None else argv)
        if words and words[0] in self.table:
            return int(self.table[words[0]](words[1:]))
        return int(self.default(words))

    @property
    def names(self) -> list[str]:
        return list(self.table)
