"""``python -m brasyn.weights``: create, import, verify and list weights folders (:mod:`brasyn.weights`).

    python -m brasyn.weights init --config tiny --out DIR [--seed S] [--targets t1n t2f ...] [--overwrite]
    python -m brasyn.weights import-official DIR --out DIR     (the official files, mapped by name)
    python -m brasyn.weights import-official [--target t2f] [--force] FILE --out DIR
    python -m brasyn.weights fetch-official --out DIR [--revision REV] [--endpoint URL]
    python -m brasyn.weights verify DIR
    python -m brasyn.weights list DIR

Each takes ``-v`` for the debug log. Exit status: 0 on success, 1 when ``verify`` finds a checkpoint it
cannot vouch for (changed, missing, unsafe, or recorded nowhere), 2 on an error (one log line says which and
what to do).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from brasyn.commands.command import HelpFormatter, HelpParser, parse_arguments, run_command
from brasyn.commands.converters import contrast, whole_number
from brasyn.commands.options import add_verbosity_option
from brasyn.common.errors import BrasynError, ExitCode, UsageError
from brasyn.data.modalities import MODALITIES
from brasyn.model.unet import PRESETS
from brasyn.weights.fetch import fetch_official
from brasyn.weights.official import import_official, import_official_folder
from brasyn.weights.release import RELEASE_REPO, default_revision, is_official_architecture, release_check
from brasyn.weights.store import WeightStore, init_random, verify_folder

__all__ = ["list_weights", "main"]

logger = logging.getLogger("brasyn.weights")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m brasyn.weights",
        description="Create, import, verify and list brasyn weights folders.",
    )
    add_verbosity_option(parser)
    commands = parser.add_subparsers(parser_class=HelpParser, dest="command", required=True)
    contrasts = [m.value for m in MODALITIES]

    init = commands.add_parser("init", help="write randomly initialised checkpoints (tests, smoke runs)")
    init.add_argument("--config", choices=list(PRESETS), default="tiny", help="denoiser size (default: tiny)")
    init.add_argument("--out", type=Path, required=True, help="weights folder to write into")
    init.add_argument("--seed", type=whole_number(), default=0)
    init.add_argument(
        "--overwrite",
        action="store_true",
        help="replace checkpoints the folder already holds for these targets (refused without it)",
    )
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

    fetch = commands.add_parser(
        "fetch-official",
        help=f"download the four released cWDM checkpoints from the Hub ({RELEASE_REPO}) into a weights "
        "folder, checked and recorded in its manifest",
    )
    fetch.add_argument("--out", type=Path, required=True, help="weights folder to download into")
    fetch.add_argument(
        "--revision",
        help=f"branch, tag or commit of {RELEASE_REPO} (default: {default_revision()}); the commit it "
        "resolves to is recorded and printed",
    )
    fetch.add_argument(
        "--endpoint",
        help="Hub or mirror URL (default: $HF_ENDPOINT, else https://huggingface.co)",
    )

    verify = commands.add_parser(
        "verify", help="check every checkpoint's sha256 and say whether it is the released file"
    )
    verify.add_argument("folder", type=Path)

    listing = commands.add_parser("list", help="show the checkpoints of a weights folder")
    listing.add_argument("folder", type=Path)
    for sub in (init, imp, fetch, verify, listing):
        # SUPPRESS: a sub-command's default must not undo a -v given before the sub-command
        add_verbosity_option(sub, default=argparse.SUPPRESS)
    return parser


def _verify_folder(folder: Path) -> ExitCode:
    failures = 0
    for info, status in verify_folder(folder):
        failures += status != "OK"
        release = release_check(info)
        shown = f"  {release}" if release is not None and status == "OK" else ""
        print(f"{info.target.value}  {info.file}  {info.sha256}  {status}{shown}")
    if failures:
        logger.error("%d checkpoint(s) in %s could not be verified", failures, folder)
    return ExitCode.FAILED_CASES if failures else ExitCode.OK


def list_weights(folder: Path) -> ExitCode:
    """One line per checkpoint of the weights folder ``folder`` (``list``, and ``brasyn info FOLDER``)."""
    store = WeightStore(folder)
    for target in store.targets():
        info = store.info(target)
        c = info.config
        ratios = ", ".join(f"{m.value}={r:g}" for m, r in info.intensity_ratios.items())
        source = info.provenance.get("source", "unknown")
        release = release_check(info)
        architecture = "official" if is_official_architecture(c) else "other"
        print(
            f"{target.value}  {info.file}  {info.format}  architecture={architecture} "
            f"channels={c.model_channels} mult={','.join(map(str, c.channel_mult))} "
            f"blocks={c.num_res_blocks}  sha256={info.sha256[:12]}  ratios: {ratios}  source: {source}"
            + (f"  {release.state.value}" if release is not None else "")
        )
    if not store.targets():
        logger.warning("%s: no checkpoints", folder)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """Command line; returns 0 on success, 1 when ``verify`` finds a bad checkpoint, 2 on an error."""

    def body() -> ExitCode:
        args = parse_arguments(_parser(), argv)
        if args.command == "init":
            for info in init_random(
                args.out, args.config, seed=args.seed, targets=args.targets, overwrite=args.overwrite
            ):
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
                proof = release_check(info)
                print(f"{info.target.value}  {args.out / info.file}  {info.sha256}  (from {source}; {proof})")
            return ExitCode.OK
        if args.command == "fetch-official":
            for info in fetch_official(args.out, revision=args.revision, endpoint=args.endpoint):
                origin = f"{RELEASE_REPO} {info.provenance['source_file']} at {info.provenance['revision']}"
                proof = release_check(info)
                print(f"{info.target.value}  {args.out / info.file}  {info.sha256}  ({origin}; {proof})")
            return ExitCode.OK
        if args.command == "verify":
            return _verify_folder(args.folder)
        return list_weights(args.folder)

    # a corrupt file or an unwritable folder is the user's to fix: one sentence, no traceback
    return run_command(body, usage_errors=(BrasynError, ValueError, OSError))
