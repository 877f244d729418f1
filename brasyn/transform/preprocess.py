"""Into the model's space and back: orientation, intensity normalisation and the crop/pad window.

Forward, per case (:func:`prepare`):

1. reorient each volume from its stored orientation to the one the official model was trained on
   (BraTS arrays as stored: nibabel axis codes L, P, S);
2. clip each contrast to its 0.1 / 99.9 % quantiles (whole volume) and min-max scale it to [0, 1];
3. place the volume into the model window: for 240x240x155 volumes whose brain lies inside it, exactly
   the official window (zero-pad the last axis to 160, crop 8 voxels off each in-plane side: 224x224x160);
   otherwise per axis a window that is a multiple of 32, at least the brain's extent, cropped around the
   brain where the volume is larger and zero-padded where it is smaller, so no brain voxel is lost.

:func:`restore_geometry` undoes 3 then 1 exactly (the crop/pad and orientation record is a
:class:`Geometry`); the intensity scale is restored separately (``brasyn.transform.intensity``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel import orientations

__all__ = [
    "BRATS_SHAPE",
    "MODEL_AXES",
    "TRAINING_SHAPE",
    "AxisWindow",
    "Geometry",
    "normalise",
    "plan_geometry",
    "prepare",
    "restore_geometry",
    "to_model",
]

MODEL_AXES = ("L", "P", "S")
TRAINING_SHAPE = (224, 224, 160)
BRATS_SHAPE = (240, 240, 155)
MULTIPLE = 32
"""Every model-space size is a multiple of this (DWT halves it, the U-Net divides it by 16)."""


@dataclass(frozen=True)
class AxisWindow:
    """Voxels ``src_start:src_stop`` of the reoriented volume sit at ``dst_start`` in a model axis of
    length ``size``; everything else in the model axis is zero padding."""

    src_start: int
    src_stop: int
    dst_start: int
    size: int

    @property
    def dst_stop(self) -> int:
        return self.dst_start + self.src_stop - self.src_start


@dataclass(frozen=True)
class Geometry:
    """What :func:`prepare` did to the voxel grid, so that :func:`restore_geometry` can undo it."""

    stored_shape: tuple[int, int, int]
    stored_orientation: np.ndarray
    """nibabel orientation (axis, flip per stored axis) of the stored array."""
    windows: tuple[AxisWindow, AxisWindow, AxisWindow]

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return tuple(w.size for w in self.windows)  # type: ignore[return-value]

    @property
    def to_model_orientation(self) -> np.ndarray:
        """nibabel orientation transform from the stored axes to L, P, S."""
        return orientations.ornt_transform(self.stored_orientation, orientations.axcodes2ornt(MODEL_AXES))

    @property
    def to_stored_orientation(self) -> np.ndarray:
        return orientations.ornt_transform(orientations.axcodes2ornt(MODEL_AXES), self.stored_orientation)

    @property
    def oriented_shape(self) -> tuple[int, int, int]:
        order = self.to_model_orientation[:, 0].astype(int)
        shape = [0, 0, 0]
        for stored_axis, model_axis in enumerate(order):
            shape[model_axis] = self.stored_shape[stored_axis]
        return tuple(shape)  # type: ignore[return-value]


def _round_up(n: int) -> int:
    return -(-n // MULTIPLE) * MULTIPLE


def _axis_window(length: int, lo: int, hi: int, preferred: int) -> AxisWindow:
    """Window of one axis: length ``length``, brain inside ``lo:hi``."""
    size = max(_round_up(hi - lo), min(preferred, _round_up(length)))
    if size >= length:
        pad = size - length
        return AxisWindow(0, length, pad // 2, size)
    # crop: centre on the brain, inside the volume
    start = (lo + hi) // 2 - size // 2
    start = min(max(start, 0), length - size)
    start = min(start, lo)
    start = max(start, hi - size)
    return AxisWindow(start, start + size, 0, size)


def plan_geometry(affine: np.ndarray, stored_shape: tuple[int, ...], brain: np.ndarray) -> Geometry:
    """Choose orientation and window for a case; ``brain`` is a stored-order mask of brain voxels."""
    stored_orientation = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(stored_orientation, orientations.axcodes2ornt(MODEL_AXES))
    mask = orientations.apply_orientation(brain, transform)
    oriented = mask.shape
    if mask.any():
        bounds = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        box = [(int(b[0]), int(b[-1]) + 1) for b in bounds]
    else:
        box = [(0, n) for n in oriented]
    official = oriented == BRATS_SHAPE and all(
        lo >= 8 and hi <= n - 8 for (lo, hi), n in zip(box[:2], oriented[:2], strict=True)
    )
    if official:
        windows = (AxisWindow(8, 232, 0, 224), AxisWindow(8, 232, 0, 224), AxisWindow(0, 155, 0, 160))
    else:
        windows = tuple(
            _axis_window(n, lo, hi, preferred)
            for n, (lo, hi), preferred in zip(oriented, box, TRAINING_SHAPE, strict=True)
        )
    return Geometry(tuple(stored_shape), stored_orientation, windows)  # type: ignore[arg-type]


def to_model(volume: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A stored-order volume in model space (reoriented, cropped, zero-padded)."""
    oriented = orientations.apply_orientation(volume, geometry.to_model_orientation)
    out = np.zeros(geometry.model_shape, dtype=np.float32)
    w = geometry.windows
    out[w[0].dst_start : w[0].dst_stop, w[1].dst_start : w[1].dst_stop, w[2].dst_start : w[2].dst_stop] = (
        oriented[
            w[0].src_start : w[0].src_stop, w[1].src_start : w[1].src_stop, w[2].src_start : w[2].src_stop
        ]
    )
    return out


def restore_geometry(model_volume: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Exact inverse of :func:`to_model`: back on the stored grid, zero where the window cropped."""
    if model_volume.shape != geometry.model_shape:
        raise ValueError(f"expected a model-space volume of {geometry.model_shape}, got {model_volume.shape}")
    oriented = np.zeros(geometry.oriented_shape, dtype=np.float32)
    w = geometry.windows
    oriented[
        w[0].src_start : w[0].src_stop, w[1].src_start : w[1].src_stop, w[2].src_start : w[2].src_stop
    ] = model_volume[
        w[0].dst_start : w[0].dst_stop, w[1].dst_start : w[1].dst_stop, w[2].dst_start : w[2].dst_stop
    ]
    back = orientations.apply_orientation(oriented, geometry.to_stored_orientation)
    return np.ascontiguousarray(back, dtype=np.float32)


def normalise(volume: np.ndarray) -> np.ndarray:
    """Clip to the 0.1 / 99.9 % quantiles of the whole volume, then min-max to [0, 1] (float32)."""
    data = np.asarray(volume, dtype=np.float64)
    lo, hi = np.quantile(data, [0.001, 0.999])
    clipped = np.clip(data, lo, hi)
    low, high = clipped.min(), clipped.max()
    if high <= low:
        return np.zeros(data.shape, dtype=np.float32)
    return ((clipped - low) / (high - low)).astype(np.float32)


def brain_mask(volumes: list[np.ndarray]) -> np.ndarray:
    """Voxels where any input is non-zero: the brain of a skull-stripped case."""
    mask = np.zeros(volumes[0].shape, dtype=bool)
    for v in volumes:
        mask |= v != 0
    return mask


def prepare(volumes: list[np.ndarray], affine: np.ndarray) -> tuple[np.ndarray, Geometry, np.ndarray]:
    """Stored-order volumes of one grid to a (C, D, H, W) float32 model-space stack in [0, 1].

    Returns the stack, its :class:`Geometry` and the stored-order brain mask.
    """
    mask = brain_mask(volumes)
    geometry = plan_geometry(affine, volumes[0].shape, mask)
    stack = np.stack([to_model(normalise(v), geometry) for v in volumes])
    return stack, geometry, mask
