"""The downstream score the challenge also ranks by (``python -m brasyn.evaluate segment``,
:mod:`brasyn.commands.segment`).

The cases completed with the synthetic contrast are segmented by a segmenter the user names (a command
template with ``{input}`` (the case folder), ``{output}`` (the label file to write) and ``{case}``: the
BraTS orchestrator's segmenters, ``nnUNetv2_predict``, a site's own), or segmentations made elsewhere are
given (``--pred-seg DIR``); each is scored against the truth segmentation with the field's own metric
package, ``brats-evaluation`` (panoptica under the hood; ``pip install 'brasyn[eval]'``), per region of the
cohort's label scheme (for gliomas: ET, TC, WT and the single labels): Dice and HD95 over the whole
region, and the lesion-wise counts and scores.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brasyn.common.errors import CaseError, ExitCode, UsageError
from brasyn.common.version import __version__
from brasyn.data.cases import Case, complete_cases, discover
from brasyn.evaluate.pairing import segmentation_in

__all__ = ["COHORTS", "HOW_TO_INSTALL", "SegmentRequest", "load_scorer", "segment_and_score"]

log = logging.getLogger("brasyn.evaluate")

COHORTS = ("gli", "mets", "ped", "MenRT", "MenPre", "GoAT")
"""The label schemes brats-evaluation ships a configuration for."""
HOW_TO_INSTALL = "pip install 'brasyn[eval]' (it brings brats-evaluation, the BraTS metric package)"
SHOWN = ("et", "tc", "wt")
"""The regions of the printed table (every region is in the JSON)."""
Scorer = Callable[[Path, Path, str], dict[str, Any]]


@dataclass(frozen=True)
class SegmentRequest:
    """The completed cases, the truth, where the labels come from and where the results go."""

    completed: Path
    """Folder of case folders holding all four contrasts."""
    truth: Path
    """The truth, with ``<case>-seg.nii.gz`` per case."""
    segmenter: str | None = None
    """Command template run per case, with ``{input}``, ``{output}`` and ``{case}``."""
    pred_seg: Path | None = None
    """Segmentations made elsewhere (``<case>*.nii.gz`` per case), instead of ``segmenter``."""
    cohort: str = "gli"
    """Label scheme of brats-evaluation."""
    timeout: float = 3600
    """Seconds per case for the segmenter."""
    keep: Path | None = None
    """Where the segmenter's outputs are kept (else a temporary folder)."""
    json_report: Path | None = None
    csv_report: Path | None = None


def load_scorer(cohort: str) -> Scorer:
    """brats-evaluation's scorer for ``cohort``; a UsageError saying how to install it when absent."""
    try:
        from brats_evaluation import config_path, evaluate_single_exam
        from panoptica import Panoptica_Evaluator
    except ImportError as exc:
        raise UsageError(
            f"scoring segmentations needs brats-evaluation, which is not installed: {HOW_TO_INSTALL}"
        ) from exc
    with contextlib.redirect_stdout(sys.stderr):  # panoptica greets on stdout, where our table goes
        evaluator = Panoptica_Evaluator.load_from_config(str(config_path(cohort)))

    def score(prediction: Path, reference: Path, case: str) -> dict[str, Any]:
        with contextlib.redirect_stdout(sys.stderr):
            return evaluate_single_exam(str(prediction), str(reference), case, evaluator)

    return score


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _regions(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per region: Dice and HD95 over the whole region, and the lesion-wise figures."""
    regions = {}
    for name, metrics in result.items():
        if not isinstance(metrics, dict):
            continue
        regions[name] = {
            "dice": _finite(metrics.get("global_bin_dsc")),
            "hd95": _finite(metrics.get("global_bin_hd95")),
            "lesions": {
                key: _finite(metrics.get(key))
                for key in (
                    "n_ref_instances",
                    "n_pred_instances",
                    "tp",
                    "fp",
                    "fn",
                    "sq_dsc",
                    "pq_dsc",
                    "sq_hd95",
                )
            },
        }
    return regions


def _run_segmenter(template: str, case: Case, output: Path, timeout: float) -> str | None:
    """Run the segmenter on one case; a sentence when it failed, None when it wrote ``output``."""
    argv = [t.format(input=case.folder, output=output, case=case.id) for t in shlex.split(template)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return f"the segmenter {argv[0]!r} was not found; check the command (--segmenter)"
    except subprocess.TimeoutExpired:
        return f"the segmenter took longer than {timeout:.0f} s (--timeout)"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return f"the segmenter exited with status {done.returncode}: {' / '.join(tail) or 'no output'}"
    if not output.is_file():
        return f"the segmenter exited 0 but wrote no {output.name}; its command must write to {{output}}"
    return None


def _given_segmentation(folder: Path, case: str) -> Path | None:
    hits = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.startswith(case) and p.name.endswith((".nii", ".nii.gz"))
    ]
    return hits[0] if len(hits) == 1 else None


def segment_and_score(request: SegmentRequest) -> ExitCode:
    """Segment (or take) each completed case's labels and score them against the truth."""
    for name, folder in (
        ("completed", request.completed),
        ("truth", request.truth),
        ("pred-seg", request.pred_seg),
    ):
        if folder is not None and not folder.is_dir():
            raise UsageError(f"--{name} {folder} does not exist or is not a folder")
    if (request.segmenter is None) == (request.pred_seg is None):
        raise UsageError("give either --segmenter 'COMMAND {input} {output}' or --pred-seg DIR")
    scorer = load_scorer(request.cohort)
    cases, rest = complete_cases(discover(request.completed), "segmentation")
    rows: list[dict[str, Any]] = [{"case": e.case, "status": "failed", "message": e.message} for e in rest]
    with tempfile.TemporaryDirectory(prefix="brasyn-segment-") as tmp:
        work = Path(request.keep) if request.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for case in cases:
            start = time.perf_counter()
            row: dict[str, Any] = {"case": case.id, "status": "failed", "message": ""}
            reference = segmentation_in(request.truth, case.id)
            if reference is None:
                row["message"] = f"no truth segmentation for {case.id} in {request.truth}"
            elif request.pred_seg is not None:
                prediction = _given_segmentation(request.pred_seg, case.id)
                row["message"] = "" if prediction else f"no single <case>*.nii.gz in {request.pred_seg}"
            else:
                prediction = work / f"{case.id}-seg.nii.gz"
                log.info("segmenting %s", case.id)
                row["message"] = _run_segmenter(request.segmenter, case, prediction, request.timeout) or ""
            if reference is not None and not row["message"]:
                try:
                    row["regions"] = _regions(scorer(prediction, reference, case.id))
                    row["status"], row["segmentation"] = "scored", str(prediction)
                except (CaseError, OSError, ValueError, RuntimeError) as exc:
                    row["message"] = f"cannot score {case.id}: {exc}"
            row["seconds"] = round(time.perf_counter() - start, 2)
            rows.append(row)
    return _report(rows, request)


def _report(rows: list[dict[str, Any]], request: SegmentRequest) -> ExitCode:
    rows.sort(key=lambda r: r["case"])
    scored = [r for r in rows if r["status"] == "scored"]
    summary: dict[str, Any] = {"scored": len(scored), "failed": len(rows) - len(scored)}
    for region in sorted({name for r in scored for name in r["regions"]}):
        for key in ("dice", "hd95"):
            values = [
                r["regions"][region][key] for r in scored if r["regions"].get(region, {}).get(key) is not None
            ]
            summary[f"{region}_{key}"] = sum(values) / len(values) if values else None
    lines = ["case  status  " + "  ".join(f"{r}_dice  {r}_hd95" for r in SHOWN)]
    for r in rows:
        cells = [
            f"{r['regions'][region][key]:.4f}"
            if r.get("regions", {}).get(region, {}).get(key) is not None
            else "-"
            for region in SHOWN
            for key in ("dice", "hd95")
        ]
        lines.append(
            f"{r['case']}  {r['status']}  " + "  ".join(cells) + (f"  {r['message']}" if r["message"] else "")
        )
    print("\n".join(lines))
    for r in rows:
        if r["status"] == "failed":
            log.error("[failed] %s: %s", r["case"], r["message"])
    if request.json_report is not None:
        report = {
            "brasyn_version": __version__,
            "completed": str(request.completed),
            "truth": str(request.truth),
            "cohort": request.cohort,
            "metric": "brats-evaluation (panoptica): per region Dice and HD95 of the whole region, "
            "lesion-wise counts and scores",
            "summary": summary,
            "cases": rows,
        }
        request.json_report.parent.mkdir(parents=True, exist_ok=True)
        request.json_report.write_text(json.dumps(report, indent=2) + "\n")
    if request.csv_report is not None:
        with open(request.csv_report, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", "status", *(f"{r}_{k}" for r in SHOWN for k in ("dice", "hd95"))])
            for r in rows:
                writer.writerow(
                    [
                        r["case"],
                        r["status"],
                        *(r.get("regions", {}).get(g, {}).get(k) for g in SHOWN for k in ("dice", "hd95")),
                    ]
                )
    return ExitCode.FAILED_CASES if summary["failed"] else ExitCode.OK
