"""``python -m brasyn.example --out DIR``: an example input folder to run the main job on, without downloads.

It takes the real case BraTS-GLI-00001-000 (the one the demo weights were not trained on) from the shared
test data beside the project (``../shared/data/real``, or ``--source DIR``), withholds its FLAIR and
writes:

    DIR/input/BraTS-GLI-00001-000/   the three other contrasts: run brasyn on DIR/input
    DIR/truth/BraTS-GLI-00001-000/   the withheld FLAIR, to compare the synthetic one with

Where no real data is at hand it writes a synthetic phantom case instead (and says so), which exercises
the whole pipeline but is not a brain.

Exit status: 0 when the example was written, 2 when it could not be (bad arguments, a folder that cannot
be written).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import numpy as np

from brasyn.commands.command import HelpFormatter, parse_arguments, run_command
from brasyn.commands.options import add_verbosity_option
from brasyn.common.errors import BrasynError, ExitCode, UsageError
from brasyn.common.files import atomic_write, own_folder
from brasyn.data.phantom import Lesion, Rings, phantom, write_phantom_case
from brasyn.transform.preprocess import BRATS_SHAPE

__all__ = ["EXAMPLE_CASE", "main", "write_example"]

log = logging.getLogger("brasyn.example")

EXAMPLE_CASE = "BraTS-GLI-00001-000"
WITHHELD = "t2f"
CONDITIONS = ("t1n", "t1c", "t2w")
DEFAULT_SOURCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def _phantom(seed: int, scale: float) -> np.ndarray:
    """A 240x240x155 head-sized ellipsoid with tissue-like texture and a bright lesion, 0 outside."""
    return phantom(
        BRATS_SHAPE,
        seed=seed,
        scale=scale,
        centre=(120, 125, 75),
        radii=(70, 85, 60),
        texture=Rings(),
        lesion=Lesion(offset=(25, -15, 10), radii=(15, 15, 12), gain=1.6),
        coordinates="voxels_float32",
        scale_last=True,
    )


def write_example(out: Path, source: Path | None = None) -> str:
    """Write the example under ``out``; returns "real" or "phantom".

    Its folders must be this user's and not links (:func:`own_folder`); of what they hold, only the
    example's own four files are replaced, a link among them removed rather than followed: ``out`` may lie
    where other users write, and nothing of theirs may be written to or removed."""
    source = source or DEFAULT_SOURCE
    case_dir = source / EXAMPLE_CASE
    try:
        out.mkdir(parents=True, exist_ok=True)  # the folder named by the user, as named
    except OSError as exc:
        raise UsageError(
            f"cannot create the folder {out}: {exc.strerror or exc}; choose another folder"
        ) from exc
    inputs = own_folder(own_folder(out / "input") / EXAMPLE_CASE)
    truth = own_folder(own_folder(out / "truth") / EXAMPLE_CASE)
    for folder in (inputs, truth):
        for modality in (*CONDITIONS, WITHHELD):
            (folder / f"{EXAMPLE_CASE}-{modality}.nii.gz").unlink(missing_ok=True)
    if case_dir.is_dir():
        for path in sorted(case_dir.glob(f"{EXAMPLE_CASE}-*.nii.gz")):
            dest = truth if path.name.endswith(f"-{WITHHELD}.nii.gz") else inputs
            with open(path, "rb") as original:
                # a new file, renamed into place: a link put there meanwhile is replaced, not followed
                atomic_write(
                    dest / path.name, lambda handle, original=original: shutil.copyfileobj(original, handle)
                )
        return "real"
    # said plainly, since an installed brasyn never has the shared data beside it: the demo's image is then
    # a pipeline check, not a measure of the model
    log.warning(
        "no real case at %s (the real example case comes with the project's shared test data beside a "
        "checkout, not with an installed brasyn): writing a synthetic phantom instead, a head-sized "
        "ellipsoid with a bright lesion that runs the whole pipeline but is not a brain",
        case_dir,
    )
    for i, m in enumerate((*CONDITIONS, WITHHELD)):
        folder = out / ("truth" if m == WITHHELD else "input")
        write_phantom_case(folder, EXAMPLE_CASE, {m: _phantom(i, 500.0 * (i + 1))})
    return "phantom"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="python -m brasyn.example", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write input/ and truth/ into")
    parser.add_argument(
        "--source", type=Path, default=None, help=f"folder of real cases (default {DEFAULT_SOURCE})"
    )
    add_verbosity_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        kind = write_example(args.out, args.source)
        log.info(
            "%s example case written: run brasyn on %s (its %s is in %s)",
            kind,
            args.out / "input",
            WITHHELD,
            args.out / "truth",
        )
        return ExitCode.OK

    # an output folder that cannot be written is the user's to fix: one sentence, no traceback
    return run_command(body, usage_errors=(BrasynError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
