"""One case into the model's space and back: a single record of everything the forward transform decided.

:func:`to_model_space` takes a case's volumes (any grids that share a world space) and returns the
(C, D, H, W) float32 stack the model reads with a frozen :class:`ModelSpace` record.
:func:`from_model_space` turns one model-space image back into a volume on the grid and intensity scale
of the inputs, using that record alone. Inference, training and baseline fitting all go through these two
functions, so a case that one of them accepts, the others accept too.

Forward, in this order:

1. **grid**: contrasts that are not on one 1 mm grid are resampled onto one (:mod:`brasyn.transform.resample`,
   linear, after a co-registration check); the output's reference grid is that of ``grid_of`` or of the
   finest input. Contrasts on one 1 mm grid are left untouched (the plain path, bit for bit);
2. **checks**: every contrast must now share that grid;
3. **intensity record**: the 99.9th percentile of each contrast on that grid, in its own units (the
   output's scale is estimated from them, :mod:`brasyn.transform.intensity`);
4. **brain**: the voxels where any contrast is non-zero;
5. **voxels** (:func:`brasyn.transform.preprocess.prepare`): reoriented to L, P, S, clipped to the 0.1 / 99.9
%
   quantiles and min-max scaled to [0, 1], placed into the model window (cropped / zero-padded).

Inverse, in the reverse order:

5. the window and the orientation are undone exactly (:func:`brasyn.transform.preprocess.restore_geometry`);
4. values at or below the output threshold and voxels outside the brain become 0;
3. the [0, 1] image is scaled to the estimated 99.9th percentile of the target (the recorded
   percentiles times the predictor's intensity ratios);
1. a resampled case goes back onto the reference grid (smoothed along axes where that grid is coarser,
   0 outside the brain).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from brasyn.common.errors import CaseError
from brasyn.data.modalities import Modality
from brasyn.data.volumes import Volume, check_same_grid
from brasyn.transform.intensity import OUTPUT_THRESHOLD, estimate_scale, high_percentile, restore_intensity
from brasyn.transform.preprocess import Geometry, prepare, restore_geometry, to_model
from brasyn.transform.resample import GridPlan, plan_grid, to_model_grid, to_reference_grid

__all__ = ["ModelSpace", "from_model_space", "to_model_space"]


@dataclass(frozen=True, eq=False)
class ModelSpace:
    """What :func:`to_model_space` decided for one case: enough to undo it, nothing else."""

    case: str
    contrasts: tuple[Modality, ...]
    """The channels of the model-space stack, in order."""
    reference: Volume
    """The input whose grid and header the output takes (as read, on its own grid)."""
    grid: GridPlan | None
    """How the inputs were resampled onto one 1 mm grid; None when they were on one already."""
    geometry: Geometry
    """Orientation and crop/pad window from the (resampled) grid to the model window."""
    brain: np.ndarray
    """Voxels where any contrast is non-zero, on the (resampled) grid, in stored order."""
    percentiles: dict[Modality, float]
    """99.9th percentile of each contrast on the (resampled) grid, in its own units."""

    @property
    def resampled(self) -> bool:
        return self.grid is not None

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return self.geometry.model_shape

    def model_brain(self) -> np.ndarray:
        """The brain mask in model space (reoriented and windowed like the images)."""
        return to_model(self.brain, self.geometry) > 0


def to_model_space(
    volumes: Mapping[Modality, Volume],
    contrasts: Sequence[Modality],
    case: str,
    grid_of: Modality | None = None,
) -> tuple[np.ndarray, ModelSpace]:
    """The ``contrasts`` of a case as a (C, D, H, W) float32 stack in [0, 1], and its record.

    The first contrast's grid is the reference unless the case is resampled. Raises :class:`CaseError`
    when a contrast is missing, the grids cannot be brought together, or ``grid_of`` names an absent one.
    """
    order = tuple(Modality(m) for m in contrasts)
    missing = [m.value for m in order if m not in volumes]
    if missing:
        raise CaseError(case, f"no {', '.join(missing)} volume among the inputs")
    chosen = {m: volumes[m] for m in order}
    plan = plan_grid(chosen, case, grid_of)
    reference = chosen[order[0]] if plan is None else chosen[plan.reference]
    on_grid = chosen if plan is None else to_model_grid(chosen, plan)
    check_same_grid({m.value: on_grid[m] for m in order}, case)
    images, geometry, brain = prepare([on_grid[m].data for m in order], on_grid[order[0]].affine)
    percentiles = {m: high_percentile(on_grid[m].data) for m in order}
    return images, ModelSpace(case, order, reference, plan, geometry, brain, percentiles)


def from_model_space(
    image: np.ndarray,
    record: ModelSpace,
    intensity_ratios: Mapping[Modality, float],
    threshold: float = OUTPUT_THRESHOLD,
) -> np.ndarray:
    """A (D, H, W) [0, 1] model-space image back on the reference input's grid and intensity scale.

    ``intensity_ratios`` maps condition contrasts to p99.9(target) / p99.9(condition); the recorded
    contrasts without a ratio (the target itself, in training) are not used for the scale. ``threshold``:
    model-space values at or below it become 0 (the official output threshold; 0 for a map of the
    draws' spread, which is on the same scale but has no background noise to cut).
    """
    on_grid = restore_geometry(image, record.geometry)
    ratios = {m.value: r for m, r in intensity_ratios.items()}
    try:
        scale = estimate_scale({m.value: p for m, p in record.percentiles.items()}, ratios)
    except ValueError as exc:
        raise CaseError(
            record.case,
            f"the intensity scale cannot be estimated: {exc} (are the inputs empty or all negative?)",
        ) from exc
    data = restore_intensity(on_grid, scale, record.brain, threshold)
    if record.grid is not None:
        data = to_reference_grid(data, record.brain, record.grid, record.reference)
    return data
