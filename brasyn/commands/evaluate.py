"""``python -m brasyn.evaluate``: score synthetic contrasts against the real ones, and prepare the inputs
for such a test (:mod:`brasyn.evaluate.score`).

    python -m brasyn.evaluate drop --input TRUTH --output DIR [--seed 7] [--protocol medperf|brasyn]
                                   [--record FILE]
    python -m brasyn.evaluate [score] --pred DIR --truth TRUTH [--seg DIR] [--dropped FILE] [--json FILE]
                                      [--csv FILE] [--device auto|cpu|cuda[:N]]
    python -m brasyn.evaluate segment (--completed DIR | --inputs TEST --pred PRED) --truth TRUTH
                                      (--segmenter CMD | --pred-seg DIR)

``drop`` writes the record of the dropped contrasts outside ``OUTPUT`` (default: ``<OUTPUT>_dropped.json``
beside it), where no container will see it; ``score --dropped FILE`` then counts a dropped contrast
without a prediction as a failed case. ``segment`` is :mod:`brasyn.commands.segment`.

Exit status: 0 when everything could be done, 1 when any case could not be dropped or evaluated (the
others still are; the log says which and why), 2 when the run cannot start, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brasyn.commands.command import HelpFormatter, Subcommands, parse_arguments, run_command
from brasyn.commands.converters import one_of, output_file, whole_number
from brasyn.commands.options import add_device_option, add_verbosity_option
from brasyn.commands.segment import main as segment_main
from brasyn.common.errors import ExitCode, UsageError
from brasyn.common.files import write_problem
from brasyn.evaluate.score import DEFAULT_DROP_SEED, PROTOCOLS, ScoreRequest, drop, is_inside, score

__all__ = ["main"]


def _score_parser() -> argparse.ArgumentParser:
    s = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m brasyn.evaluate",
        description="Score synthetic contrasts against the real images ('drop' makes a test set).",
        epilog="python -m brasyn.evaluate drop --input DIR --output DIR [--seed 7] [--record FILE]",
    )
    s.add_argument(
        "--pred",
        "--predictions",
        dest="predictions",
        type=Path,
        required=True,
        help="folder of synthetic images",
    )
    s.add_argument(
        "--truth",
        type=Path,
        required=True,
        help="the real images: a folder per case with any of its contrasts (+ <case>-seg.nii.gz), or one "
        "flat folder of <case>-<contrast>.nii.gz (+ <case>-seg.nii.gz)",
    )
    s.add_argument(
        "--seg",
        type=Path,
        help="folder of tumour segmentations (<case>-seg.nii.gz, or <case>/ holding a *seg* file)",
    )
    s.add_argument("--dropped", type=Path, help="record written by drop: a missing prediction then fails")
    s.add_argument(
        "--json", type=output_file, help="write the scores here as JSON (outside the predictions folder)"
    )
    s.add_argument(
        "--csv", type=output_file, help="write the per-case rows here as CSV (outside the predictions folder)"
    )
    add_device_option(s)
    add_verbosity_option(s)
    return s


def _drop_parser() -> argparse.ArgumentParser:
    d = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m brasyn.evaluate drop",
        description="Copy complete cases less one random contrast each, as the MedPerf preparation does.",
    )
    d.add_argument("--input", type=Path, required=True, help="folder of complete cases")
    d.add_argument("--output", type=Path, required=True, help="new folder for the three-contrast cases")
    d.add_argument(
        "--seed", type=whole_number(), default=DEFAULT_DROP_SEED, help="default 7, as the MedPerf cube"
    )
    d.add_argument(
        "--protocol",
        type=one_of(*PROTOCOLS),
        default="medperf",
        help="medperf: the MedPerf preparation cube's draw with --seed (default); brasyn: the organisers' "
        "pseudo-validation draw (numpy seed 123456, every other file of the case copied)",
    )
    d.add_argument(
        "--record", type=Path, help="JSON case -> dropped contrast (default: <OUTPUT>_dropped.json)"
    )
    add_verbosity_option(d)
    return d


def _drop_command(args: argparse.Namespace) -> ExitCode:
    if not args.input.is_dir():
        raise UsageError(f"the input folder {args.input} does not exist or is not a folder")
    if is_inside(args.output, args.input) or is_inside(args.input, args.output):
        raise UsageError(f"the output folder {args.output} and the input folder {args.input} must not nest")
    record = args.record or args.output.parent / f"{args.output.name}_dropped.json"
    if is_inside(record, args.output):
        raise UsageError(
            f"the record {record} lies inside the output folder, where the container would see the answer; "
            "put it elsewhere"
        )
    problem = write_problem(record)
    if problem is not None:
        raise UsageError(
            f"cannot write the record {record}: {problem}; give --record a file this user may write"
        )
    if args.output.exists() and (not args.output.is_dir() or any(args.output.iterdir())):
        raise UsageError(f"the output folder {args.output} is not empty; give a new or empty folder")
    args.output.mkdir(parents=True, exist_ok=True)
    return drop(args.input, args.output, args.seed, record, args.protocol)


def _drop_main(argv: list[str]) -> int:
    return run_command(lambda: _drop_command(parse_arguments(_drop_parser(), argv)))


def _score_main(argv: list[str]) -> int:
    def body() -> ExitCode:
        args = parse_arguments(_score_parser(), argv)
        request = ScoreRequest(
            predictions=args.predictions,
            truth=args.truth,
            seg=args.seg,
            dropped=args.dropped,
            json_report=args.json,
            csv_report=args.csv,
            device=args.device,
        )
        return score(request)

    return run_command(body)


main = Subcommands({"score": _score_main, "drop": _drop_main, "segment": segment_main}, default=_score_main)
"""``python -m brasyn.evaluate [score] ...``, ``... drop ...`` or ``... segment ...``; returns the exit
status."""
