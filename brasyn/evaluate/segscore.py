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
import io
import json
import logging
import math
import shlex
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brasyn.common.errors import CaseError, ExitCode, UsageError
from brasyn.common.version import __version__
from brasyn.data.cases import Case, complete_cases, discover
from brasyn.evaluate.completed import build_completed
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

    completed: Path | None
    """Folder of case folders holding all four contrasts; None to build them from ``inputs`` and
    ``predictions``."""
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
    inputs: Path | None = None
    """The test folder (as ``drop`` writes it: three contrasts per case), instead of ``completed``."""
    predictions: Path | None = None
    """The synthetic contrasts made for ``inputs``."""


@contextlib.contextmanager
def _to_debug_log() -> Iterator[None]:
    """What the metric package prints (panoptica's banner, its notice that the label groups share labels)
    and the warnings it raises, sent to the debug log: the user's stdout holds the table, stderr the run's
    own messages."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            warnings.simplefilter("always")
            yield
    finally:
        for line in (out.getvalue() + err.getvalue()).splitlines():
            if line.strip():
                log.debug("brats-evaluation: %s", line.rstrip())
        for warning in caught:
            log.debug("brats-evaluation warning: %s", warning.message)


def load_scorer(cohort: str) -> Scorer:
    """brats-evaluation's scorer for ``cohort``; a UsageError saying how to install it when absent."""
    try:
        with _to_debug_log():  # panoptica greets on import
            from brats_evaluation import config_path, evaluate_single_exam
            from panoptica import Panoptica_Evaluator
    except ImportError as exc:
        raise UsageError(
            f"scoring segmentations needs brats-evaluation, which is not installed: {HOW_TO_INSTALL}"
        ) from exc
    with _to_debug_log():
        evaluator = Panoptica_Evaluator.load_from_config(str(config_path(cohort)))

    def score(prediction: Path, reference: Path, case: str) -> dict[str, Any]:
        with _to_debug_log():
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
    built = request.inputs is not None or request.predictions is not None
    if built == (request.completed is not None):
        raise UsageError(
            "give either --completed DIR (case folders holding all four contrasts) or --inputs TEST "
            "--pred PRED (the test folder and the synthetic contrasts made for it)"
        )
    if built and (request.inputs is None or request.predictions is None):
        raise UsageError("--inputs TEST and --pred PRED go together: give both")
    if (request.segmenter is None) == (request.pred_seg is None):
        raise UsageError("give either --segmenter 'COMMAND {input} {output}' or --pred-seg DIR")
    scorer = load_scorer(request.cohort)
    with tempfile.TemporaryDirectory(prefix="brasyn-segment-") as tmp:
        rows: list[dict[str, Any]] = []
        completed = request.completed
        if completed is None:
            assert request.inputs is not None and request.predictions is not None
            completed = Path(tmp) / "completed"
            _, unbuilt = build_completed(request.inputs, request.predictions, completed)
            rows += [{"case": e.case, "status": "failed", "message": e.message} for e in unbuilt]
        cases, rest = complete_cases(discover(completed), "segmentation") if completed.exists() else ([], [])
        rows += [{"case": e.case, "status": "failed", "message": e.message} for e in rest]
        work = Path(request.keep) if request.keep else Path(tmp) / "labels"
        work.mkdir(parents=True, exist_ok=True)
        for case in cases:
            rows.append(_segment_case(request, scorer, case, work))
    return _report(rows, request)


def _segment_case(request: SegmentRequest, scorer: Scorer, case: Case, work: Path) -> dict[str, Any]:
    """One case's row: its labels made (or taken) and scored, or why not."""
    start = time.perf_counter()
    row: dict[str, Any] = {"case": case.id, "status": "failed", "message": ""}
    reference = segmentation_in(request.truth, case.id)
    if reference is None:
        row["message"] = f"no truth segmentation for {case.id} in {request.truth}"
    elif request.pred_seg is not None:
        prediction = _given_segmentation(request.pred_seg, case.id)
        row["message"] = "" if prediction else f"no single <case>*.nii.gz in {request.pred_seg}"
    else:
        assert request.segmenter is not None
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
    return row


def _table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The printed table: a row per case and the mean of the scored ones, every column as wide as its
    widest cell (numbers right-aligned), a failed case's reason after its row."""
    keys = [(region, key) for region in SHOWN for key in ("dice", "hd95")]

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    body = [
        [r["case"], r["status"], *(cell(r.get("regions", {}).get(g, {}).get(k)) for g, k in keys)]
        for r in rows
    ]
    mean = ["mean", f"{summary['scored']} scored", *(cell(summary.get(f"{g}_{k}")) for g, k in keys)]
    header = ["case", "status", *(f"{g}_{k}" for g, k in keys)]
    table = [header, *body, mean]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for line, row in zip(table, [None, *rows, None], strict=True):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        text = "  ".join(cells)
        lines.append(f"{text}  {row['message']}" if row is not None and row["message"] else text)
    return "\n".join(lines)


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
    print(_table(rows, summary))
    for r in rows:
        if r["status"] == "failed":
            log.error("[failed] %s: %s", r["case"], r["message"])
    if request.json_report is not None:
        report = {
            "brasyn_version": __version__,
            "completed": None if request.completed is None else str(request.completed),
            "inputs": None if request.inputs is None else str(request.inputs),
            "predictions": None if request.predictions is None else str(request.predictions),
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
