"""``brasyn doctor``: is this machine, this user and this weights folder ready for a run?

One line per check on stdout (``ok``, ``warning`` or ``problem``, what was seen, and what to do), then a
count. Exit status 0 when no check found a problem, 1 otherwise (2 for bad arguments). The checks are
library functions (:mod:`brasyn.common.health`, :mod:`brasyn.weights.health`); nothing is written.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from brasyn.commands.command import HelpFormatter, parse_arguments, run_command
from brasyn.commands.options import add_device_option, add_verbosity_option
from brasyn.common.errors import BrasynError
from brasyn.common.health import Check, Status, machine_checks
from brasyn.weights.bundled import BUNDLED_WEIGHTS
from brasyn.weights.health import weights_checks

__all__ = ["build_parser", "doctor", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="brasyn doctor",
        description="Check torch, CUDA, the driver, the GPUs, the weights, the output folder, the user "
        "and /dev/shm for a run; one line per check (ok, warning or problem, and what to do). "
        "Exit status 0 when nothing is a problem, 1 otherwise.",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help="the weights folder the run would use (default as the run: $BRASYN_WEIGHTS, else /weights "
        "when it holds weights, else the bundled ones)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="the output folder the run would write (default as the run: $BRASYN_OUTPUT or /output)",
    )
    add_device_option(parser)
    add_verbosity_option(parser)
    return parser


DefaultWeights = Callable[[], Path]
"""The main command's choice of weights folder where none is given (``brasyn.commands.cli`` hands its
own in, so that the doctor judges the folder a run would take)."""


def doctor(
    weights: Path | None = None,
    output: Path | None = None,
    device: str = "auto",
    default_weights: DefaultWeights = lambda: BUNDLED_WEIGHTS,
) -> list[Check]:
    """Every check, in the printed order: the machine, then the weights. ``weights`` and ``output``
    default as in the main command."""
    output = output or Path(os.environ.get("BRASYN_OUTPUT", "/output"))
    checks = machine_checks(output, device)
    try:
        folder = weights or default_weights()
    except BrasynError as exc:  # a /weights mount the run would refuse
        return [*checks, Check("weights", Status.PROBLEM, str(exc))]
    return [*checks, *weights_checks(folder)]


def _report(checks: list[Check]) -> int:
    for check in checks:
        print(check.line(), flush=True)
    counts = Counter(check.status for check in checks)
    print(
        f"{counts[Status.OK]} ok, {counts[Status.WARNING]} warning(s), {counts[Status.PROBLEM]} problem(s)",
        flush=True,
    )
    return 1 if counts[Status.PROBLEM] else 0


def main(argv: list[str], default_weights: DefaultWeights = lambda: BUNDLED_WEIGHTS) -> int:
    """``brasyn doctor [--weights DIR] [--output DIR] [--device ...]``."""

    def body() -> int:
        args = parse_arguments(build_parser(), argv)
        return _report(doctor(args.weights, args.output, args.device, default_weights))

    return run_command(body)
