"""Validation during training, scored as the challenge scores a submission.

Every ``--val-every`` steps the model being trained is written as a checkpoint into a weights folder, and
each validation case, its target contrast withheld, is synthesised from the other three through the batch
runner every run uses (:func:`brasyn.inference.batch.run_batch`: discovery, checks, model space, a fast DDIM
chain, restoring onto the case's grid and intensity scale, writing). Each written file is scored against
the real contrast by :func:`brasyn.evaluate.score.score_pair` with the organisers' SSIM: tumour and non-tumour
SSIM where the case folder holds a tumour segmentation (their mean is the case's score), the whole-volume
SSIM otherwise. The validation score is the mean over the cases, one that failed (an early model's
empty image, which a run refuses to write) counting 0; the checkpoint with the best score is kept
(:meth:`Validator.keep_best`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brasyn.common.acceleration import SpeedSettings
from brasyn.common.errors import BrasynError
from brasyn.common.logs import demoted
from brasyn.data.cases import Case, complete_cases, discover
from brasyn.data.contrast_map import ContrastMap
from brasyn.data.modalities import Modality
from brasyn.evaluate.pairing import Pair, segmentation_of
from brasyn.evaluate.score import Row, score_pair
from brasyn.inference.batch import run_batch
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import EMPTY_IMAGE, Synthesizer
from brasyn.model.diffusion import DiffusionConfig, Sampling
from brasyn.weights.store import WeightStore, save_checkpoint

__all__ = [
    "Validation",
    "ValidationStopped",
    "Validator",
    "case_score",
    "validation_cases",
    "withheld_inputs",
]

log = logging.getLogger("brasyn.train")

BEST_RECORD = "validation.json"
"""Beside the best checkpoint: its step, score and each case's scores."""


def withheld_inputs(cases: list[Case], target: Modality, root: Path) -> Path:
    """An input folder holding each of ``cases`` less ``target`` (links to its files), one sub-folder
    per case, as a user's run gets it."""
    root.mkdir(parents=True, exist_ok=True)
    for case in cases:
        folder = root / case.id
        folder.mkdir()
        for modality, path in case.files.items():
            if modality is not target:
                (folder / path.name).symlink_to(path.resolve())
    return root


def validation_cases(folder: Path, mapping: ContrastMap | None = None) -> list[Case]:
    """The complete cases (all four contrasts) of a validation folder, their files named as ``--map``
    says where it is given; others are skipped with a warning."""
    cases, rest = complete_cases(discover(folder, mapping=mapping), "validation")
    for error in rest:
        log.warning("validation: skipping %s: %s", error.case, error.message)
    if not cases:
        raise BrasynError(
            f"no usable validation case in {folder}: each case folder needs all four contrasts (t1n, t1c, "
            "t2w, t2f), and a tumour segmentation for the tumour / non-tumour scores"
        )
    return cases


def case_score(row: Row) -> float | None:
    """A scored case's validation score: the mean of the organisers' tumour and non-tumour SSIM where both
    exist, else the whole-volume SSIM."""
    if row.status != "scored":
        return None
    split = [v for v in (row.ssim_tumor, row.ssim_non_tumor) if v is not None and math.isfinite(v)]
    if len(split) == 2:
        return sum(split) / 2
    return row.ssim if row.ssim is not None and math.isfinite(row.ssim) else None


@dataclass
class Validation:
    """One validation: the mean score and each case's scores."""

    step: int
    score: float | None
    """Mean of :func:`case_score` over the cases, a case that could not be synthesised or scored counting
    0 (as a missing prediction does in the challenge, so 0 when none could be); None without cases."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """What the training log records of it."""
        keys = ("case", "status", "ssim", "ssim_tumor", "ssim_non_tumor", "psnr", "message")
        return {
            "val_ssim": self.score,
            "val_cases": [{k: r[k] for k in keys if r.get(k) not in (None, "")} for r in self.rows],
            "val_failed": sum(r["status"] != "scored" for r in self.rows),
            "val_seconds": round(self.seconds, 2),
        }


class Validator:
    """Synthesises and scores the validation cases with the model as it is at a step."""

    def __init__(
        self,
        cases: list[Case],
        target: Modality,
        device: torch.device,
        work: Path,
        steps: int = 10,
        seed: int = 0,
        precision: str = "fp32",
        mapping: ContrastMap | None = None,
    ) -> None:
        self.cases = cases
        self.mapping = mapping
        """``--map``: the withheld inputs keep the cases' own file names, which it alone may name."""
        self.target = target
        self.device = device
        self.work = work
        """The training folder of this target: the candidate checkpoint and the best one go here."""
        self.sampling = Sampling("ddim", steps)
        self.speed = SpeedSettings(precision=precision)
        self.seed = seed
        self.segmentations = {case.id: segmentation_of(case) for case in cases}

    @property
    def best_folder(self) -> Path:
        """The weights folder holding the best checkpoint so far (``--weights`` takes it)."""
        return self.work / "best"

    @property
    def candidate_folder(self) -> Path:
        return self.work / "validation" / "weights"

    def validate(
        self,
        model: nn.Module,
        step: int,
        intensity_ratios: Mapping[Modality, float],
        diffusion: DiffusionConfig,
        provenance: Mapping[str, Any],
    ) -> Validation:
        """Write ``model`` as the candidate checkpoint, synthesise every case through the batch runner and
        score it. A stop signal during the synthesis raises :class:`ValidationStopped` (the caller saves
        the training state and leaves)."""
        start = time.perf_counter()
        shutil.rmtree(self.candidate_folder, ignore_errors=True)
        save_checkpoint(
            self.candidate_folder,
            model,
            self.target,
            intensity_ratios=intensity_ratios,
            diffusion=diffusion,
            provenance={**provenance, "steps": step},
        )
        predictor = DiffusionPredictor(
            WeightStore(self.candidate_folder), self.device, self.sampling, self.speed
        )
        rows: list[Row] = []
        with tempfile.TemporaryDirectory(prefix="val-", dir=self.work / "validation") as tmp:
            inputs = withheld_inputs(self.cases, self.target, Path(tmp) / "inputs")
            with demoted("brasyn", "[failed]"):  # said below, in validation's words
                batch = run_batch(
                    discover(inputs, target=self.target, mapping=self.mapping),
                    Synthesizer(predictor, self.seed, progress=False),
                    Path(tmp) / "outputs",
                )
            if batch.interrupted:
                raise ValidationStopped(batch.signal or signal.SIGTERM)
            outputs = {r.case: r for r in batch.results}
            for case in self.cases:
                result = outputs.get(case.id)
                if result is None or result.status != "written" or result.output is None:
                    message = result.message if result is not None else "not synthesised"
                    if EMPTY_IMAGE in message:  # what an early model makes: expected, scored 0
                        log.info("validation: %s: the model's image is still empty; it counts 0", case.id)
                    else:
                        log.warning("validation: %s could not be synthesised: %s", case.id, message)
                    rows.append(Row(case.id, self.target.value, "failed", message=message))
                    continue
                pair = Pair(
                    case.id,
                    self.target,
                    Path(result.output),
                    case.files[self.target],
                    self.segmentations[case.id],
                )
                rows.append(score_pair(pair, self.device))
        scores = [case_score(row) for row in rows]
        scored = [s for s in scores if s is not None]
        score = sum(scored) / len(scores) if scores else None
        return Validation(step, score, [row.to_dict() for row in rows], time.perf_counter() - start)

    def _recover(self) -> None:
        """A process killed between :meth:`keep_best`'s two renames left the previous best as
        ``best.old`` and no ``best``: that previous best is still the best."""
        old = self.best_folder.with_name("best.old")
        if old.is_dir() and not self.best_folder.exists():
            os.replace(old, self.best_folder)

    def best_so_far(self) -> dict[str, Any] | None:
        """``{"step", "val_ssim"}`` of the kept best checkpoint (a resumed run goes on from it); None when
        there is none or its record cannot be read."""
        self._recover()
        try:
            record = json.loads((self.best_folder / BEST_RECORD).read_text())
            return {"step": int(record["step"]), "val_ssim": float(record["val_ssim"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def keep_best(self, validation: Validation) -> None:
        """The candidate checkpoint becomes the best one, with its score beside it. The previous best is
        renamed aside first and removed last, so a kill at any moment leaves a complete best folder, or
        the previous one as ``best.old`` (:meth:`best_so_far` puts it back)."""
        record = {"step": validation.step, "val_ssim": validation.score, "cases": validation.rows}
        (self.candidate_folder / BEST_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        self._recover()
        old = self.best_folder.with_name("best.old")
        shutil.rmtree(old, ignore_errors=True)
        if self.best_folder.exists():
            os.replace(self.best_folder, old)
        os.replace(self.candidate_folder, self.best_folder)
        shutil.rmtree(old, ignore_errors=True)


class ValidationStopped(BaseException):
    """A stop signal arrived while the validation cases were being synthesised."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
