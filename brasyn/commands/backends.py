"""``python -m brasyn.bench backends``: the denoiser's CPU backends side by side on one input (time, ratio
to the official code, start-up, error), and which one a batch should use, printed as JSON
(:mod:`brasyn.bench.backends`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from brasyn.bench.backends import BACKENDS, compare_backends
from brasyn.commands.bench_options import add_network_size_options, check_official_checkout, network_shape
from brasyn.commands.command import HelpFormatter, parse_arguments, print_json, run_command
from brasyn.commands.converters import one_of, output_file, whole_number
from brasyn.commands.options import add_threads_option, add_verbosity_option, apply_threads
from brasyn.common.errors import ExitCode

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brasyn.bench backends",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    add_network_size_options(parser)
    parser.add_argument(
        "--backend",
        action="append",
        type=one_of(*BACKENDS),
        help=f"only these (repeatable; default all of {', '.join(BACKENDS)} that are installed)",
    )
    parser.add_argument(
        "--official",
        type=Path,
        metavar="DIR",
        help="a checkout of github.com/pfriedri/cwdm: its fp32 forward is the reference",
    )
    parser.add_argument("--rounds", type=whole_number(1), default=3, help="timed rounds (default 3)")
    parser.add_argument("--cases", type=whole_number(1), default=10, help="batch the start-up is shared by")
    parser.add_argument("--steps", type=whole_number(1), default=10, help="forwards per case in that batch")
    add_threads_option(parser)
    parser.add_argument("--json", type=output_file, help="also write the JSON to this file")
    add_verbosity_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        shape = network_shape(args)
        check_official_checkout(args.official)
        apply_threads(args.threads)
        figures = compare_backends(
            args.config,
            shape,
            args.backend,
            args.official,
            args.rounds,
            args.cases,
            args.steps,
        )
        print_json(figures, args.json)
        return ExitCode.OK

    return run_command(body)
