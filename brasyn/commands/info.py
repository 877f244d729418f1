"""``brasyn info PATH``: what brasyn knows of a file it wrote or reads.

    brasyn info OUT/case-t2f.nii.gz     the settings the output was written with (its settings record)
    brasyn info WEIGHTS/                one line per checkpoint of a weights folder (as weights list)
    brasyn info WEIGHTS/flair_gen.pt    a checkpoint's facts: contrast, size, sha256, architecture

Exit status: 0 when the facts were printed, 1 when the file holds none (an image without a settings
record, a file that is no checkpoint), 2 when the path does not exist.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from brasyn.commands.command import parse_arguments, run_command
from brasyn.commands.options import add_verbosity_option
from brasyn.commands.weights import list_weights
from brasyn.common.errors import ExitCode, UsageError, WeightsError
from brasyn.common.files import sha256_file
from brasyn.data.modalities import split_image_extension
from brasyn.data.provenance import read_record, short_description
from brasyn.weights.manifest import MANIFEST_NAME, not_a_checkpoint
from brasyn.weights.official import check_official, official_target
from brasyn.weights.store import WeightStore

__all__ = ["build_parser", "main"]

logger = logging.getLogger("brasyn.info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brasyn info",
        description="Print what brasyn knows of a path: an output's recorded settings, a weights folder's "
        "checkpoints, or a checkpoint's facts.",
    )
    parser.add_argument("path", type=Path, help="an output image, a weights folder or a checkpoint file")
    add_verbosity_option(parser)
    return parser


def _output_info(path: Path) -> ExitCode:
    record = read_record(path)
    if record is None:
        logger.error(
            "%s records no brasyn settings (written by another tool, or by a brasyn that did not record "
            "them)",
            path,
        )
        return ExitCode.FAILED_CASES
    print(f"{path}: {short_description(record)}")
    print(json.dumps(record, indent=2, sort_keys=True))
    return ExitCode.OK


def _checkpoint_info(path: Path) -> ExitCode:
    folder = path.resolve().parent
    if (folder / MANIFEST_NAME).is_file():
        store = WeightStore(folder)
        for target in store.targets():
            if store.info(target).file == path.name:
                print(f"{path}: listed in {folder / MANIFEST_NAME}")
                return list_weights(folder)
    what = not_a_checkpoint(path)
    if what is not None:
        logger.error("%s %s", path, what)
        return ExitCode.FAILED_CASES
    try:
        config = check_official(path)
    except WeightsError as exc:
        logger.error("%s", exc)
        return ExitCode.FAILED_CASES
    target = official_target(path.name)
    print(
        f"{path}: plain state_dict (official cWDM format), {path.stat().st_size} bytes, "
        f"sha256 {sha256_file(path)}, contrast {target.value if target else 'not told by its name'}, "
        f"channels={config.model_channels} mult={','.join(map(str, config.channel_mult))} "
        f"blocks={config.num_res_blocks}"
    )
    return ExitCode.OK


def info(path: Path) -> ExitCode:
    """Print the facts of ``path`` (see the module text); the exit status."""
    if not path.exists():
        raise UsageError(f"{path} does not exist; give an output image, a weights folder or a checkpoint")
    if path.is_dir():
        return list_weights(path)
    if split_image_extension(path.name) is not None:
        return _output_info(path)
    return _checkpoint_info(path)


def main(argv: list[str]) -> int:
    """``brasyn info PATH``; returns the exit status."""
    return run_command(lambda: info(parse_arguments(build_parser(), argv).path))
