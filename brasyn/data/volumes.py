"""Images in and out: reading with every check a user's file can fail, and writing the synthetic contrast
atomically on the grid and header of an input.

NIfTI (``.nii``, ``.nii.gz``) goes through nibabel exactly as the challenge expects; MetaImage (``.mha``,
``.mhd``) and NRRD (``.nrrd``) go through SimpleITK and are turned into the same :class:`Volume`: voxels
in ITK index order (x, y, z) and the 4x4 RAS affine nibabel would give, so everything downstream sees one
representation whatever the format.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from brasyn.common.errors import CaseError
from brasyn.common.files import atomic_write, publish

__all__ = [
    "ITK_EXTENSIONS",
    "RECORD_KEY",
    "TEMP_PREFIX",
    "Volume",
    "affine_from_itk",
    "check_same_grid",
    "grid_difference",
    "is_stale_temporary",
    "itk_geometry",
    "load_volume",
    "remove_stale_temporaries",
    "temporary_prefix",
    "unreadable",
    "write_problem",
    "write_volume",
]

log = logging.getLogger(__name__)

AFFINE_TOLERANCE_MM = 1e-3
ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd")
"""Formats read and written through SimpleITK; everything else is NIfTI through nibabel."""
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
ORTHONORMAL_TOLERANCE = 1e-3
TEMP_PREFIX = ".brasyn-partial-"
"""Every temporary file brasyn writes into an output folder starts with this, then ``<pid>.<host>.``."""
HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]
"""This machine (or container), as 8 hex digits in temporary names."""
STALE_AFTER_S = 600.0
"""A temporary lives for one write (seconds); one older than this belongs to a run that was killed."""
RECORD_KEY = "brasyn"
"""The key of the settings record in an output (:mod:`brasyn.data.provenance`): NIfTI comment extension
``{"brasyn": {...}}``, MetaImage/NRRD metadata key."""
_COMMENT = 6
"""The NIfTI extension code for a comment."""
_OWNED = re.compile(r"\.brasyn-partial-(?P<pid>\d+)\.(?P<host>[0-9a-f]{8})\.")
"""Name prefix of files being written; only ever present for the instant before the rename."""


@dataclass
class Volume:
    """One 3-D image as loaded: float32 voxels in stored order, with the header it came with."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    """Voxel index to RAS millimetres, as nibabel gives it."""
    header: nib.Nifti1Header | None
    """The NIfTI header; ``None`` for a volume read through SimpleITK."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]


def is_itk_path(path: Path) -> bool:
    """Whether ``path`` is read and written through SimpleITK rather than nibabel."""
    return path.name.lower().endswith(ITK_EXTENSIONS)


def affine_from_itk(spacing, origin, direction) -> np.ndarray:
    """The RAS affine of an ITK grid (LPS millimetres, direction row-major, index order x, y, z)."""
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ matrix
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def itk_geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(spacing, origin, direction)`` of an ITK image on the grid of a RAS ``affine``."""
    matrix = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    origin = _LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)[:3, 3]
    return tuple(map(float, spacing)), tuple(map(float, origin)), tuple(map(float, direction.ravel()))


def degenerate_axes(affine: np.ndarray) -> str | None:
    """Why the direction cosines of ``affine`` cannot place voxels in the world, or None when they can."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(spacing < 1e-6):
        return "an axis of zero length (degenerate direction cosines or voxel size 0)"
    direction = matrix / spacing
    if np.max(np.abs(direction.T @ direction - np.eye(3))) > ORTHONORMAL_TOLERANCE:
        return "direction cosines that are not orthonormal (a sheared or degenerate orientation)"
    return None


def load_volume(path: Path, case: str) -> Volume:
    """Read a NIfTI, MetaImage or NRRD file and check that it holds one finite, non-empty 3-D image."""
    problem = unreadable(path)
    if problem:
        raise CaseError(case, f"{path.name} {problem}.", [path])
    if is_itk_path(path):
        return _load_itk(path, case)
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
    header = image.header.copy()
    return _checked(Volume(path, data, image.affine.astype(np.float64), header), case)


def _load_itk(path: Path, case: str) -> Volume:
    name = path.name
    try:
        image = sitk.ReadImage(str(path))
    except Exception as exc:
        raise CaseError(
            case,
            f"{name} cannot be read as a {path.suffix.lstrip('.').upper()} image ({_reason(exc)}); check the "
            "file (and, for .mhd, its .raw/.zraw companion) and re-export it if needed.",
            [path],
        ) from exc
    if image.GetDimension() == 2:
        raise CaseError(
            case,
            f"{name} is a 2-D image {image.GetSize()}; each contrast must be a 3-D volume (export the whole "
            "series, not one slice).",
            [path],
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(
            case,
            f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a vector or colour "
            "image); each contrast must be a single grey-value volume.",
            [path],
        )
    try:
        array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    except Exception as exc:
        raise CaseError(
            case, f"{name} is truncated or corrupt ({_reason(exc)}); copy or export the file again.", [path]
        ) from exc
    # numpy gives (z, y, x); the Volume keeps ITK's index order, as nibabel does for NIfTI
    data = np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1]))
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    if image.GetDimension() != 3:
        spacing, origin = spacing[:3], origin[:3]
        d = image.GetDimension()
        direction = [direction[r * d + c] for r in range(3) for c in range(3)]
    return _checked(Volume(path, data, affine_from_itk(spacing, origin, direction), None), case)


def _checked(volume: Volume, case: str) -> Volume:
    """The checks every contrast must pass, whatever its format."""
    path, name, data = volume.path, volume.path.name, volume.data
    if data.ndim == 4 and data.shape[3] == 1:
        data = volume.data = data[..., 0]
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
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise CaseError(
            case,
            f"{name} is constant (every voxel is {low:g}): no image information; check the export.",
            [path],
        )
    if high <= 0:
        raise CaseError(
            case,
            f"{name} has no positive voxel (values from {low:g} to {high:g}); an MR image is positive: check "
            "the export (an inverted sign?).",
            [path],
        )
    positive = float(data[data > 0].sum(dtype=np.float64))
    negative = -float(data[data < 0].sum(dtype=np.float64))
    if negative > positive:
        # interpolation leaves a few small negative values; an image that is mostly negative is inverted
        raise CaseError(
            case,
            f"{name} is mostly negative (its negative voxels outweigh its positive ones); its sign looks "
            "inverted: check the export.",
            [path],
        )
    if not np.all(np.isfinite(volume.affine)):
        raise CaseError(
            case,
            f"{name} has a NaN or infinite value in its orientation record (affine), so its voxels cannot be "
            "placed in the patient's space; fix the orientation in the export.",
            [path],
        )
    problem = degenerate_axes(volume.affine)
    if problem:
        raise CaseError(
            case,
            f"{name} has {problem}, so its voxels cannot be placed in the patient's space; fix the "
            "orientation in the export (or convert it with a tool that writes a valid header).",
            [path],
        )
    return volume


def grid_difference(a: Volume, b: Volume) -> str | None:
    """How the voxel grids of two volumes differ, in words; None when they are one grid."""
    if a.shape != b.shape:
        return f"{a.path.name} has shape {a.shape} but {b.path.name} has {b.shape}"
    diff = float(np.max(np.abs(a.affine - b.affine)))
    if not diff <= AFFINE_TOLERANCE_MM:  # NaN compares False: a NaN affine is never the same grid
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


def _record_text(record: dict) -> str:
    # sorted, no spaces: the same settings always give the same bytes
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def write_volume(
    data: np.ndarray,
    reference: Volume,
    path: Path,
    description: str = "",
    record: dict | None = None,
) -> None:
    """Write ``data`` as float32 on the grid of ``reference``, atomically, in the format ``path`` names.

    ``record`` (the run's settings, :mod:`brasyn.data.provenance`) goes into a NIfTI comment extension or
    the MetaImage/NRRD metadata key :data:`RECORD_KEY`; ``description`` into NIfTI's ``descrip``.
    NIfTI keeps the header of a NIfTI ``reference`` (qform and sform with their codes). The whole file
    is written under a temporary name in the target folder and renamed, so an interrupted run never
    leaves a partial file under the final name, and the temporary one exists only for the duration of
    one write. MetaImage and NRRD are written through SimpleITK with the reference's spacing, origin
    and direction (see :func:`_write_itk`).
    """
    if data.shape != reference.shape:
        raise ValueError(f"data shape {data.shape} differs from the reference grid {reference.shape}")
    if is_itk_path(path):
        _write_itk(np.asarray(data, dtype=np.float32), reference.affine, path, record)
        return
    if reference.header is None:
        header = nib.Nifti1Header()
        header.set_qform(reference.affine, code=1)
        header.set_sform(reference.affine, code=1)
    else:
        header = reference.header
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), None, header.copy())
    image.set_data_dtype(np.float32)
    # keep both orientation records of the input, with their codes
    image.set_qform(header.get_qform(), code=int(header["qform_code"]))
    image.set_sform(header.get_sform(), code=int(header["sform_code"]))
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = 0.0
    image.header["cal_max"] = 0.0
    if description:
        image.header["descrip"] = description.encode()[:79]
    extensions = image.header.extensions
    # an input that is itself an output of brasyn must not pass its record on
    extensions[:] = [e for e in extensions if not _is_record(e)]
    if record is not None:
        text = _record_text({RECORD_KEY: record})
        extensions.append(nib.nifti1.Nifti1Extension(_COMMENT, text.encode("utf-8")))
    payload = image.to_bytes()
    if path.name.endswith(".gz"):
        # mtime 0: the same image always gives the same bytes
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    atomic_write(path, lambda handle: handle.write(payload), prefix=temporary_prefix())


def _is_record(extension: nib.nifti1.Nifti1Extension) -> bool:
    return extension.get_code() == _COMMENT and bytes(extension.get_content()).startswith(
        b'{"%s":' % RECORD_KEY.encode()
    )


def _write_itk(data: np.ndarray, affine: np.ndarray, path: Path, record: dict | None = None) -> None:
    """Compressed MetaImage or NRRD through SimpleITK, under a temporary name, then renamed.

    ``.mha`` and ``.nrrd`` are single files. A ``.mhd`` header names its pixel file (``<stem>.zraw``),
    which is moved to its final name first and the header, pointing at it, last: the header's rename
    is the moment the output exists, so an interrupted run leaves at most a pixel file that the next
    run overwrites.
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    spacing, origin, direction = itk_geometry(affine)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    if record is not None:
        image.SetMetaData(RECORD_KEY, _record_text(record))
    suffix = path.suffix.lower()
    fd, tmp_name = tempfile.mkstemp(prefix=temporary_prefix(), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    companions: list[Path] = []
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        if suffix == ".mhd":
            header = tmp.read_text()
            pixels = next(tmp.with_suffix(ext) for ext in (".zraw", ".raw") if tmp.with_suffix(ext).exists())
            companions.append(pixels)
            final_pixels = path.with_suffix(pixels.suffix)
            tmp.write_text(
                header.replace(f"ElementDataFile = {pixels.name}", f"ElementDataFile = {final_pixels.name}")
            )
            publish(pixels, final_pixels)
        publish(tmp, path)
    except BaseException:
        for leftover in (tmp, *companions):
            leftover.unlink(missing_ok=True)
        raise


def temporary_prefix() -> str:
    """The start of this process's temporary names: its pid and host, so that another run can tell a
    live run's file from one a killed run left behind."""
    return f"{TEMP_PREFIX}{os.getpid()}.{HOST}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_stale_temporary(path: Path, now: float | None = None) -> bool:
    """Whether ``path`` is a temporary of a brasyn run that is no longer writing it: on this host, its
    process is gone; anywhere, it is older than :data:`STALE_AFTER_S`. Other files, a user's own file
    named like ours included, are never stale."""
    match = _OWNED.match(path.name)
    if match is None:
        return False
    try:
        age = (now or time.time()) - path.lstat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    pid = int(match["pid"])
    return match["host"] == HOST and pid != os.getpid() and not _alive(pid)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that killed runs of brasyn left in ``folder`` (see
    :func:`is_stale_temporary`); a temporary another live run is writing right now is left alone."""
    removed = []
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_file() and is_stale_temporary(entry):
                entry.unlink(missing_ok=True)
                removed.append(entry)
                log.warning("removed %s, left behind by an interrupted run", entry)
    return removed


def unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be opened at all, in words a user can act on; None when it can."""
    if path.is_symlink() and not path.exists():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return (
            f"is a symbolic link to {target}, which does not exist (or is a loop of links); point it at "
            "the image or put the file itself there"
        )
    if path.exists() and not os.access(path, os.R_OK):
        return f"cannot be read: permission denied (uid {os.getuid()}); make it readable for this user"
    return None


def write_problem(exc: OSError, path: Path) -> str:
    """A sentence for an operating-system error while writing ``path``, with what to do."""
    advice = {
        errno.ENOSPC: "free space and rerun",
        errno.EDQUOT: "free space (a quota is full) and rerun",
        errno.EROFS: "the output folder is on a read-only file system; mount it writable and rerun",
        errno.ENOENT: "the output folder disappeared during the run; create it again and rerun",
        errno.EACCES: f"this user (uid {os.getuid()}) may not write there; make it writable and rerun",
        errno.EIO: "the storage reported an input/output error; check it and rerun",
    }.get(exc.errno or 0, "check the output folder and rerun")
    return f"cannot write {path.name} into {path.parent}: {exc.strerror or exc}; {advice}"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
