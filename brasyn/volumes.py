"""NIfTI in and out: reading with every check a user's file can fail, and writing the synthetic contrast
atomically on the grid and header of an input.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from brasyn.errors import CaseError

__all__ = [
    "TEMP_PREFIX",
    "Volume",
    "check_same_grid",
    "grid_difference",
    "load_volume",
    "remove_stale_temporaries",
    "write_volume",
]

log = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
TEMP_PREFIX = ".brasyn-partial-"
"""Name prefix of files being written; only ever present for the instant before the rename."""


@dataclass
class Volume:
    """One 3-D image as loaded: float32 voxels in stored order, with the header it came with."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]


def load_volume(path: Path, case: str) -> Volume:
    """Read a NIfTI file and check that it holds one finite, non-empty 3-D image."""
    name = path.name
    try:
        image = nib.load(str(path))
    except Exception as exc:
        raise CaseError(
            case,
            f"{name} cannot be read as a NIfTI image ({_reason(exc)}); check that it is a .nii or .nii.gz "
            "file and re-export it if needed.",
            [path],
        ) from exc
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise CaseError(
            case, f"{name} is a {type(image).__name__}, not a NIfTI image; convert it to .nii.gz.", [path]
        )
    try:
        data = np.asanyarray(image.dataobj, dtype=np.float32)
    except Exception as exc:
        raise CaseError(
            case,
            f"{name} is truncated or corrupt ({_reason(exc)}); copy or export the file again.",
            [path],
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(
            case,
            f"{name} has shape {data.shape}; each contrast must be a single 3-D volume "
            "(split 4-D series and keep one volume).",
            [path],
        )
    if min(data.shape) < 2:
        raise CaseError(case, f"{name} has shape {data.shape}, which is not a 3-D volume.", [path])
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise CaseError(
            case,
            f"{name} contains {bad} NaN or infinite voxels; fix the export (or set them to 0) and rerun.",
            [path],
        )
    if not np.any(data):
        raise CaseError(case, f"{name} is empty (every voxel is 0); check the export.", [path])
    header = image.header.copy()
    return Volume(path=path, data=data, affine=image.affine.astype(np.float64), header=header)


def grid_difference(a: Volume, b: Volume) -> str | None:
    """How the voxel grids of two volumes differ, in words; None when they are one grid."""
    if a.shape != b.shape:
        return f"{a.path.name} has shape {a.shape} but {b.path.name} has {b.shape}"
    diff = float(np.max(np.abs(a.affine - b.affine)))
    if diff > AFFINE_TOLERANCE_MM:
        return f"{a.path.name} and {b.path.name} have different affines (up to {diff:.4g} mm apart)"
    return None


def check_same_grid(volumes: dict[str, Volume], case: str) -> None:
    """All volumes of a case must share shape and affine (the model works voxel by voxel)."""
    first, *others = volumes.values()
    for other in others:
        difference = grid_difference(first, other)
        if difference:
            raise CaseError(
                case,
                f"{difference}; all contrasts of a case must be on one voxel grid "
                "(co-register and resample them first).",
                [first.path, other.path],
            )


def write_volume(data: np.ndarray, reference: Volume, path: Path, description: str = "") -> None:
    """Write ``data`` as float32 NIfTI with the grid and header of ``reference``, atomically.

    The whole compressed file is built in memory, written under a temporary name in the target folder
    and renamed, so an interrupted run never leaves a partial file under the final name, and the
    temporary one exists only for the duration of one write.
    """
    if data.shape != reference.shape:
        raise ValueError(f"data shape {data.shape} differs from the reference grid {reference.shape}")
    header = reference.header.copy()
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), None, header)
    image.set_data_dtype(np.float32)
    # keep both orientation records of the input, with their codes
    image.set_qform(reference.header.get_qform(), code=int(reference.header["qform_code"]))
    image.set_sform(reference.header.get_sform(), code=int(reference.header["sform_code"]))
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = 0.0
    image.header["cal_max"] = 0.0
    if description:
        image.header["descrip"] = description.encode()[:79]
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        # mtime 0: the same image always gives the same bytes
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files a killed earlier run of brasyn left in ``folder`` (only ours)."""
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(TEMP_PREFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
                log.warning("removed %s, left behind by an interrupted run", entry)
    return removed


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
