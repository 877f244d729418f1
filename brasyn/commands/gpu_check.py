"""``python -m brasyn.bench gpu --out DIR``: the GPU check (:mod:`brasyn.bench.gpu_check`), writing
``DIR/gpu.json`` and ``DIR/gpu.md`` and printing the Markdown."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from brasyn.bench.gpu_check import gpu_check, markdown
from brasyn.bench.gpu_parts import DEFAULT_BUDGET_S, QUICK_BUDGET_S
from brasyn.commands.command import HelpFormatter, parse_arguments, run_command
from brasyn.commands.converters import real_number
from brasyn.commands.options import add_device_option, add_verbosity_option
from brasyn.common.errors import ExitCode, UsageError

__all__ = ["build_parser", "main"]

log = logging.getLogger("brasyn.bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m brasyn.bench gpu",
        description="The GPU check: one command, a hard time budget.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and gpu.md")
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes, a minute on a CPU (what the tests run)"
    )
    parser.add_argument(
        "--budget",
        type=real_number(10, 3600),
        default=None,
        help=f"seconds for the measurements (default {DEFAULT_BUDGET_S:.0f}; --quick {QUICK_BUDGET_S:.0f})",
    )
    parser.add_argument(
        "--official", type=Path, metavar="DIR", help="a checkout of pfriedri/cwdm to time side by side"
    )
    add_device_option(parser, default="cuda" if torch.cuda.is_available() else "cpu")
    add_verbosity_option(parser)
    return parser


def main(argv: list[str]) -> int:
    """The ``gpu`` subcommand of ``python -m brasyn.bench``."""

    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA GPU is visible (is --gpus passed?)")
        if device.type == "cpu" and not args.quick:
            log.warning("no GPU: the full-size check on a CPU skips most parts for the budget; try --quick")
        budget = args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S)
        args.out.mkdir(parents=True, exist_ok=True)
        report = gpu_check(device, args.quick, budget, args.official)
        (args.out / "gpu.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (args.out / "gpu.md").write_text(markdown(report))
        print(markdown(report))
        log.info("wrote %s and %s", args.out / "gpu.json", args.out / "gpu.md")
        return ExitCode.OK

    return run_command(body)
