"""Does a faster setting change the images? Two measurements on complete cases (all four contrasts),
each contrast in turn (or ``--target``) withheld and synthesised from the other three, printed as JSON:

    python -m brasyn.quality samplers --data DIR [--weights DIR] [--target t2f] [--case ID ...]
                                      [--variant ddpm:1000 --variant ddim:50 ...] [--device D] [--json FILE]
    python -m brasyn.quality precision --data DIR [--weights DIR] [--target t2f] [--case ID ...]
                                      [--sampler ddpm] [--steps 1000] [--crop D H W] [--seed 42]
                                      [--device D] [--json FILE]
    python -m brasyn.quality draws --data DIR [--weights DIR] [--target t2f] [--case ID ...]
                                  [--variant dpm++2m:10 --variant ddim:50] [--counts 1 2 4 8]
                                  [--device D] [--json FILE]

The measurements themselves: :mod:`brasyn.bench.quality` and :mod:`brasyn.bench.draws`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brasyn.bench.draws import DEFAULT_COUNTS, DEFAULT_DRAW_VARIANTS, compare_draws, draws_table
from brasyn.bench.quality import (
    DEFAULT_VARIANTS,
    compare_precision,
    compare_samplers,
    complete_cases_in,
    markdown_table,
    parse_variant,
)
from brasyn.commands.command import HelpFormatter, HelpParser, parse_arguments, print_json, run_command
from brasyn.commands.converters import contrast, output_file, whole_number
from brasyn.commands.options import (
    add_device_option,
    add_sampling_options,
    add_threads_option,
    add_verbosity_option,
    apply_threads,
)
from brasyn.common.acceleration import SpeedSettings
from brasyn.common.errors import BrasynError, ExitCode
from brasyn.common.runtime import select_device
from brasyn.data.modalities import Modality
from brasyn.model.diffusion import MAX_DRAWS
from brasyn.weights.bundled import BUNDLED_WEIGHTS
from brasyn.weights.store import WeightStore

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="python -m brasyn.quality", description=__doc__.split("\n\n")[0]
    )
    add_verbosity_option(parser)
    commands = parser.add_subparsers(parser_class=HelpParser, dest="command", required=True)
    for name in ("samplers", "precision", "draws"):
        p = commands.add_parser(name)
        p.add_argument("--data", type=Path, required=True, help="folder of complete case folders")
        p.add_argument("--weights", type=Path, default=BUNDLED_WEIGHTS)
        p.add_argument("--target", type=contrast, action="append", help="only this contrast (repeatable)")
        p.add_argument("--case", action="append", help="only this case id (repeatable)")
        p.add_argument("--seed", type=whole_number(0), default=42)
        add_device_option(p)
        add_threads_option(p)
        p.add_argument("--json", type=output_file, help="also write the JSON here")
        add_verbosity_option(p, default=argparse.SUPPRESS)
    samplers = commands.choices["samplers"]
    samplers.add_argument(
        "--variant", action="append", help=f"sampler:steps[:precision[:backend]] (default {DEFAULT_VARIANTS})"
    )
    draws = commands.choices["draws"]
    draws.add_argument(
        "--variant", action="append", help=f"sampler:steps[:precision] (default {DEFAULT_DRAW_VARIANTS})"
    )
    draws.add_argument(
        "--counts",
        type=whole_number(1, MAX_DRAWS),
        nargs="+",
        default=list(DEFAULT_COUNTS),
        help=f"numbers of draws to score (default {' '.join(map(str, DEFAULT_COUNTS))}); one chain of the "
        "largest serves them all",
    )
    precision = commands.choices["precision"]
    add_sampling_options(precision, eta=False)
    precision.add_argument("--crop", type=whole_number(32), nargs=3, metavar=("D", "H", "W"))
    return parser


def _compare(argv: list[str] | None) -> int:
    args = parse_arguments(build_parser(), argv)
    apply_threads(args.threads)
    cases = complete_cases_in(args.data, args.case)
    targets = [Modality(t) for t in args.target] if args.target else list(Modality)
    weights = WeightStore(args.weights)
    device = select_device(args.device)
    SpeedSettings().configure_backends(device)  # process-wide, once: TF32 and autotuning as a run has them
    if args.command == "samplers":
        variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
        rows = compare_samplers(cases, targets, weights, device, variants, args.seed)
    elif args.command == "draws":
        variants = [parse_variant(v) for v in (args.variant or DEFAULT_DRAW_VARIANTS)]
        rows = compare_draws(cases, targets, weights, device, variants, args.counts, args.seed)
    else:
        crop = tuple(args.crop) if args.crop else None
        rows = compare_precision(cases, targets, weights, device, args.sampler, args.steps, args.seed, crop)
    result = {"command": args.command, "device": str(device), "weights": str(args.weights), "rows": rows}
    print_json(result, args.json)
    if args.command == "samplers":
        sys.stderr.write(markdown_table(rows) + "\n")
    elif args.command == "draws":
        sys.stderr.write(draws_table(rows) + "\n")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """``python -m brasyn.quality``: the sampler table, the precision check or the draws table."""
    return run_command(lambda: _compare(argv), usage_errors=(BrasynError, ValueError))
