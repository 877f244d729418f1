"""The options the speed benchmarks share (``python -m brasyn.bench`` and its ``floor`` and ``backends``
subcommands): the denoiser's size and the volume it is timed on, and the official code to compare with."""

from __future__ import annotations

import argparse
from pathlib import Path

from brasyn.commands.converters import one_of, whole_number
from brasyn.common.errors import UsageError
from brasyn.model.unet import PRESETS
from brasyn.transform.preprocess import TRAINING_SHAPE

__all__ = ["add_network_size_options", "check_official_checkout", "network_shape"]


def add_network_size_options(parser: argparse.ArgumentParser) -> None:
    """``--config`` (the denoiser's size) and ``--shape D H W`` (the image volume it is timed on)."""
    parser.add_argument("--config", type=one_of(*sorted(PRESETS)), default="official", help="denoiser size")
    parser.add_argument(
        "--shape",
        type=whole_number(1),
        nargs=3,
        metavar=("D", "H", "W"),
        default=list(TRAINING_SHAPE),
        help="image volume size (the network sees half of it); default 224 224 160",
    )


def network_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    """``--shape`` as a tuple; a UsageError where the ``--config`` network cannot take it."""
    divisor = 2 * PRESETS[args.config].divisor
    if any(s % divisor for s in args.shape):
        raise UsageError(f"--shape must be multiples of {divisor} for the {args.config} config")
    return tuple(args.shape)


def check_official_checkout(path: Path | None) -> None:
    """A UsageError where ``--official`` names no checkout of pfriedri/cwdm."""
    if path and not (path / "guided_diffusion" / "unet.py").is_file():
        raise UsageError(
            f"--official {path}: not a checkout of github.com/pfriedri/cwdm "
            "(git clone https://github.com/pfriedri/cwdm; it needs PyWavelets)"
        )
