"""``python -m brasyn.bench cpu``: the processor's floor, the backends side by side, the default CPU path
against the official code and a batch of real-size cases, each part in a process of its own, in one JSON
(:mod:`brasyn.bench.cpu_report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from brasyn.bench.cpu_report import CpuReportSettings, cpu_report
from brasyn.commands.bench_options import add_network_size_options, check_official_checkout, network_shape
from brasyn.commands.command import HelpFormatter, parse_arguments, print_json, run_command
from brasyn.commands.converters import one_of, whole_number
from brasyn.commands.options import add_threads_option, add_verbosity_option
from brasyn.common.errors import ExitCode, UsageError

__all__ = ["PARTS", "build_parser", "main"]

PARTS = ("floor", "backends", "default_path", "batch")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brasyn.bench cpu",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="cpu.json and each part's JSON"
    )
    add_network_size_options(parser)
    parser.add_argument(
        "--official",
        type=Path,
        metavar="DIR",
        help="a checkout of github.com/pfriedri/cwdm: the reference of the backends and the default path",
    )
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="complete cases (all four contrasts) for the batch (default: phantoms of BraTS size)",
    )
    parser.add_argument("--weights", type=Path, metavar="DIR", help="the batch's weights (default: bundled)")
    parser.add_argument("--cases", type=whole_number(1), default=8, help="cases in the batch (default 8)")
    parser.add_argument("--steps", type=whole_number(1), default=10, help="dpm++2m steps a case (default 10)")
    parser.add_argument("--rounds", type=whole_number(1), default=3, help="timed rounds of the backends")
    parser.add_argument(
        "--part",
        action="append",
        type=one_of(*PARTS),
        help=f"only these (repeatable; default all: {', '.join(PARTS)})",
    )
    add_threads_option(parser)
    add_verbosity_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        shape = network_shape(args)
        check_official_checkout(args.official)
        if args.data is not None and not args.data.is_dir():
            raise UsageError(f"--data {args.data}: no such folder")
        settings = CpuReportSettings(
            out=args.out,
            official=args.official,
            data=args.data,
            config=args.config,
            shape=shape,
            rounds=args.rounds,
            cases=args.cases,
            steps=args.steps,
            threads=args.threads,
            weights=args.weights,
            parts=tuple(args.part or PARTS),
        )
        print_json(cpu_report(settings), None)
        return ExitCode.OK

    return run_command(body)
