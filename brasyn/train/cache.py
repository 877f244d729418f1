"""The preprocessed case cache: every complete case in model space once, for all four targets
(``python -m brasyn.train prepare``, :mod:`brasyn.commands.prepare`).

Each case goes through the same discovery, checks and transform into model space as inference
(:func:`brasyn.transform.model_space.to_model_space`, cases on differing grids included) and becomes two
files:

- ``<id>.npy``: the four contrasts (t1n, t1c, t2w, t2f) as one (4, D, H, W) uint16 array, memory-mappable;
  a value v stands for v / 65535 in [0, 1] (rounded to the nearest step, at most 7.7e-6 away; a voxel that
  is not 0 never becomes 0, so the brain mask, the voxels where any contrast is non-zero, is exact);
- ``<id>.json``: case id, shape, the brain's bounding box and its voxel count per first-axis slice (patch
  centres are drawn from them), each contrast's 99.9th percentile (the intensity ratios) and the size and
  modification time of the source files (a changed source is prepared again).

Both are written under temporary names and renamed, the JSON last: an entry is used only when its JSON is
there, so a killed ``prepare`` leaves nothing half-written in use, and a rerun continues with the cases
not yet done. A case that fails its checks is reported with its reason; the others are still prepared. A
full disk stops the preparation with one message (exit 2); a warning comes first when the cases will not fit
at the BraTS size.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from brasyn.common.errors import BrasynError, CaseError, ExitCode, UsageError
from brasyn.common.files import atomic_write
from brasyn.data.cases import Case
from brasyn.data.contrast_map import ContrastMap
from brasyn.data.modalities import MODALITIES, Modality
from brasyn.data.volumes import load_volume
from brasyn.train.training_data import find_training_cases
from brasyn.transform.model_space import to_model_space

__all__ = [
    "CacheEntry",
    "PrepareResult",
    "SCALE",
    "dequantise",
    "load_entries",
    "prepare_cache",
    "prepare_case",
    "prepare_folders",
    "quantise",
]

log = logging.getLogger("brasyn.cache")

FORMAT = 1
"""Version of the entry layout; an entry of another version is prepared again."""
SCALE = 65535
"""uint16 step: a stored value v stands for v / SCALE."""
TEMPORARY = ".part"
"""Suffix of files being written; left over by a killed run, removed by the next one."""


@dataclass(frozen=True)
class CacheEntry:
    """One prepared case: its array file and what training needs to draw from it without reading it."""

    id: str
    array: Path
    shape: tuple[int, int, int, int]
    """(4, D, H, W): the four contrasts in canonical order (t1n, t1c, t2w, t2f)."""
    brain_slices: np.ndarray
    """Brain voxels in each first-axis slice of the model space (int64, length D)."""
    percentiles: dict[Modality, float]
    """99.9th percentile of each contrast in its own units."""


@dataclass
class PrepareResult:
    prepared: list[str]
    kept: list[str]
    """Entries already up to date (nothing read)."""
    errors: list[CaseError]


def quantise(stack: np.ndarray) -> np.ndarray:
    """[0, 1] float to uint16 steps of 1 / SCALE; a non-zero voxel stays non-zero (the brain mask is the
    non-zero voxels, and patch centres are drawn from it)."""
    q = np.rint(np.clip(stack, 0.0, 1.0) * SCALE).astype(np.uint16)
    q[(q == 0) & (stack > 0)] = 1
    return q


def dequantise(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / np.float32(SCALE)


def _sources(case: Case) -> dict[str, dict[str, Any]]:
    out = {}
    for m in MODALITIES:
        stat = case.files[m].stat()
        out[m.value] = {"path": str(case.files[m]), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return out


def _paths(cache: Path, case_id: str) -> tuple[Path, Path]:
    return cache / f"{case_id}.npy", cache / f"{case_id}.json"


def _is_current(case: Case, cache: Path) -> bool:
    """The entry exists, is complete and was made from the sources as they are now."""
    array, meta = _paths(cache, case.id)
    if not (meta.is_file() and array.is_file()):
        return False
    try:
        record = json.loads(meta.read_text())
        return record.get("format") == FORMAT and record.get("sources") == _sources(case)
    except (OSError, ValueError):
        return False


def prepare_case(case: Case, cache: Path) -> str:
    """Load, check and bring one complete case into model space and store it as a cache entry; returns
    the case id. Raises :class:`CaseError` (the case and what to do) when the case fails its checks."""
    sources = _sources(case)  # before reading: a file changed while it is read is prepared again
    array, meta = _paths(cache, case.id)
    # an outdated entry goes first, its JSON before its array: should this case now fail, none is left
    meta.unlink(missing_ok=True)
    array.unlink(missing_ok=True)
    volumes = {m: load_volume(case.files[m], case.id) for m in MODALITIES}
    stack, record = to_model_space(volumes, MODALITIES, case.id)
    brain = stack.any(axis=0)
    quantised = quantise(stack)
    del stack
    nonzero = np.nonzero(brain.any(axis=(1, 2)))[0], np.nonzero(brain.any(axis=(0, 2)))[0]
    nonzero += (np.nonzero(brain.any(axis=(0, 1)))[0],)
    bbox = [[int(a[0]), int(a[-1]) + 1] if len(a) else [0, 0] for a in nonzero]
    # plain writes, not a memory map: a full disk is then an OSError (ENOSPC), where writing through a
    # memory map would kill the process
    _write_entry_file(array, lambda handle: np.lib.format.write_array(handle, quantised, allow_pickle=False))
    entry = {
        "format": FORMAT,
        "id": case.id,
        "shape": list(quantised.shape),
        "contrasts": [m.value for m in MODALITIES],
        "dtype": "uint16",
        "scale": SCALE,
        "brain_bbox": bbox,
        "brain_slices": [int(n) for n in brain.sum(axis=(1, 2))],
        "percentiles": {m.value: float(p) for m, p in record.percentiles.items()},
        "resampled": record.resampled,
        "sources": sources,
    }
    # last: from now on the entry is used
    _write_entry_file(meta, lambda handle: handle.write((json.dumps(entry) + "\n").encode()))
    return case.id


def _write_entry_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """An entry's file, atomically: its temporary ends in :data:`TEMPORARY`, so the next run's clean-up
    finds one a killed run left; not flushed to disk, since a lost entry is only prepared again."""
    atomic_write(path, write, suffix=TEMPORARY, durable=False)


class DiskFull(BrasynError):
    """The cache's disk is full: every further case would fail the same way."""


Failure = tuple[str, str, tuple[Path, ...]]
"""A case error as plain values: :class:`CaseError` itself does not cross a process boundary."""


def _prepare_one(case: Case, cache: Path) -> str | Failure:
    """For the process pool: a failed case comes back as a value, so that the others go on."""
    try:
        return prepare_case(case, cache)
    except CaseError as exc:
        return exc.case, exc.message, exc.files
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(
                f"the disk of the cache {cache} is full ({exc.strerror}) while preparing {case.id}: free "
                "space or give --cache a folder on a larger disk (about 64 MB a BraTS-size case), then run "
                "prepare again: the cases already prepared are kept"
            ) from None
        message = f"could not be prepared ({type(exc).__name__}: {exc})"
        return case.id, message, tuple(case.files.values())
    except (ValueError, RuntimeError, MemoryError) as exc:
        message = f"could not be prepared ({type(exc).__name__}: {exc})"
        return case.id, message, tuple(case.files.values())


def prepare_cache(
    cases: Sequence[Case], cache: Path, workers: int = 1, progress: bool = True
) -> PrepareResult:
    """Bring every case of ``cases`` into ``cache`` (made if absent); entries already up to date are kept,
    left-over temporary files removed. ``workers`` > 1 prepares that many cases at once in processes."""
    cache.mkdir(parents=True, exist_ok=True)
    for stale in cache.glob(f"*{TEMPORARY}"):
        stale.unlink()
    result = PrepareResult([], [], [])
    seen: dict[str, Path] = {}
    todo: list[Case] = []
    for case in cases:
        if case.id in seen:
            result.errors.append(
                CaseError(
                    case.id,
                    f"two case folders share this name ({seen[case.id]} and {case.folder}); a cache holds "
                    "one entry per case name: rename one of them",
                    [case.folder],
                )
            )
            continue
        seen[case.id] = case.folder
        (result.kept if _is_current(case, cache) else todo).append(case)
    if result.kept and todo:
        log.info("%d case(s) already prepared in %s; preparing %d", len(result.kept), cache, len(todo))
    result.kept = [c.id for c in result.kept]  # type: ignore[misc]
    bar = tqdm(total=len(todo), desc="prepare", unit="case", file=sys.stderr, disable=not progress)

    def collect(outcome: str | Failure) -> None:
        if not isinstance(outcome, str):
            error = CaseError(*outcome)
            log.error("%s", error)  # now, not at the end: a long run shows failures as they come
            result.errors.append(error)
        else:
            result.prepared.append(outcome)
        bar.update(1)

    _warn_about_space(cache, len(todo))
    try:
        if workers <= 1 or len(todo) <= 1:
            for case in todo:
                collect(_prepare_one(case, cache))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = [pool.submit(_prepare_one, case, cache) for case in todo]
                try:
                    for future in as_completed(futures):
                        collect(future.result())
                except DiskFull:
                    pool.shutdown(cancel_futures=True)  # the cases not begun would fail the same way
                    raise
    finally:
        bar.close()
    return result


TYPICAL_ENTRY_BYTES = 4 * 224 * 224 * 160 * 2 + 128
"""An entry of a BraTS-size case: four 224x224x160 uint16 volumes and the .npy header (the JSON is small)."""


def _warn_about_space(cache: Path, cases: int) -> None:
    """A warning before a long preparation that will not fit on the cache's disk at the typical size."""
    need = cases * TYPICAL_ENTRY_BYTES
    free = shutil.disk_usage(cache).free
    if cases and need > free:
        log.warning(
            "%d case(s) to prepare need about %.1f GB in %s at the BraTS size (64.2 MB each), and its disk "
            "has %.1f GB free: the preparation will stop when the disk is full",
            cases,
            need / 1e9,
            cache,
            free / 1e9,
        )


def _entry(meta: Path, record: dict[str, Any]) -> CacheEntry:
    return CacheEntry(
        id=str(record["id"]),
        array=meta.with_suffix(".npy"),
        shape=tuple(int(n) for n in record["shape"]),  # type: ignore[arg-type]
        brain_slices=np.asarray(record["brain_slices"], dtype=np.int64),
        percentiles={Modality(k): float(v) for k, v in record["percentiles"].items()},
    )


def load_entries(cache: Path, ids: Iterable[str] | None = None) -> list[CacheEntry]:
    """The complete entries of ``cache`` (only those of ``ids`` when given), sorted by case id. Only JSON
    files are read: the arrays are opened when a batch is drawn."""
    wanted = None if ids is None else set(ids)
    entries = []
    for meta in sorted(cache.glob("*.json")):
        if wanted is not None and meta.stem not in wanted:
            continue
        try:
            record = json.loads(meta.read_text())
            if record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format')}, expected {FORMAT}")
            entry = _entry(meta, record)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping the cache entry %s (%s): prepare the cache again", meta, exc)
            continue
        if not entry.array.is_file():
            log.warning("skipping the cache entry %s: its array %s is missing", meta, entry.array.name)
            continue
        entries.append(entry)
    return entries


def prepare_folders(
    data: Sequence[Path],
    cache: Path,
    mapping: ContrastMap | None = None,
    workers: int = 1,
    progress: bool = True,
) -> ExitCode:
    """Prepare the complete cases of the ``data`` folders into ``cache``: FAILED_CASES when some case
    failed (each named with its reason); BrasynError when none could be prepared."""
    for folder in data:
        if not folder.is_dir():
            raise UsageError(f"the data folder {folder} does not exist or is not a folder")
    if cache.exists() and not cache.is_dir():
        raise UsageError(f"--cache {cache} is a file; name a folder for the cache")
    cases = find_training_cases(list(data), mapping)
    result = prepare_cache(cases, cache, workers, progress)
    log.info(
        "cache %s: %d case(s) prepared, %d already up to date, %d failed",
        cache,
        len(result.prepared),
        len(result.kept),
        len(result.errors),
    )
    if result.errors and not (result.prepared or result.kept):
        raise BrasynError("no case could be prepared (see the errors above)")
    return ExitCode.FAILED_CASES if result.errors else ExitCode.OK
