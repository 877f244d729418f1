"""``python -m brasyn.bench floor``: the largest convolutions of the denoiser alone in fp32 and bf16 (this
processor's floor for the network's work) and the share of it the whole forward reaches, printed as JSON
(:mod:`brasyn.bench.floor`)."""

from __future__ import annotations

import argparse

from brasyn.bench.floor import measure_floor
from brasyn.commands.bench_options import add_network_size_options, network_shape
from brasyn.commands.command import HelpFormatter, parse_arguments, print_json, run_command
from brasyn.commands.converters import output_file, whole_number
from brasyn.commands.options import (
    add_speed_options,
    add_threads_option,
    add_verbosity_option,
    apply_threads,
    speed_settings,
)
from brasyn.common.errors import ExitCode

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brasyn.bench floor",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    add_network_size_options(parser)
    add_speed_options(parser)
    parser.set_defaults(precision="auto")  # the floor is asked of the fastest path this processor offers
    parser.add_argument("--top", type=whole_number(1), default=3, help="convolution shapes timed alone")
    parser.add_argument("--repeats", type=whole_number(1), default=3, help="timed runs (default 3)")
    parser.add_argument("--warmup", type=whole_number(0), default=1, help="untimed runs first (default 1)")
    add_threads_option(parser)
    parser.add_argument("--json", type=output_file, help="also write the JSON to this file")
    add_verbosity_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        shape = network_shape(args)
        apply_threads(args.threads)
        figures = measure_floor(args.config, shape, speed_settings(args), args.repeats, args.warmup, args.top)
        print_json(figures, args.json)
        return ExitCode.OK

    return run_command(body)
