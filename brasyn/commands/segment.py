"""``python -m brasyn.evaluate segment``: segment the cases completed with the synthetic contrast and score
the labels with the BraTS metric package (:mod:`brasyn.evaluate.segscore`).

    python -m brasyn.evaluate segment (--completed DIR | --inputs TEST --pred PRED) --truth TRUTH
        (--segmenter CMD | --pred-seg DIR)
        [--cohort gli] [--timeout S] [--keep DIR] [--json FILE] [--csv FILE] [-v | -q]

Exit status: 0 when every case was scored, 1 when any failed (the others still are), 2 when the run cannot
start (a missing folder, no metric package), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from brasyn.commands.command import HelpFormatter, parse_arguments, run_command
from brasyn.commands.converters import one_of, whole_number
from brasyn.commands.options import add_verbosity_option
from brasyn.evaluate.segscore import COHORTS, SegmentRequest, segment_and_score

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="python -m brasyn.evaluate segment",
        description="Segment the cases completed with the synthetic contrast and score the labels.",
    )
    p.add_argument("--completed", type=Path, help="folder of case folders holding all four contrasts")
    p.add_argument(
        "--inputs",
        type=Path,
        help="instead of --completed: the test folder (three contrasts per case, as drop writes it); each "
        "case is completed with its synthetic contrast from --pred",
    )
    p.add_argument(
        "--pred",
        "--predictions",
        dest="predictions",
        type=Path,
        help="with --inputs: the folder the synthetic contrasts were written to",
    )
    p.add_argument("--truth", type=Path, required=True, help="the truth, with <case>-seg.nii.gz per case")
    p.add_argument(
        "--segmenter",
        help="command run per case, with {input} (the case folder), {output} (the label file to write) and "
        "{case}, e.g. 'nnUNetv2_predict ... -i {input} -o {output}'",
    )
    p.add_argument("--pred-seg", type=Path, help="segmentations made elsewhere: <case>*.nii.gz per case")
    p.add_argument("--cohort", type=one_of(*COHORTS), default="gli", help="label scheme (default gli)")
    p.add_argument("--timeout", type=whole_number(1), default=3600, help="seconds per case for the segmenter")
    p.add_argument("--keep", type=Path, help="keep the segmenter's outputs in this folder")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--csv", type=Path, help="write the table here")
    add_verbosity_option(p)
    return p


def main(argv: list[str]) -> int:
    """The ``segment`` command of ``python -m brasyn.evaluate``; returns the exit status."""

    def body() -> int:
        args = parse_arguments(build_parser(), argv)
        request = SegmentRequest(
            completed=args.completed,
            truth=args.truth,
            segmenter=args.segmenter,
            pred_seg=args.pred_seg,
            cohort=args.cohort,
            timeout=args.timeout,
            keep=args.keep,
            json_report=args.json,
            csv_report=args.csv,
            inputs=args.inputs,
            predictions=args.predictions,
        )
        return segment_and_score(request)

    return run_command(body)
