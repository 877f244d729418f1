"""Speed and memory of the core maths and of one whole case, printed as JSON.

    python -m brasyn.bench gpu --out DIR [--quick] [--official DIR]
                                                            (the GPU check: brasyn.commands.gpu_check)
    python -m brasyn.bench loader --cache DIR [--workers N] [--patch D H W] [--json FILE]
                                                     (the training data loader: brasyn.commands.loader_bench)
    python -m brasyn.bench quantisation --data DIR [--json FILE]   (what the case cache's rounding does)
    python -m brasyn.bench floor [--config C] [--shape D H W] [--precision P] [--top N] [--threads N]
                                 [--json FILE]   (the processor's floor: brasyn.commands.floor)
    python -m brasyn.bench backends [--config C] [--shape D H W] [--backend NAME ...] [--official DIR]
                                    [--rounds N] [--cases N] [--steps N] [--threads N] [--json FILE]
                                    (CPU backends side by side: brasyn.commands.backends)
    python -m brasyn.bench cpu --out DIR [--official DIR] [--data DIR] [--cases N] [--steps N] [--rounds N]
                               [--part floor|backends|default_path|batch ...] [--threads N]
                               (all of the CPU's figures in one JSON: brasyn.commands.cpu_bench)
    python -m brasyn.bench [--config official|small|tiny] [--shape D H W] [--device cpu|cuda[:N]]
                           [--precision fp32|bf16|auto] [--sampler ddpm|ddim|dpm++2m|x0] [--steps N]
                           [--no-channels-last] [--compile] [--no-tf32] [--no-cudnn-benchmark]
                           [--repeats N] [--warmup N] [--threads N] [--official DIR]
                           [--case-shape X Y Z | --no-case] [--json FILE]

The figures, and what each flag changes in them, are described in :mod:`brasyn.bench.speed`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from brasyn.bench.speed import BenchSettings, run
from brasyn.commands.backends import main as backends_main
from brasyn.commands.bench_options import add_network_size_options, check_official_checkout, network_shape
from brasyn.commands.command import HelpFormatter, Subcommands, parse_arguments, print_json, run_command
from brasyn.commands.converters import output_file, whole_number
from brasyn.commands.cpu_bench import main as cpu_main
from brasyn.commands.floor import main as floor_main
from brasyn.commands.gpu_check import main as gpu_main
from brasyn.commands.loader_bench import loader_main, quantisation_main
from brasyn.commands.options import (
    add_device_option,
    add_sampling_options,
    add_speed_options,
    add_threads_option,
    add_verbosity_option,
    apply_threads,
    speed_settings,
)
from brasyn.common.errors import ExitCode

__all__ = ["build_parser", "main", "settings_from"]


def build_parser() -> argparse.ArgumentParser:
    """The bench's flags; the speed switches, device, sampler and steps are those of ``python -m
    brasyn`` (:mod:`brasyn.commands.options`), with the same defaults, so a figure means what a run does."""
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="python -m brasyn.bench", description=__doc__.split("\n\n")[0]
    )
    add_network_size_options(parser)
    add_device_option(parser, default="cuda" if torch.cuda.is_available() else "cpu")
    add_speed_options(parser)
    add_sampling_options(parser, sampler="ddim", steps=10, eta=False)
    parser.add_argument(
        "--official",
        type=Path,
        metavar="DIR",
        help="also time the official UNetModel from this checkout of pfriedri/cwdm on the same input",
    )
    parser.add_argument("--repeats", type=whole_number(1), default=3, help="timed runs (default 3)")
    parser.add_argument("--warmup", type=whole_number(0), default=1, help="untimed runs first (default 1)")
    add_threads_option(parser)
    parser.add_argument(
        "--case-shape",
        type=whole_number(1),
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="stored grid of the end-to-end case (default 240 240 155 for the default --shape, else --shape)",
    )
    parser.add_argument("--no-case", dest="case", action="store_false", help="skip the end-to-end case")
    parser.add_argument("--json", type=output_file, help="also write the JSON to this file")
    add_verbosity_option(parser)
    return parser


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """The :class:`BenchSettings` of arguments parsed with :func:`build_parser`."""
    return BenchSettings(
        config=args.config,
        shape=tuple(args.shape),
        sampler=args.sampler,
        steps=args.steps,
        speed=speed_settings(args),
        repeats=args.repeats,
        warmup=args.warmup,
        official=args.official,
        case=args.case,
        case_shape=tuple(args.case_shape) if args.case_shape else None,
    )


def _measure(argv: list[str]) -> int:
    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        network_shape(args)
        check_official_checkout(args.official)
        settings = settings_from(args)
        device = torch.device(args.device)
        apply_threads(args.threads)
        settings.speed.configure_backends(device)  # process-wide: once, for everything timed here
        print_json(run(settings, device), args.json)
        return ExitCode.OK

    return run_command(body)


main = Subcommands(
    {
        "gpu": gpu_main,
        "floor": floor_main,
        "backends": backends_main,
        "cpu": cpu_main,
        "loader": loader_main,
        "quantisation": quantisation_main,
    },
    default=_measure,
)
"""``python -m brasyn.bench``: the speed of the maths and of one case, and its ``gpu``, ``floor``,
``backends``, ``cpu``, ``loader`` and ``quantisation`` checks."""
