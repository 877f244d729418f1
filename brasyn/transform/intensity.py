"""The intensity scale of a synthetic contrast.

The model works on [0, 1] images (each contrast clipped to its 0.1 / 99.9 % quantiles and min-max
scaled), so its output has no physical scale. In skull-stripped volumes the 0.1 % quantile is the
background (0), so an input voxel is about ``image * p99.9``. The missing contrast's 99.9th percentile is
estimated from the three present ones with ratios measured on training data:
``p99.9(target) ~ median over conditions c of ratio[c] * p99.9(c)``, each ``ratio[c]`` the median over
training cases of p99.9(target) / p99.9(c) (:func:`median_ratios`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from brasyn.data.modalities import Modality, conditions_for

__all__ = [
    "OUTPUT_THRESHOLD",
    "estimate_scale",
    "high_percentile",
    "keep_signal",
    "median_ratios",
    "restore_intensity",
]

OUTPUT_THRESHOLD = 0.04
"""Synthetic [0, 1] values at or below this are background noise: the official code zeroes them."""

PERCENTILE = 99.9


def high_percentile(volume: np.ndarray) -> float:
    """The 99.9th percentile of a whole volume, in its own units."""
    return float(np.percentile(np.asarray(volume, dtype=np.float64), PERCENTILE))


def median_ratios(
    percentiles: Iterable[Mapping[Modality, float]],
    target: Modality,
    fallback: float | Mapping[Modality, float] = 1.0,
) -> dict[Modality, float]:
    """Per condition of ``target``, the median over cases of p99.9(target) / p99.9(condition), from each
    case's 99.9th percentiles; a case where either is not positive says nothing. A condition no case
    speaks for gets ``fallback`` (one number, or one per condition)."""
    cases = list(percentiles)
    ratios = {}
    for condition in conditions_for(target):
        values = [p[target] / p[condition] for p in cases if p[condition] > 0 and p[target] > 0]
        if values:
            ratios[condition] = float(np.median(values))
        else:
            ratios[condition] = fallback if isinstance(fallback, (int, float)) else fallback[condition]
    return ratios


def estimate_scale(condition_percentiles: Mapping[str, float], ratios: Mapping[str, float]) -> float:
    """Estimated 99.9th percentile of the target contrast from those of the conditions."""
    estimates = [ratios[c] * p for c, p in condition_percentiles.items() if c in ratios and p > 0]
    if not estimates:
        raise ValueError(
            "no condition with both a positive percentile and a ratio to estimate the scale from"
        )
    return float(np.median(estimates))


def keep_signal(image: np.ndarray, brain: np.ndarray, threshold: float = OUTPUT_THRESHOLD) -> np.ndarray:
    """A [0, 1] synthetic image as it will be written, still in [0, 1]: values at or below ``threshold``
    (:data:`OUTPUT_THRESHOLD`) and voxels outside ``brain`` (no input signal) are 0 (float32)."""
    return np.where((image > threshold) & brain, image, 0.0).astype(np.float32)


def restore_intensity(
    image: np.ndarray, scale: float, brain: np.ndarray, threshold: float = OUTPUT_THRESHOLD
) -> np.ndarray:
    """A [0, 1] synthetic image on the input scale: background (no input signal) is 0, nothing negative.
    ``threshold`` 0 keeps every positive value (a spread map, which has no background noise to cut)."""
    out = keep_signal(image, brain, threshold) * np.float32(scale)
    np.maximum(out, 0.0, out=out)
    return out
