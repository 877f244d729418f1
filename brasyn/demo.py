"""``brasyn demo [--out DIR] [options]``: the example case (:mod:`brasyn.example`) through the main job with
the bundled weights (20 DDIM steps unless told otherwise), scored against the real contrast where known.

The main job itself is handed in (``synthesise``: a ``python -m brasyn`` argument list to an exit
status), so the demo runs exactly the command a user runs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

from brasyn.errors import ExitCode
from brasyn.evaluate import score_pair
from brasyn.example import DEFAULT_SOURCE, write_example
from brasyn.pairing import pair_predictions

__all__ = ["DEFAULT_OUT", "run_demo"]

log = logging.getLogger("brasyn")

DEFAULT_OUT = Path(tempfile.gettempdir()) / "brasyn-demo"


def run_demo(argv: list[str], synthesise: Callable[[list[str]], int]) -> int:
    """Write the example under ``--out`` (default :data:`DEFAULT_OUT`), run ``synthesise`` on it with the
    remaining options, and log the scores against the withheld real contrast."""
    parser = argparse.ArgumentParser(prog="brasyn demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"work folder (default {DEFAULT_OUT})")
    known, rest = parser.parse_known_args(argv)
    kind = write_example(known.out)
    output = known.out / "output"
    inputs = ["--input", str(known.out / "input"), "--output", str(output)]
    code = synthesise([*inputs, "--sampler", "ddim", "--steps", "20", "--overwrite", *rest])
    if code == ExitCode.OK and kind == "real":
        pairs, _ = pair_predictions(output, DEFAULT_SOURCE)
        for pair in pairs:
            row = score_pair(pair)
            log.info(
                "%s %s: SSIM %.4f, PSNR %.2f dB against the real image",
                row.case,
                row.target,
                row.ssim,
                row.psnr,
            )
    log.info("the synthetic image is in %s", output)
    return code
