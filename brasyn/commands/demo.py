"""``brasyn demo [--out DIR] [options]``: the example case (:mod:`brasyn.commands.example`) through the main
job with the bundled weights (20 DDIM steps unless told otherwise), scored against the real contrast where
known.

The main job itself is handed in (``synthesise``: a ``python -m brasyn`` argument list to an exit
status), so the demo runs exactly the command a user runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import textwrap
from collections.abc import Callable
from pathlib import Path

from brasyn.commands.command import verbosity
from brasyn.commands.example import DEFAULT_SOURCE, write_example
from brasyn.commands.options import add_verbosity_option
from brasyn.common.errors import ExitCode
from brasyn.common.files import own_folder, private_folder
from brasyn.common.logs import configure_logging
from brasyn.evaluate.pairing import pair_predictions
from brasyn.evaluate.score import score_pair

__all__ = ["build_demo_parser", "default_work_folder", "run_demo"]

log = logging.getLogger("brasyn")


def default_work_folder() -> Path:
    """``brasyn/demo`` in this user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``): private to
    the user, where a fixed folder in ``/tmp`` could be a link another user planted."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(cache) if os.path.isabs(cache) else Path.home() / ".cache") / "brasyn" / "demo"


DESCRIPTION = (
    "Write the example case (one real BraTS case with its FLAIR withheld, or a synthetic phantom), "
    "synthesise its missing contrast with the main job and the bundled weights (20 DDIM steps unless "
    "told otherwise), and score the result against the real image."
)
HIDDEN = ("-h", "--help", "--input", "--output", "--devices", "--version", "-v", "--verbose", "-q", "--quiet")
"""Options of the main job the demo's help does not list: its own, ones it sets itself, and worker
processes (one example case)."""


def _epilog(main_parser: argparse.ArgumentParser | None) -> str:
    """The main job's options the demo passes on, by name (their meaning is in ``brasyn --help``)."""
    intro = "Any option of the main job is passed on to it (see 'brasyn --help' for each)"
    if main_parser is None:
        return textwrap.fill(intro + ".", width=100)
    names = [
        action.option_strings[-1]
        for action in main_parser._actions
        if action.option_strings and not set(action.option_strings) & set(HIDDEN)
    ]
    listed = textwrap.fill(", ".join(names), width=100, initial_indent="  ", subsequent_indent="  ")
    said = textwrap.fill(
        f"{intro}; the demo sets --sampler ddim --steps 20 --overwrite, which these override:", width=100
    )
    return f"{said}\n{listed}\n\nExample: brasyn demo --sampler dpm++2m --steps 10 --extras /tmp/previews"


def build_demo_parser(main_parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``brasyn demo``'s own options (``--out``, ``-v``, ``-q``); its help lists the main job's options
    that it passes on."""
    parser = argparse.ArgumentParser(
        prog="brasyn demo",
        usage="%(prog)s [--out DIR] [-v | -q] [options of the main job]",
        description=textwrap.fill(DESCRIPTION, width=100),
        epilog=_epilog(main_parser),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help=f"work folder (default {default_work_folder()}, made private to this user)",
    )
    add_verbosity_option(parser)
    return parser


def run_demo(
    argv: list[str],
    synthesise: Callable[[list[str]], int],
    main_parser: argparse.ArgumentParser | None = None,
) -> int:
    """Write the example under ``--out`` (default :func:`default_work_folder`), run ``synthesise`` on it
    with the remaining options, and log the scores against the withheld real contrast. ``main_parser``
    (the main job's) names the options passed on in ``--help``."""
    known, rest = build_demo_parser(main_parser).parse_known_args(argv)
    configure_logging(verbosity(known))
    # the main job sets up the log again from its own arguments: hand it the same -v / -q
    rest = [*rest, *(["-q"] if known.quiet else ["-v"] * known.verbose)]
    out = known.out if known.out is not None else private_folder(default_work_folder())
    kind = write_example(out)
    output = own_folder(out / "output")
    inputs = ["--input", str(out / "input"), "--output", str(output)]
    code = synthesise([*inputs, "--sampler", "ddim", "--steps", "20", "--overwrite", *rest])
    if code == ExitCode.OK and kind == "real":
        pairs, _ = pair_predictions(output, DEFAULT_SOURCE)
        for pair in pairs:
            log.info(
                "scoring the synthetic %s against the real image (SSIM over the whole volume: from half "
                "a minute to a few minutes on a CPU)",
                pair.contrast.value,
            )
            row = score_pair(pair)
            log.info(
                "%s %s: SSIM %.4f, PSNR %.2f dB against the real image",
                row.case,
                row.target,
                row.ssim,
                row.psnr,
            )
    if code == ExitCode.OK and kind == "phantom":
        log.info(
            "the example was the synthetic phantom, not a brain: there is no real image to score against"
        )
    log.info("the synthetic image is in %s", output)
    return code
