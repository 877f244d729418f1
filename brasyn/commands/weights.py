"""``python -m brasyn.weights``: create, import, verify and list weights folders (:mod:`brasyn.weights`).

    python -m brasyn.weights init --config tiny --out DIR [--seed S] [--targets t1n t2f ...]
    python -m brasyn.weights import-official DIR --out DIR     (the official files, mapped by name)
    python -m brasyn.weights import-official [--target t2f] [--force] FILE --out DIR
    python -m brasyn.weights verify DIR
    python -m brasyn.weights list DIR

Each takes ``-v`` for the debug log. Exit status: 0 on success, 1 when ``verify`` finds a bad checkpoint,
2 on an error (one log line says which and what to do).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brasyn.commands.command import parse_arguments, run_command
from brasyn.commands.converters import contrast, whole_number
from brasyn.commands.options import add_verbosity_option
from brasyn.common.errors import BrasynError, ExitCode, UsageError
from brasyn.data.modalities import MODALITIES
from brasyn.model.unet import PRESETS
from brasyn.weights.official import import_official, import_official_folder
from brasyn.weights.store import WeightStore, init_random, verify_folder

__all__ = ["main"]

logger = logging.getLogger("brasyn.weights")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brasyn.weights", description="Create, import, verify and list brasyn weights folders."
    )
    add_verbosity_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    contrasts = [m.value for m in MODALITIES]

    init = commands.add_parser("init", help="write randomly initialised checkpoints (tests, smoke runs)")
    init.add_argument("--config", choices=list(PRESETS), default="tiny", help="denoiser size (default: tiny)")
    init.add_argument("--out", type=Path, required=True, help="weights folder to write into")
    init.add_argument("--seed", type=whole_number(), default=0)
    init.add_argument(
        "--targets",
        nargs="+",
        type=contrast,
        default=contrasts,
        metavar="TARGET",
        help="contrasts to write a checkpoint for: t1n, t1c, t2w, t2f or an alias (default: all four)",
    )

    imp = commands.add_parser(
        "import-official",
        help="add released cWDM checkpoints (plain state_dicts): a folder of them, or one file",
    )
    imp.add_argument(
        "--target",
        type=contrast,
        help="the contrast FILE synthesises (t1n, t1c, t2w, t2f or an alias); needed only when the file "
        "name is not an official one (t1_gen.pt->t1n, t1ce_gen.pt->t1c, t2_gen.pt->t2w, flair_gen.pt->t2f)",
    )
    imp.add_argument(
        "--force",
        action="store_true",
        help="import FILE for --target even when its official name says another contrast",
    )
    imp.add_argument(
        "file", type=Path, metavar="PATH", help="a checkpoint file, or a folder of official ones"
    )
    imp.add_argument("--out", type=Path, required=True, help="weights folder to add them to")

    verify = commands.add_parser("verify", help="check every checkpoint's sha256")
    verify.add_argument("folder", type=Path)

    listing = commands.add_parser("list", help="show the checkpoints of a weights folder")
    listing.add_argument("folder", type=Path)
    for sub in (init, imp, verify, listing):
        # SUPPRESS: a sub-command's default must not undo a -v given before the sub-command
        add_verbosity_option(sub, default=argparse.SUPPRESS)
    return parser


def _verify_folder(folder: Path) -> ExitCode:
    failures = 0
    for info, status in verify_folder(folder):
        failures += status != "OK"
        print(f"{info.target.value}  {info.file}  {info.sha256}  {status}")
    if failures:
        logger.error("%d checkpoint(s) in %s failed verification", failures, folder)
    return ExitCode.FAILED_CASES if failures else ExitCode.OK


def _list_folder(folder: Path) -> ExitCode:
    store = WeightStore(folder)
    for target in store.targets():
        info = store.info(target)
        c = info.config
        ratios = ", ".join(f"{m.value}={r:g}" for m, r in info.intensity_ratios.items())
        source = info.provenance.get("source", "unknown")
        print(
            f"{target.value}  {info.file}  {info.format}  channels={c.model_channels} "
            f"mult={','.join(map(str, c.channel_mult))} blocks={c.num_res_blocks}  "
            f"sha256={info.sha256[:12]}  ratios: {ratios}  source: {source}"
        )
    if not store.targets():
        logger.warning("%s: no checkpoints", folder)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """Command line; returns 0 on success, 1 when ``verify`` finds a bad checkpoint, 2 on an error."""

    def body() -> ExitCode:
        args = parse_arguments(_parser(), argv)
        if args.command == "init":
            for info in init_random(args.out, args.config, seed=args.seed, targets=args.targets):
                print(f"{info.target.value}  {args.out / info.file}  {info.sha256}")
            return ExitCode.OK
        if args.command == "import-official":
            if args.file.is_dir():
                if args.target is not None or args.force:
                    raise UsageError(
                        f"{args.file} is a folder: its files are mapped by name, so --target and --force "
                        "apply to one file only (import-official --target T FILE --out DIR)"
                    )
                infos = import_official_folder(args.file, args.out)
            else:
                infos = [import_official(args.file, args.target, args.out, force=args.force)]
            for info in infos:
                source = info.provenance["source_file"]
                print(f"{info.target.value}  {args.out / info.file}  {info.sha256}  (from {source})")
            return ExitCode.OK
        if args.command == "verify":
            return _verify_folder(args.folder)
        return _list_folder(args.folder)

    # a corrupt file or an unwritable folder is the user's to fix: one sentence, no traceback
    return run_command(body, usage_errors=(BrasynError, ValueError, OSError))
