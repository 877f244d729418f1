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

import nibabel as nib
import numpy as np

from brasyn.commands.command import parse_arguments, run_command
from brasyn.commands.options import add_verbosity_option
from brasyn.common.errors import BrasynError, ExitCode

__all__ = ["EXAMPLE_CASE", "main", "write_example"]

log = logging.getLogger("brasyn.example")

EXAMPLE_CASE = "BraTS-GLI-00001-000"
WITHHELD = "t2f"
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def _phantom(seed: int, scale: float) -> np.ndarray:
    """A 240x240x155 head-sized ellipsoid with tissue-like texture and a bright lesion, 0 outside."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in (240, 240, 155)], indexing="ij", sparse=True)
    r2 = ((grid[0] - 120) / 70) ** 2 + ((grid[1] - 125) / 85) ** 2 + ((grid[2] - 75) / 60) ** 2
    lesion = ((grid[0] - 145) / 15) ** 2 + ((grid[1] - 110) / 15) ** 2 + ((grid[2] - 85) / 12) ** 2 < 1
    brain = r2 < 1
    tissue = 0.6 + 0.25 * np.cos(6 * np.sqrt(r2)) + 0.05 * rng.standard_normal((240, 240, 155))
    data = np.where(brain, tissue, 0.0)
    data[lesion & brain] *= 1.6
    return (data * scale).astype(np.float32)


def write_example(out: Path, source: Path | None = None) -> str:
    """Write the example under ``out``; returns "real" or "phantom"."""
    source = source or DEFAULT_SOURCE
    case_dir = source / EXAMPLE_CASE
    inputs, truth = out / "input" / EXAMPLE_CASE, out / "truth" / EXAMPLE_CASE
    for folder in (inputs, truth):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    if case_dir.is_dir():
        for path in sorted(case_dir.glob(f"{EXAMPLE_CASE}-*.nii.gz")):
            dest = truth if path.name.endswith(f"-{WITHHELD}.nii.gz") else inputs
            shutil.copyfile(path, dest / path.name)
        return "real"
    log.warning("no real case at %s: writing a synthetic phantom instead (not a brain)", case_dir)
    for i, m in enumerate(("t1n", "t1c", "t2w", "t2f")):
        image = nib.Nifti1Image(_phantom(i, 500.0 * (i + 1)), BRATS_AFFINE)
        image.header.set_qform(BRATS_AFFINE, code=1)
        image.header.set_sform(BRATS_AFFINE, code=1)
        nib.save(image, str((truth if m == WITHHELD else inputs) / f"{EXAMPLE_CASE}-{m}.nii.gz"))
    return "phantom"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m brasyn.example", description=__doc__.split("\n\n")[0])
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
