"""Scoring synthetic contrasts against the real ones, and preparing the inputs for such a test.

:func:`drop` makes a test set the way the MedPerf preparation cube of the challenge does:
``random.seed(seed)`` once, then for every case folder in sorted order
``random.choice(["t1c", "t1n", "t2f", "t2w"])`` is the contrast left out; the other three files are copied
into ``OUTPUT/<case>/`` under their own names, and the mapping case -> dropped contrast is written as JSON
outside ``OUTPUT``, where no container will see it.

:func:`score` pairs every prediction (flat files such as ``BraTS-GLI-00001-000-t2f.nii.gz``,
``TCGA-DU-7294_fla_bet.nii.gz`` or ``preprocessed_case-t1n.nii.gz``, or ``<case>/<file>`` sub-folders) with
the truth case and contrast it names, whatever naming scheme the truth folder uses, and computes the
challenge's scores (:mod:`brasyn.evaluate.metrics`): SSIM, MSE and PSNR on percentile-normalised images, and
SSIM inside / outside the tumour where the truth case holds a segmentation (``*seg*.nii.gz``). With a
dropped-contrast record, a dropped contrast without a prediction counts as a failed case.

The command line is :mod:`brasyn.commands.evaluate`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from brasyn.common.errors import BrasynError, CaseError, ExitCode, UsageError
from brasyn.common.files import CHUNK, atomic_write
from brasyn.common.runtime import select_device
from brasyn.common.version import __version__
from brasyn.data.cases import Case, complete_cases, discover
from brasyn.data.modalities import (
    MODALITIES,
    Modality,
)
from brasyn.data.volumes import Volume, grid_difference, load_volume, temporary_prefix
from brasyn.evaluate.metrics import PROTOCOL
from brasyn.evaluate.metrics import score as score_volumes
from brasyn.evaluate.pairing import Pair, pair_predictions, segmentation_in

__all__ = [
    "DROP_CHOICES",
    "DEFAULT_DROP_SEED",
    "PROTOCOLS",
    "Row",
    "ScoreRequest",
    "drop",
    "drop_choices",
    "is_inside",
    "score",
    "score_pair",
]

log = logging.getLogger("brasyn.evaluate")

DROP_CHOICES = ("t1c", "t1n", "t2f", "t2w")
"""The list the MedPerf preparation cube draws from, in its order (the order matters for the draw)."""
DEFAULT_DROP_SEED = 7
"""The MedPerf preparation cube's seed."""


# --- drop ------------------------------------------------------------------------------------------


BRASYN_PROTOCOL_SEED = 123456
"""The organisers' pseudo-validation drop (BraSyn tutorial): ``numpy.random.seed(123456)``, then one
``numpy.random.randint(0, 4, size=number_of_cases)`` over the case folders sorted by name, each value an
index into :data:`DROP_CHOICES`."""
PROTOCOLS = ("medperf", "brasyn")


def brasyn_drop_choices(case_ids: Iterable[str]) -> dict[str, Modality]:
    """The contrast the organisers' pseudo-validation protocol leaves out of each case (sorted by name),
    with numpy's legacy generator as they seed it (the global one is left alone)."""
    ordered = sorted(case_ids)
    draws = np.random.RandomState(BRASYN_PROTOCOL_SEED).randint(0, len(DROP_CHOICES), size=len(ordered))
    return {case_id: Modality(DROP_CHOICES[int(i)]) for case_id, i in zip(ordered, draws, strict=True)}


def drop_choices(case_ids: Iterable[str], seed: int = DEFAULT_DROP_SEED) -> dict[str, Modality]:
    """The contrast left out of each case: one ``choice`` per case, in the given order, from a generator
    seeded once (the same draws as ``random.seed(seed)`` and ``random.choice``, without touching the
    global generator)."""
    rng = random.Random(seed)
    return {case_id: Modality(rng.choice(DROP_CHOICES)) for case_id in case_ids}


def _copy(source: Path, target: Path, output: Path, case_id: str) -> None:
    """One file of a case into the case's staging folder; a CaseError says which side failed."""
    try:
        with open(source, "rb") as reader, open(target, "wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK)
    except OSError as exc:
        if exc.filename == str(source):
            message = f"cannot read {source}: {exc.strerror or exc}; make it readable"
        else:
            problem = exc.strerror or exc
            message = f"cannot write {source.name} into {output}: {problem}; free space or fix the storage"
        raise CaseError(case_id, f"{message}, then drop again into a new folder", [source]) from exc


def _copy_case(case_id: str, files: list[Path], output: Path) -> None:
    """The files of one case into ``output/<case>/``, all or none: copied into a staging folder of this
    run's, renamed into place when complete, removed when not."""
    staging = Path(tempfile.mkdtemp(prefix=temporary_prefix(), dir=output))
    try:
        for path in files:
            _copy(path, staging / path.name, output, case_id)
        staging.rename(output / case_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def drop(input_root: Path, output: Path, seed: int, record: Path, protocol: str = "medperf") -> ExitCode:
    """Copy every complete case of ``input_root`` into ``output`` less one random contrast: the MedPerf
    preparation's draw (``seed``), or with ``protocol="brasyn"`` the organisers' pseudo-validation draw,
    which also copies every other file of the case (its segmentation included). A case that cannot be
    copied (a file unreadable, the disk full) fails alone and leaves nothing in ``output``."""
    found = discover(input_root)
    ids = [item.id if isinstance(item, Case) else item.case for item in found]
    choices = brasyn_drop_choices(ids) if protocol == "brasyn" else drop_choices(ids, seed)
    complete, rest = complete_cases(found, "drop")
    for error in rest:
        log.error("[failed] %s: %s", error.case, error.message)
    dropped: dict[str, str] = {}
    for item in complete:
        left_out = choices[item.id]
        # a case among others in a flat folder owns the files named after it, not the whole folder
        own = item.folder.name == item.id
        kept = (
            [
                p
                for p in sorted(item.folder.iterdir())
                if p.is_file()
                and p != item.files[left_out]
                and (own or (p.name[: len(item.id) + 1] in {item.id + c for c in "-_."}))
            ]
            if protocol == "brasyn"
            else [path for modality, path in item.files.items() if modality is not left_out]
        )
        try:
            _copy_case(item.id, kept, output)
        except CaseError as error:
            log.error("[failed] %s: %s", error.case, error.message)
            rest.append(error)
            continue
        dropped[item.id] = left_out.value
        log.info("%s: dropped %s (%s)", item.id, left_out.value, item.files[left_out].name)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(record, lambda handle: handle.write((json.dumps(dropped, indent=2) + "\n").encode()))
    except OSError as exc:
        raise BrasynError(
            f"cannot write the record {record}: {exc.strerror or exc}; free space or fix the storage, then "
            "drop again into a new folder"
        ) from exc
    log.info(
        "%d case(s) written to %s, %d failed; dropped contrasts in %s",
        len(dropped),
        output,
        len(rest),
        record,
    )
    return ExitCode.FAILED_CASES if rest else ExitCode.OK


# --- scoring one pair ------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the evaluation report."""

    case: str
    target: str | None
    status: str
    """"scored" or "failed"."""
    prediction: str | None = None
    truth: str | None = None
    segmentation: str | None = None
    ssim: float | None = None
    ssim_tumor: float | None = None
    ssim_non_tumor: float | None = None
    mse: float | None = None
    psnr: float | None = None
    ssim_brain: float | None = None
    mse_brain: float | None = None
    psnr_brain: float | None = None
    seconds: float = 0.0
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()
        }


def _check_grid(prediction: Volume, truth: Volume, case: str) -> None:
    difference = grid_difference(prediction, truth)
    if difference:
        raise CaseError(
            case,
            f"{difference}; a prediction must be written on the grid of its case",
            [prediction.path, truth.path],
        )


def _tumour_mask(path: Path, shape: tuple[int, ...], case: str) -> np.ndarray | None:
    try:
        mask = np.asanyarray(nib.load(str(path)).dataobj) > 0
    except Exception as e:
        log.warning("%s: the segmentation %s cannot be read (%s); no tumour scores", case, path.name, e)
        return None
    if mask.shape != shape:
        log.warning(
            "%s: the segmentation %s has shape %s, not %s; no tumour scores",
            case,
            path.name,
            mask.shape,
            shape,
        )
        return None
    return mask


def score_pair(pair: Pair, device: torch.device | str = "cpu") -> Row:
    """Load, check and score one pair; a problem of the files becomes a failed row, never an exception."""
    start = time.perf_counter()
    row = Row(pair.case, pair.contrast.value, "failed", str(pair.prediction), str(pair.truth))
    try:
        truth = load_volume(pair.truth, pair.case)
        prediction = load_volume(pair.prediction, pair.case)
        _check_grid(prediction, truth, pair.case)
    except CaseError as e:
        row.message = e.message
        return row
    mask = None
    if pair.segmentation is not None:
        mask = _tumour_mask(pair.segmentation, truth.shape, pair.case)
        row.segmentation = str(pair.segmentation) if mask is not None else None
    try:
        scores = score_volumes(prediction.data, truth.data, mask, device)
    except (ValueError, RuntimeError) as e:
        row.message = f"{pair.prediction.name} cannot be scored: {e}"
        return row
    for key, value in scores.items():
        setattr(row, key, value)
    row.status = "scored"
    row.seconds = round(time.perf_counter() - start, 3)
    return row


# --- score: the command ----------------------------------------------------------------------------


def _read_dropped(path: Path) -> dict[str, Modality]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("it must map case ids to contrasts")
        return {str(case): Modality(contrast) for case, contrast in data.items()}
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot use the dropped-contrast record {path}: {e}") from e


SCORE_KEYS = ("ssim", "psnr", "mse", "ssim_tumor", "ssim_non_tumor", "ssim_brain", "psnr_brain", "mse_brain")


def _summary(rows: list[Row]) -> dict[str, Any]:
    scored = [r for r in rows if r.status == "scored"]
    summary: dict[str, Any] = {"scored": len(scored), "failed": len(rows) - len(scored)}
    groups = {"all": scored, **{m.value: [r for r in scored if r.target == m.value] for m in MODALITIES}}
    for name, group in groups.items():
        if not group:
            continue
        entry: dict[str, Any] = {"n": len(group)}
        for key in SCORE_KEYS:
            values = [getattr(r, key) for r in group if getattr(r, key) is not None]
            values = [v for v in values if math.isfinite(v)]
            if values:
                entry[key] = float(np.mean(values))
        summary[name] = entry
    return summary


def _format(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _table(rows: list[Row], summary: dict[str, Any]) -> str:
    lines = [("case", "target", "ssim", "tumor", "non-tumor", "brain", "psnr", "status")]
    for r in rows:
        values = (r.ssim, r.ssim_tumor, r.ssim_non_tumor, r.ssim_brain)
        lines.append((r.case, r.target or "-", *map(_format, values), _format(r.psnr, 2), r.status))
    for name in ("all", *(m.value for m in MODALITIES)):
        if name in summary:
            s = summary[name]
            values = (s.get("ssim"), s.get("ssim_tumor"), s.get("ssim_non_tumor"), s.get("ssim_brain"))
            lines.append((f"mean (n={s['n']})", name, *map(_format, values), _format(s.get("psnr"), 2), ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def is_inside(path: Path, folder: Path) -> bool:
    """``path`` is ``folder`` or lies under it, links resolved: where a report or a record would be seen
    by whoever reads the folder."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _write_report(path: Path, text: str) -> None:
    """A report, whole or not at all (its folder checked at start-up; the disk may still fill)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
    except OSError as exc:
        raise BrasynError(
            f"cannot write the report {path}: {exc.strerror or exc}; the table printed above holds the "
            "scores: free space or choose another place and score again"
        ) from exc


def _score_device(spec: str) -> torch.device:
    if spec.strip().lower() == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")  # SSIM is cheap on the CPU: no warning needed
    try:
        return select_device(spec)
    except ValueError as e:
        raise UsageError(str(e)) from e


def _scoring_bar(total: int) -> tqdm:
    """A bar over the predictions on a terminal (none in a log file, or for a single one), naming the case
    being scored so the wait for its SSIM is not silent."""
    return tqdm(total=total, desc="scoring", unit="case", disable=None if total > 1 else True, leave=False)


@dataclass(frozen=True)
class ScoreRequest:
    """What to score and where the results go."""

    predictions: Path
    """Folder of synthetic images."""
    truth: Path
    """The real images: a folder per case, or one flat folder of ``<case>-<contrast>.nii.gz``."""
    seg: Path | None = None
    """Folder of tumour segmentations, asked before those beside the truth."""
    dropped: Path | None = None
    """Record written by :func:`drop`: a dropped contrast without a prediction then fails."""
    json_report: Path | None = None
    """Where the scores go as JSON (outside the predictions folder)."""
    csv_report: Path | None = None
    """Where the per-case rows go as CSV (outside the predictions folder)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""


def score(request: ScoreRequest) -> ExitCode:
    """Score every prediction, print the table and write the reports asked for; FAILED_CASES when any
    case could not be scored (the others still are)."""
    for name, folder in (("predictions", request.predictions), ("truth", request.truth)):
        if not folder.is_dir():
            raise UsageError(f"the {name} folder {folder} does not exist or is not a folder")
    if is_inside(request.predictions, request.truth) or is_inside(request.truth, request.predictions):
        raise UsageError(
            f"the predictions folder {request.predictions} and the truth folder {request.truth} are the same "
            "or one holds the other, so images would be scored against themselves; give the folder of "
            "synthetic images as --pred"
        )
    for name, path in (("json", request.json_report), ("csv", request.csv_report)):
        if path is not None and is_inside(path, request.predictions):
            raise UsageError(f"--{name} {path} lies inside the predictions folder; put it elsewhere")
    if request.seg is not None and not request.seg.is_dir():
        raise UsageError(f"the segmentation folder {request.seg} does not exist or is not a folder")
    dropped = _read_dropped(request.dropped) if request.dropped else None
    device = _score_device(request.device)
    pairs, errors = pair_predictions(request.predictions, request.truth)
    if not pairs and not errors:
        # as the main job does for an empty input: a wrong folder must not pass for a run with nothing to do
        raise UsageError(
            f"the predictions folder {request.predictions} holds no NIfTI image (is it the right folder?); "
            "expected <case>-<contrast>.nii.gz files or <case>/ folders of them"
        )
    if request.seg is not None:
        pairs = [
            replace(p, segmentation=segmentation_in(request.seg, p.case) or p.segmentation) for p in pairs
        ]
    rows = [Row(e.case, None, "failed", message=e.message) for e in errors]
    if dropped is not None:
        have = {(p.case, p.contrast) for p in pairs} | {(e.case, None) for e in errors}
        for case, contrast in dropped.items():
            if (case, contrast) not in have and (case, None) not in have:
                rows.append(
                    Row(case, contrast.value, "failed", message=f"no prediction of its dropped {contrast}")
                )
    log.info(
        "scoring %d prediction(s) on %s: SSIM over the whole volume takes from half a minute to a few "
        "minutes per case on a CPU",
        len(pairs),
        device,
    )
    with _scoring_bar(len(pairs)) as bar:
        for number, pair in enumerate(pairs, 1):
            bar.set_postfix_str(f"{pair.case} {pair.contrast.value}")
            log.debug(
                "scoring %s %s (%d of %d): %s",
                pair.case,
                pair.contrast.value,
                number,
                len(pairs),
                pair.prediction,
            )
            row = score_pair(pair, device)
            rows.append(row)
            bar.update(1)
            if row.status == "scored":
                log.info(
                    "%s %s (%d of %d): SSIM %.4f (%.1f s)",
                    row.case,
                    row.target,
                    number,
                    len(pairs),
                    row.ssim,
                    row.seconds,
                )
    for row in rows:
        if row.status == "failed":
            log.error("[failed] %s: %s", row.case, row.message)
    rows.sort(key=lambda r: (r.case, r.target or ""))
    summary = _summary(rows)
    print(_table(rows, summary))
    if request.json_report is not None:
        report = {
            "brasyn_version": __version__,
            "predictions": str(request.predictions),
            "truth": str(request.truth),
            "device": str(device),
            "protocol": PROTOCOL,
            "metric": "torchmetrics StructuralSimilarityIndexMeasure (defaults) on each image clipped to its "
            "0.5/99.5 percentiles (lower bound at least 0) and scaled to [0, 1]; ssim_tumor / "
            "ssim_non_tumor: SSIM of both images times the mask (seg > 0) / its complement, over the whole "
            "volume; MSE and PSNR on the same images",
            "brain_mask": "ssim_brain, mse_brain, psnr_brain: the non-zero voxels of the truth contrast "
            "itself (not a challenge score)",
            "summary": summary,
            "cases": [r.to_dict() for r in rows],
        }
        _write_report(request.json_report, json.dumps(report, indent=2) + "\n")
    if request.csv_report is not None:
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=list(rows[0].to_dict()) if rows else ["case"])
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_dict())
        _write_report(request.csv_report, table.getvalue())
    return ExitCode.FAILED_CASES if summary["failed"] else ExitCode.OK
