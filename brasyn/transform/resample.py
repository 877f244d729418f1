"""Hospital grids: bringing contrasts that share a world space but not a 1 mm voxel grid onto one, and the
synthetic contrast back onto the grid of an input.

The model only knows 1 mm isotropic volumes on one grid. When a case's contrasts are already there,
nothing here runs (:func:`plan_grid` returns ``None``) and the case takes the plain path, bit for bit.
Otherwise, with SimpleITK, in world (LPS) millimetres:

1. every contrast must place its voxels in the world (a NIfTI with neither qform nor sform cannot), and
   the brains must overlap (Dice of the foreground masks where both fields of view have data >=
   :data:`MIN_OVERLAP`): contrasts that were never co-registered are refused, since resampling cannot
   align them (below :data:`WARN_OVERLAP` the case runs with a warning);
2. the model grid is 1 mm isotropic, axis-aligned (the model's L, P, S axes), covering the union of the
   contrasts' foregrounds plus a margin, shifted so that the reference grid's first voxel centre is one
   of its voxel centres (a 1 mm axis-aligned reference then maps voxel to voxel);
3. each contrast is resampled onto it with linear interpolation (0 outside its field of view);
4. the synthetic contrast goes back onto the reference grid (by default that of the highest-resolution
   contrast): along axes where the reference is coarser than 1 mm it is first smoothed by a Gaussian of
   the variance of a box as wide as the reference voxel, so a thick slice holds an average over its
   thickness rather than one 1 mm sample, then interpolated linearly.

Linear interpolation smooths: an input finer than 1 mm loses its finest detail, and a thick-slice input
(a 5 mm FLAIR) is only interpolated between its slices, so through-plane detail it never had is not
invented; the model then sees a blurrier contrast along that axis than it was trained on.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from brasyn.common.errors import CaseError
from brasyn.data.modalities import MODALITIES, Modality
from brasyn.data.volumes import AFFINE_TOLERANCE_MM, Volume, affine_from_itk, grid_difference, itk_geometry

__all__ = [
    "MIN_OVERLAP",
    "MODEL_SPACING_MM",
    "GridPlan",
    "foreground",
    "on_model_grid",
    "plan_grid",
    "to_model_grid",
    "to_reference_grid",
]

log = logging.getLogger(__name__)

MODEL_SPACING_MM = 1.0
MIN_OVERLAP = 0.5
"""Least Dice of two contrasts' foregrounds in world space; co-registered brains score well above 0.8."""
WARN_OVERLAP = 0.85
"""Below this the case runs, with a warning: a 10 mm shift of a whole brain already scores about 0.8."""
MARGIN_MM = 4.0
"""Added around the union of the foregrounds, so interpolation at the brain's edge has room."""
CHECK_SPACING_MM = 2.0
"""The overlap check needs no fine grid."""
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class GridPlan:
    """Where a case is resampled to: the 1 mm model grid, and the contrast whose grid the output takes."""

    reference: Modality
    origin: tuple[float, float, float]
    """LPS millimetres of the model grid's first voxel centre; its axes are L, P, S at 1 mm."""
    size: tuple[int, int, int]
    overlap: float
    """The smallest Dice of two contrasts' foregrounds in world space."""

    @property
    def affine(self) -> np.ndarray:
        """RAS affine of the model grid."""
        return affine_from_itk((MODEL_SPACING_MM,) * 3, self.origin, _IDENTITY)


def on_model_grid(volumes: dict[Modality, Volume]) -> bool:
    """Whether the contrasts share one grid of 1 mm isotropic voxels (the model's own)."""
    first, *others = volumes.values()
    if any(grid_difference(first, other) for other in others):
        return False
    spacing = np.linalg.norm(first.affine[:3, :3], axis=0)
    return bool(np.all(np.abs(spacing - MODEL_SPACING_MM) <= AFFINE_TOLERANCE_MM))


def plan_grid(volumes: dict[Modality, Volume], case: str, grid_of: Modality | None = None) -> GridPlan | None:
    """The model grid of a case, or ``None`` when it is already on one 1 mm grid (nothing to resample).

    Raises :class:`CaseError` when ``grid_of`` names a contrast the case lacks, when a contrast has no
    orientation record, or when the contrasts do not overlap in world space.
    """
    if on_model_grid(volumes):
        return None
    for volume in volumes.values():
        header = volume.header
        if header is not None and int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            raise CaseError(
                case,
                f"{volume.path.name} has no orientation record (qform and sform codes are 0), so it cannot "
                "be placed in the patient's space to resample it with the other contrasts; export it with "
                "its orientation (or onto the grid of the others).",
                [volume.path],
            )
    if grid_of is None:
        # the finest voxels keep the most detail; ties go to the first contrast in canonical order
        # (in canonical order whatever order the caller gave, so training for any target, which lists the
        # target last, and inference pick the same grid)
        canonical = sorted(volumes, key=MODALITIES.index)
        reference = min(canonical, key=lambda m: abs(np.linalg.det(volumes[m].affine[:3, :3])))
    elif grid_of in volumes:
        reference = grid_of
    else:
        raise CaseError(
            case,
            f"--grid-of {grid_of.value} names a contrast this case does not have as an input; choose one of "
            f"{', '.join(m.value for m in volumes)}.",
            [v.path for v in volumes.values()],
        )
    masks = {m: foreground(v.data) for m, v in volumes.items()}
    boxes = np.array([_world_box(volumes[m].affine, masks[m]) for m in volumes])
    low, high = boxes[:, 0].min(axis=0) - MARGIN_MM, boxes[:, 1].max(axis=0) + MARGIN_MM
    # on the reference's voxel-centre lattice: a 1 mm axis-aligned reference then maps voxel to voxel
    anchor = _lps(volumes[reference].affine)[:3, 3]
    origin = anchor + np.floor((low - anchor) / MODEL_SPACING_MM) * MODEL_SPACING_MM
    size = np.ceil((high - origin) / MODEL_SPACING_MM).astype(int) + 1
    overlap = _check_overlap(volumes, masks, low, high, case)
    plan = GridPlan(reference, tuple(map(float, origin)), tuple(map(int, size)), overlap)  # type: ignore[arg-type]
    log.info(
        "%s: contrasts not on one 1 mm grid; resampling onto a %s 1 mm grid (linear), output on the grid "
        "of %s %s (foreground overlap %.2f)",
        case,
        "x".join(map(str, plan.size)),
        reference.value,
        "x".join(str(n) for n in volumes[reference].shape),
        overlap,
    )
    return plan


def foreground(data: np.ndarray) -> np.ndarray:
    """The head or brain: non-zero voxels of a skull-stripped image (its background is exactly 0),
    otherwise the voxels above an Otsu threshold (air is dark in every contrast)."""
    nonzero = data != 0
    if nonzero.mean() < 0.95:
        return nonzero
    threshold = sitk.OtsuThresholdImageFilter()
    threshold.Execute(sitk.GetImageFromArray(np.ascontiguousarray(data, dtype=np.float32)))
    return data > threshold.GetThreshold()


def to_model_grid(volumes: dict[Modality, Volume], plan: GridPlan) -> dict[Modality, Volume]:
    """Each contrast resampled onto the model grid (linear, 0 outside its field of view)."""
    affine = plan.affine
    return {
        m: Volume(
            path=v.path,
            data=_resample(_itk(v.data, v.affine), plan, sitk.sitkLinear),
            affine=affine,
            header=None,
        )
        for m, v in volumes.items()
    }


def to_reference_grid(data: np.ndarray, brain: np.ndarray, plan: GridPlan, reference: Volume) -> np.ndarray:
    """The synthetic contrast on the model grid to the grid of ``reference``, 0 outside the brain.

    ``brain`` is the model-grid mask of voxels where any input is non-zero.
    """
    image = _itk(data, plan.affine)
    variance = _box_variance(reference.affine)
    if np.any(variance > 0):
        image = sitk.DiscreteGaussian(image, variance.tolist(), 32, 0.01, True)
    spacing, origin, direction = itk_geometry(reference.affine)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in reference.shape])
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputOrigin(origin)
    resampler.SetOutputDirection(direction)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    out = _array(resampler.Execute(image))
    inside = _array(resampler.Execute(_itk(brain.astype(np.float32), plan.affine))) >= 0.5
    return np.where(inside, np.maximum(out, 0.0), 0.0).astype(np.float32)


def _box_variance(affine: np.ndarray) -> np.ndarray:
    """Per model axis (L, P, S): the variance a 1 mm sample lacks to be a box as wide as a voxel of the
    grid of ``affine`` along that axis; 0 where that grid is not coarser."""
    extent = np.abs(_lps(affine)[:3, :3]).sum(axis=1)
    return np.maximum(extent**2 - MODEL_SPACING_MM**2, 0.0) / 12.0


def _check_overlap(
    volumes: dict[Modality, Volume],
    masks: dict[Modality, np.ndarray],
    low: np.ndarray,
    high: np.ndarray,
    case: str,
) -> float:
    size = np.ceil((high - low) / CHECK_SPACING_MM).astype(int) + 1
    coarse = GridPlan(next(iter(volumes)), tuple(map(float, low)), tuple(map(int, size)), 1.0)  # type: ignore[arg-type]
    on_grid, fov = {}, {}
    for m, v in volumes.items():
        on_grid[m] = (
            _resample(_itk(masks[m], v.affine), coarse, sitk.sitkNearestNeighbor, CHECK_SPACING_MM) > 0
        )
        fov[m] = (
            _resample(_itk(np.ones(v.shape), v.affine), coarse, sitk.sitkNearestNeighbor, CHECK_SPACING_MM)
            > 0
        )
    worst, pair = 1.0, None
    for a, b in itertools.combinations(volumes, 2):
        # only where both images have data: a slab that covers part of the brain is not misaligned
        common = fov[a] & fov[b]
        first, second = on_grid[a] & common, on_grid[b] & common
        total = first.sum() + second.sum()
        dice = 2.0 * np.logical_and(first, second).sum() / total if total else 0.0
        if dice < worst:
            worst, pair = float(dice), (a, b)
    if pair is not None and worst < MIN_OVERLAP:
        first, second = volumes[pair[0]].path, volumes[pair[1]].path
        raise CaseError(
            case,
            f"{first.name} and {second.name} are not co-registered: their brains barely overlap in world "
            f"space (Dice {worst:.2f}, at least {MIN_OVERLAP} expected). brasyn resamples contrasts that "
            "share a world space but cannot align them; register them to one another first (e.g. ANTs "
            "antsRegistration, elastix, or SimpleITK's ImageRegistrationMethod) and rerun.",
            [first, second],
        )
    if pair is not None and worst < WARN_OVERLAP:
        log.warning(
            "%s: %s and %s overlap less than co-registered images do (Dice %.2f); check their alignment "
            "in the --extras preview",
            case,
            volumes[pair[0]].path.name,
            volumes[pair[1]].path.name,
            worst,
        )
    return worst


def _lps(affine: np.ndarray) -> np.ndarray:
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)


def _world_box(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(2, 3): LPS corners of the axis-aligned box around the voxels of ``mask`` (whole voxels)."""
    if not mask.any():
        mask = np.ones(mask.shape, dtype=bool)
    lo = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[0] - 0.5 for ax in range(3)]
    hi = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax)))[-1] + 0.5 for ax in range(3)]
    corners = np.array([[*c, 1.0] for c in itertools.product(*zip(lo, hi, strict=True))])
    world = (_lps(affine) @ corners.T).T[:, :3]
    return np.stack([world.min(axis=0), world.max(axis=0)])


def _itk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(
        np.ascontiguousarray(np.asarray(data, dtype=np.float32).transpose(2, 1, 0))
    )
    spacing, origin, direction = itk_geometry(affine)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def _array(image: sitk.Image) -> np.ndarray:
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)


def _resample(
    image: sitk.Image, plan: GridPlan, interpolator: int, spacing: float = MODEL_SPACING_MM
) -> np.ndarray:
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(list(plan.size))
    resampler.SetOutputSpacing((spacing,) * 3)
    resampler.SetOutputOrigin(plan.origin)
    resampler.SetOutputDirection(_IDENTITY)
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    return _array(resampler.Execute(image))
