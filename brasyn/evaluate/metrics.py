"""The BraSyn challenge's image-similarity scores, on arrays: no files, no command line.

The organisers score a synthetic contrast against the real one (hongweilibran/BraSyn, ``ssim.py``):

1. each image is normalised on its own: clipped to its 0.5 / 99.5 % percentiles, the lower bound raised to
   0 when it is negative, and scaled to [0, 1] (for any image with a background this is min-max scaling
   of the clipped image);
2. SSIM is torchmetrics' ``StructuralSimilarityIndexMeasure`` with its default settings (Gaussian window
   11 voxels wide, sigma 1.5, data range taken from the images, reflection padding) on the whole 3-D
   volume, as a (1, 1, X, Y, Z) batch;
3. from 2024 on, also split by the tumour segmentation (mask = seg > 0): ``ssim_tumor`` is that SSIM of
   ``pred * mask`` against ``gt * mask`` and ``ssim_non_tumor`` of ``pred * (1 - mask)`` against
   ``gt * (1 - mask)``, each over the whole volume, zeros outside the region included (so the tumour score
   is high, about 0.99, and is not an SSIM averaged inside the tumour).

:data:`PROTOCOL` names this procedure in every report. ``ssim_brain`` (SSIM of the whole masked volume
averaged over the truth's non-zero voxels) is brasyn's own addition, so that the background does not
flatter a score; it is not a challenge score.

MSE and PSNR (data range 1) are computed on the same normalised images, over the whole volume.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "PERCENTILES",
    "PROTOCOL",
    "mse",
    "percentile_normalise",
    "psnr",
    "score",
    "ssim",
    "ssim_inside",
    "ssim_regions",
    "ssim_split",
]

PERCENTILES = (0.5, 99.5)
"""Clipping percentiles of the challenge's normalisation."""
PROTOCOL = "brasyn-2024-2025"
"""The scoring procedure of the BraSyn 2024 and 2025 challenges (hongweilibran/BraSyn, ``ssim.py``)."""


def percentile_normalise(volume: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """``volume`` clipped to its ``low`` / ``high`` percentiles (lower bound at least 0), scaled to [0, 1].

    An image whose two percentiles coincide (constant, or nearly all background) becomes all zeros,
    where the organisers' script would divide by zero.
    """
    data = np.asarray(volume, dtype=np.float64)
    lo, hi = np.percentile(data, [low, high])
    lo = max(float(lo), 0.0)
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.float32)
    return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _batch(volume: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """A 3-D array as the (1, 1, X, Y, Z) float32 tensor torchmetrics expects."""
    if np.ndim(volume) != 3:
        raise ValueError(f"expected a 3-D volume, got shape {np.shape(volume)}")
    return torch.as_tensor(np.asarray(volume, dtype=np.float32), device=device)[None, None]


def _check_pair(prediction: np.ndarray, truth: np.ndarray) -> None:
    if np.shape(prediction) != np.shape(truth):
        raise ValueError(
            f"prediction shape {np.shape(prediction)} differs from truth shape {np.shape(truth)}"
        )


def ssim(prediction: np.ndarray, truth: np.ndarray, device: torch.device | str = "cpu") -> float:
    """SSIM of two 3-D volumes (already normalised), torchmetrics defaults."""
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    _check_pair(prediction, truth)
    metric = StructuralSimilarityIndexMeasure().to(device)
    return float(metric(_batch(prediction, device), _batch(truth, device)))


def _masked_ssim(pred: torch.Tensor, true: torch.Tensor, region: torch.Tensor) -> float | None:
    """SSIM of the two (1, 1, X, Y, Z) images zeroed outside ``region``, averaged over ``region``."""
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    if not bool(region.any()):
        return None
    weight = region.to(torch.float32)
    metric = StructuralSimilarityIndexMeasure(return_full_image=True).to(pred.device)
    _, full = metric(pred * weight, true * weight)
    return float(full[region].mean())


def _region_batches(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_pair(prediction, truth)
    _check_pair(mask, truth)
    inside = torch.as_tensor(np.asarray(mask) > 0, device=device)[None, None]
    return _batch(prediction, device), _batch(truth, device), inside


def ssim_inside(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, device: torch.device | str = "cpu"
) -> float | None:
    """SSIM inside ``mask`` the 2024 way (one SSIM pass); ``None`` for an empty mask."""
    return _masked_ssim(*_region_batches(prediction, truth, mask, device))


def ssim_regions(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[float | None, float | None]:
    """(SSIM inside ``mask``, SSIM outside it) the 2024 way; ``None`` for a region without voxels."""
    pred, true, inside = _region_batches(prediction, truth, mask, device)
    return _masked_ssim(pred, true, inside), _masked_ssim(pred, true, ~inside)


def ssim_split(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, device: torch.device | str = "cpu"
) -> tuple[float, float]:
    """(``ssim_tumor``, ``ssim_non_tumor``) exactly as the organisers compute them: SSIM of both images
    multiplied by the mask, and by its complement, each over the whole volume."""
    pred, true, inside = _region_batches(prediction, truth, mask, device)
    weight = inside.to(torch.float32)
    return _whole(pred * weight, true * weight), _whole(pred * (1 - weight), true * (1 - weight))


def _tumour_scores(
    prediction: np.ndarray, truth: np.ndarray, mask: np.ndarray, device: torch.device | str
) -> tuple[float | None, float | None]:
    """:func:`ssim_split`, with ``None`` for a region without voxels (the organisers' script would give
    NaN: both images are all zero there, so SSIM's data range is 0)."""
    inside = np.asarray(mask) > 0
    if not inside.any():
        return None, ssim(prediction, truth, device)
    if inside.all():
        return ssim(prediction, truth, device), None
    return ssim_split(prediction, truth, inside, device)


def _whole(pred: torch.Tensor, true: torch.Tensor) -> float:
    from torchmetrics.image import StructuralSimilarityIndexMeasure

    return float(StructuralSimilarityIndexMeasure().to(pred.device)(pred, true))


def mse(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared difference over the whole volume."""
    _check_pair(prediction, truth)
    difference = np.asarray(prediction, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return float(np.mean(difference**2))


def psnr(prediction: np.ndarray, truth: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    error = mse(prediction, truth)
    return math.inf if error == 0 else 10.0 * math.log10(data_range**2 / error)


def score(
    prediction: np.ndarray,
    truth: np.ndarray,
    tumour: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Every score of one synthetic volume against its truth, both on their own intensity scale.

    Returns ``ssim``, ``mse`` and ``psnr``; ``ssim_tumor`` and ``ssim_non_tumor`` (the organisers' scores,
    :func:`ssim_split`) when a tumour mask (non-zero inside) is given; ``ssim_brain``, ``mse_brain`` and
    ``psnr_brain`` inside the truth's non-zero voxels.
    """
    _check_pair(prediction, truth)
    pred, true = percentile_normalise(prediction), percentile_normalise(truth)
    result: dict[str, Any] = {
        "ssim": ssim(pred, true, device),
        "mse": mse(pred, true),
        "psnr": psnr(pred, true),
    }
    if tumour is not None:
        result["ssim_tumor"], result["ssim_non_tumor"] = _tumour_scores(pred, true, tumour, device)
    # the same inside the brain (where the truth is non-zero), so background does not flatter a score
    brain = np.asarray(truth) != 0
    if brain.any():
        result["ssim_brain"] = ssim_inside(pred, true, brain, device)
        result["mse_brain"] = mse(pred[brain], true[brain])
        result["psnr_brain"] = psnr(pred[brain], true[brain])
    return result
