"""Do several draws pay? ``python -m brasyn.quality draws``: on complete cases, each target in turn (or
``--target``) withheld and synthesised as the mean of 1, 2, 4 ... draws, scored against the real contrast
with the challenge's metrics, with the sampling time each count takes and how well the draws' spread (the
uncertainty map) points at the error.

One chain of ``max(counts)`` draws per case, target and sampler: a run with ``--draws k`` averages exactly
the first ``k`` of them (each draw has its own seed, :mod:`brasyn.inference.draws`), so the rows for the
smaller counts are those runs' images, and their seconds are the sampling time of their first ``k`` draws.
Each image goes back onto the input grid and scale as a run writes it
(:meth:`~brasyn.inference.synthesize.Synthesizer.restore`) before it is scored.

Uncertainty against error, inside the brain (the real contrast's non-zero voxels): the spread's mean as a
share of the image's mean (how much the draws differ at all), the Pearson correlation
of the spread map with the absolute error of the percentile-normalised mean (the challenge's
normalisation, :func:`brasyn.evaluate.metrics.percentile_normalise`), and the mean absolute error in the
tenth of the brain where the spread is highest against the rest.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brasyn.bench.quality import Variant, row_text
from brasyn.common.acceleration import SpeedSettings
from brasyn.common.errors import BrasynError
from brasyn.data.cases import Case, discover
from brasyn.data.modalities import Modality
from brasyn.data.volumes import load_volume
from brasyn.evaluate.metrics import percentile_normalise, score
from brasyn.inference.draws import Welford
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import Synthesizer
from brasyn.model.diffusion import Sampling
from brasyn.train.validation import withheld_inputs
from brasyn.weights.store import WeightStore

__all__ = ["DEFAULT_COUNTS", "DEFAULT_DRAW_VARIANTS", "compare_draws", "draws_table", "spread_against_error"]

log = logging.getLogger("brasyn.quality")

DEFAULT_COUNTS = (1, 2, 4, 8)
DEFAULT_DRAW_VARIANTS = ("dpm++2m:10", "ddim:50")
TOP_FRACTION = 0.1
"""The share of the brain with the highest spread whose error is set against the rest's."""


def spread_against_error(spread: np.ndarray, prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How large the spread map (on the output's grid) is and how it follows the absolute error of
    ``prediction`` against ``truth``, inside the truth's non-zero voxels: its mean as a share of the
    prediction's mean there (``spread_relative``), Pearson r, and the mean absolute error (normalised
    images) in the :data:`TOP_FRACTION` of voxels with the highest spread and in the rest."""
    brain = np.asarray(truth) != 0
    error = np.abs(percentile_normalise(prediction) - percentile_normalise(truth))[brain].astype(np.float64)
    values = np.asarray(spread, dtype=np.float64)[brain]
    level = float(np.asarray(prediction, dtype=np.float64)[brain].mean()) if brain.any() else 0.0
    relative = float(values.mean() / level) if level > 0 else float("nan")
    if values.size < 2 or values.std() == 0 or error.std() == 0:
        nan = float("nan")
        return {
            "spread_relative": relative,
            "spread_error_r": nan,
            "error_top_spread": nan,
            "error_rest": nan,
        }
    r = float(np.corrcoef(values, error)[0, 1])
    cut = np.quantile(values, 1 - TOP_FRACTION)
    top = values >= cut
    return {
        "spread_relative": relative,
        "spread_error_r": r,
        "error_top_spread": float(error[top].mean()),
        "error_rest": float(error[~top].mean()) if (~top).any() else float("nan"),
    }


def _tumour_mask(case: Case, shape: tuple[int, ...]) -> np.ndarray | None:
    """A segmentation beside the case's images (``*seg*``), for the tumour scores; None where none is."""
    for path in sorted(case.folder.glob("*seg*.nii*")):
        mask = load_volume(path, case.id).data > 0
        if mask.shape == shape:
            return mask
    return None


def compare_draws(
    cases: list[Case],
    targets: list[Modality],
    weights: WeightStore,
    device: torch.device,
    variants: Sequence[Variant],
    counts: Sequence[int] = DEFAULT_COUNTS,
    seed: int = 42,
) -> list[dict[str, Any]]:
    """One row per case, target, variant and count of draws (see the module text)."""
    counts = sorted(set(counts))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="brasyn-draws-") as tmp:
        for case in cases:
            for target in targets:
                truth = load_volume(case.files[target], case.id).data
                tumour = _tumour_mask(case, truth.shape)
                inputs = withheld_inputs([case], target, Path(tmp) / f"{case.id}-without-{target.value}")
                (withheld,) = discover(inputs)
                for variant in variants:
                    sampling = Sampling(variant.sampler, variant.steps, draws=counts[-1])
                    predictor = DiffusionPredictor(
                        weights, device, sampling, SpeedSettings(precision=variant.precision)
                    )
                    synthesizer = Synthesizer(predictor, seed, progress=False)
                    loaded = synthesizer.load(withheld)
                    log.info("%s %s: %s, %s", case.id, target, variant.name, sampling.describe())
                    start = time.perf_counter()
                    sampled: dict[int, tuple[float, Any]] = {}

                    def keep(totals: Welford, start: float = start, sampled: dict = sampled) -> None:
                        if totals.count in counts:
                            sampled[totals.count] = (time.perf_counter() - start, totals.summary())

                    synthesizer.predict_draws(loaded.images, target, withheld.id, after_draw=keep)
                    for count in counts:
                        seconds, summary = sampled[count]
                        image = synthesizer.restore(summary.mean, loaded.record, target)
                        row: dict[str, Any] = {
                            "case": case.id,
                            "target": target.value,
                            "variant": variant.name,
                            "draws": count,
                            "sample_seconds": round(seconds, 2),
                            **{k: v for k, v in score(image, truth, tumour).items() if v is not None},
                        }
                        if summary.spread is not None:
                            spread = synthesizer.restore(summary.spread, loaded.record, target, threshold=0.0)
                            row.update(spread_against_error(spread, image, truth))
                        rows.append(row)
                        log.info("%s", row_text(row))
    if not rows:
        raise BrasynError("nothing was measured: no case, target or variant")
    return rows


def draws_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""

    def number(row: dict[str, Any], key: str, digits: int) -> str:
        value = row.get(key)
        return "" if value is None or value != value else f"{value:.{digits}f}"

    lines = [
        "| case | target | variant | draws | sample s | SSIM | PSNR | SSIM brain | PSNR brain | "
        "SSIM tumour | std / mean | r(std, error) | error top 10% std | error rest |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['target']} | {r['variant']} | {r['draws']} | {r['sample_seconds']:.1f} | "
            f"{number(r, 'ssim', 4)} | {number(r, 'psnr', 2)} | {number(r, 'ssim_brain', 4)} | "
            f"{number(r, 'psnr_brain', 2)} | {number(r, 'ssim_tumor', 4)} | "
            f"{number(r, 'spread_relative', 4)} | "
            f"{number(r, 'spread_error_r', 3)} | {number(r, 'error_top_spread', 4)} | "
            f"{number(r, 'error_rest', 4)} |"
        )
    return "\n".join(lines)
