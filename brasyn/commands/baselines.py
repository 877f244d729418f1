"""``python -m brasyn.baselines fit``: fit the linear and nearest-contrast baselines on complete cases and
write ``baselines.json`` into a weights folder (:mod:`brasyn.inference.baselines`).

    python -m brasyn.baselines fit --data DIR [--data DIR ...] --out WEIGHTS [--map CONTRAST=PATTERN] [-v]

Exit status: 0 on success, 2 when nothing could be fitted or written.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from brasyn.commands.command import HelpFormatter, HelpParser, parse_arguments, run_command
from brasyn.commands.options import add_map_option, add_verbosity_option, contrast_mapping
from brasyn.common.errors import BrasynError, CaseError, ExitCode
from brasyn.common.version import __version__
from brasyn.data.cases import complete_cases, discover
from brasyn.data.contrast_map import ContrastMap
from brasyn.data.modalities import MODALITIES, Modality
from brasyn.data.volumes import Volume, load_volume
from brasyn.inference.baselines import BASELINES_NAME, fit_baselines

__all__ = ["main"]

log = logging.getLogger("brasyn.baselines")


def _complete_cases(
    folders: Iterable[Path], mapping: ContrastMap | None = None
) -> Iterator[tuple[str, dict[Modality, Volume]]]:
    """Every complete case under ``folders`` (files named as ``--map`` says where it is given), loaded;
    others are skipped with a log line."""
    for folder in folders:
        found, rest = complete_cases(discover(folder, mapping=mapping), "fitting")
        for error in rest:
            log.warning("skipped %s: %s", error.case, error.message)
        for case in found:
            try:
                yield case.id, {m: load_volume(case.files[m], case.id) for m in MODALITIES}
            except CaseError as e:
                log.warning("skipped %s: %s", e.case, e.message)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m brasyn.baselines",
        description="Fit the linear and nearest-contrast baselines.",
    )
    add_verbosity_option(parser)
    commands = parser.add_subparsers(parser_class=HelpParser, dest="command", required=True)
    fit = commands.add_parser("fit", help=f"fit on complete cases and write {BASELINES_NAME}")
    fit.add_argument(
        "--data", type=Path, action="append", required=True, help="folder of complete cases (repeatable)"
    )
    fit.add_argument("--out", type=Path, required=True, help=f"weights folder to write {BASELINES_NAME} into")
    add_map_option(fit)
    # SUPPRESS: the sub-command's default must not undo a -v given before "fit"
    add_verbosity_option(fit, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line; 0 on success, 2 when nothing could be fitted or written."""

    def body() -> ExitCode:
        args = parse_arguments(_parser(), argv)
        provenance = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "brasyn_version": __version__,
            "command": "fit",
            "data": [str(d) for d in args.data],
        }
        baselines = fit_baselines(_complete_cases(args.data, contrast_mapping(args)), provenance)
        path = baselines.save(args.out)
        print(f"{path}  ({len(baselines.training_cases)} cases)")
        for target, fit in baselines.linear.items():
            terms = " + ".join(f"{w:.3f}*{c.value}" for c, w in fit.weights.items())
            print(f"{target.value} = {fit.bias:.3f} + {terms}")
        return ExitCode.OK

    # no complete case, an unreadable folder or an unwritable weights folder: one sentence, exit 2
    return run_command(body, usage_errors=(BrasynError, ValueError, OSError))
