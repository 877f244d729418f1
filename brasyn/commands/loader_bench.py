"""``python -m brasyn.bench loader`` and ``python -m brasyn.bench quantisation``: the training data loader's
rate and what the case cache's rounding does (:mod:`brasyn.bench.loader_bench`), printed as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from brasyn.bench.loader_bench import LoaderBenchSettings, measure, quantisation
from brasyn.commands.command import HelpFormatter, parse_arguments, print_json, run_command
from brasyn.commands.converters import contrast, output_file, real_number, whole_number
from brasyn.commands.options import add_verbosity_option
from brasyn.common.errors import ExitCode, UsageError

__all__ = ["build_parser", "build_quantisation_parser", "loader_main", "quantisation_main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m brasyn.bench loader",
        description="Samples per second of the training data loader and the main process's wait per step.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--cache", type=Path, required=True, help="a prepared cache (python -m brasyn.train prepare)"
    )
    p.add_argument("--workers", type=whole_number(0), default=2, help="loader processes (0: main thread)")
    p.add_argument(
        "--patch", type=int, nargs=3, metavar=("D", "H", "W"), help="patch size (default: whole volumes)"
    )
    p.add_argument("--batch-size", type=whole_number(1), default=1, help="examples per batch")
    p.add_argument("--target", type=contrast, default="t2f", help="the contrast placed last")
    p.add_argument("--steps", type=whole_number(1), default=40, help="timed batches")
    p.add_argument("--warmup", type=whole_number(0), default=4, help="batches before timing")
    p.add_argument("--step-ms", type=real_number(0), default=0.0, help="simulated training step per batch")
    p.add_argument("--flip", action="store_true", help="random flips, as training with --flip")
    p.add_argument("--seed", type=whole_number(), default=0, help="seed of the draws")
    p.add_argument("--json", type=output_file, help="also write the JSON to this file")
    add_verbosity_option(p)
    return p


def build_quantisation_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="python -m brasyn.bench quantisation"
    )
    parser.add_argument("--data", type=Path, required=True, help="a folder of complete cases")
    parser.add_argument("--json", type=output_file, help="also write the JSON to this file")
    add_verbosity_option(parser)
    return parser


def loader_main(argv: list[str]) -> int:
    """The ``loader`` subcommand of ``python -m brasyn.bench``."""

    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        settings = LoaderBenchSettings(
            cache=args.cache,
            workers=args.workers,
            patch=tuple(args.patch) if args.patch else None,
            batch_size=args.batch_size,
            target=args.target,
            steps=args.steps,
            warmup=args.warmup,
            step_ms=args.step_ms,
            flip=args.flip,
            seed=args.seed,
        )
        print_json(measure(settings), args.json)
        return ExitCode.OK

    return run_command(body)


def quantisation_main(argv: list[str]) -> int:
    """The ``quantisation`` subcommand of ``python -m brasyn.bench``."""

    def body() -> ExitCode:
        args = parse_arguments(build_quantisation_parser(), argv)
        if not args.data.is_dir():
            raise UsageError(f"the data folder {args.data} does not exist or is not a folder")
        print_json(quantisation(args.data), args.json)
        return ExitCode.OK

    return run_command(body)
