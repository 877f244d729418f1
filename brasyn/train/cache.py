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
full disk stops the preparation at once with one message (exit 2); a warning comes first when the cases
will not fit at the BraTS size. A cache that cannot be written is refused before any case is read. One
``prepare`` writes into a cache at a time (:mod:`brasyn.train.cache_lock`); the cases are prepared in
worker processes (:mod:`brasyn.train.workers`) that end with the preparation, and a worker killed loses
its case alone.

Reading the entries back, each JSON is checked against what training will do with it before any step is
taken, so that a damaged entry is named and left out at the start instead of breaking a draw hours later.
An entry is left out, with a warning that names it and says to prepare the cache again, when its JSON
cannot be read, is of another format version, or describes something no preparation writes: a shape that
is not (4, D, H, W), a brain count per slice of another length than D, negative or above H x W, or a
99.9th percentile that is not a positive finite number; or when its array is missing or its header is not
the uint16 array of that shape. The array's values are checked where they are read
(:class:`brasyn.train.loader.CacheDataset`).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
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
from brasyn.train.cache_lock import CacheLock, NotWritable
from brasyn.train.training_data import find_training_cases
from brasyn.train.workers import Lost, run_in_workers
from brasyn.transform.model_space import to_model_space

__all__ = [
    "CacheEntry",
    "DiskFull",
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
    _write_entry_file(array, lambda handle: _write_array(handle, quantised))
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


class _Stream:
    """A file seen only through ``write``: numpy then writes an array in chunks through it, where for a
    real file it calls ``tofile``, whose short write on a full disk is an OSError without its errno."""

    def __init__(self, handle: BinaryIO) -> None:
        self.write = handle.write


def _write_array(handle: BinaryIO, array: np.ndarray) -> None:
    np.lib.format.write_array(_Stream(handle), array, allow_pickle=False)  # type: ignore[arg-type]


def _write_entry_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """An entry's file, atomically: its temporary ends in :data:`TEMPORARY`, so the next run's clean-up
    finds one a killed run left; not flushed to disk, since a lost entry is only prepared again."""
    atomic_write(path, write, suffix=TEMPORARY, durable=False)


class DiskFull(BrasynError):
    """The cache's disk is full: every further case would fail the same way."""


Failure = tuple[str, str, tuple[Path, ...]]
"""A case error as plain values: :class:`CaseError` itself does not cross a process boundary."""

FULL = (errno.ENOSPC, errno.EDQUOT)


def _prepare_one(case: Case, cache: Path) -> str | Failure:
    """One case, in a worker or here: a failed case comes back as a value, so that the others go on."""
    try:
        return prepare_case(case, cache)
    except CaseError as exc:
        return exc.case, exc.message, exc.files
    except OSError as exc:
        if exc.errno in FULL:
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


def _lost(case: Case, lost: Lost) -> Failure:
    return (
        case.id,
        f"its prepare worker was {lost.describe()} (the out-of-memory killer does this when memory runs "
        "out) before the case was written: run prepare again, with fewer --workers if memory is short",
        tuple(case.files.values()),
    )


def _not_writable(cache: Path, exc: OSError) -> UsageError:
    return UsageError(
        f"the cache folder {cache} cannot be written ({exc.strerror or exc}): give --cache a folder this "
        "user may write (not a read-only mount), or mount it writable"
    )


def _check_writable(cache: Path) -> None:
    """A file can be made in ``cache`` (a root user passes a permission check that a read-only mount
    still refuses, so this writes instead of asking)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".brasyn-probe-", suffix=TEMPORARY, dir=cache)
    except OSError as exc:
        raise _not_writable(cache, exc) from None
    Path(name).unlink()
    os.close(fd)


def _split(cases: Sequence[Case], cache: Path, result: PrepareResult) -> list[Case]:
    """The cases to prepare: not those already up to date (into ``result.kept``), nor a second case of a
    name (into ``result.errors``)."""
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
        if _is_current(case, cache):
            result.kept.append(case.id)
        else:
            todo.append(case)
    return todo


def _clean(cache: Path, cases: Sequence[Case]) -> None:
    """Remove what a killed writer leaves (the lock is held: no other writer is at work): temporary
    files, and an array of one of ``cases`` whose JSON never came."""
    for stale in cache.glob(f"*{TEMPORARY}"):
        stale.unlink(missing_ok=True)
    for case in cases:
        array, meta = _paths(cache, case.id)
        if not meta.exists():
            array.unlink(missing_ok=True)


def prepare_cache(
    cases: Sequence[Case], cache: Path, workers: int = 1, progress: bool = True
) -> PrepareResult:
    """Bring every case of ``cases`` into ``cache`` (made if absent); entries already up to date are kept,
    left-over temporary files removed. ``workers`` > 1 prepares that many cases at once in processes.

    UsageError before any case is read when the cache cannot be written (a cache that is already up to
    date may be read-only); DiskFull when its disk fills up, the cases finished so far kept."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = CacheLock(cache).__enter__()
    except NotWritable as exc:
        result = PrepareResult([], [], [])
        if _split(cases, cache, result):
            raise _not_writable(cache, exc) from None
        log.info("the cache %s cannot be written but holds every case up to date: used as it is", cache)
        return result
    except OSError as exc:
        raise _not_writable(cache, exc) from None
    try:
        _check_writable(cache)
        _clean(cache, ())
        return _prepare_locked(cases, cache, workers, progress)
    finally:
        lock.__exit__(None, None, None)


def _prepare_locked(cases: Sequence[Case], cache: Path, workers: int, progress: bool) -> PrepareResult:
    result = PrepareResult([], [], [])
    todo = _split(cases, cache, result)
    if result.kept and todo:
        log.info("%d case(s) already prepared in %s; preparing %d", len(result.kept), cache, len(todo))
    bar = tqdm(total=len(todo), desc="prepare", unit="case", file=sys.stderr, disable=not progress)

    def collect(case: Case, outcome: str | Failure | Lost) -> None:
        if isinstance(outcome, Lost):
            # a worker can die between renaming its entry into place and handing back its result: the
            # entry it left is whole (renames are atomic), so the case is prepared, not lost
            if _is_current(case, cache):
                log.info("%s: its prepare worker was %s after writing it: kept", case.id, outcome.describe())
                outcome = case.id
            else:
                outcome = _lost(case, outcome)
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
                collect(case, _prepare_one(case, cache))
        else:
            run_in_workers(todo, functools.partial(_prepare_one, cache=cache), workers, collect)
    finally:
        bar.close()
        _clean(cache, todo)  # after a stop, a full disk or a killed worker: nothing partial stays
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
    """The entry a JSON record describes; ValueError (what is wrong) where training could not use it."""
    if record.get("format") != FORMAT:
        raise ValueError(f"format {record.get('format')}, expected {FORMAT}")
    shape = tuple(int(n) for n in record["shape"])
    if len(shape) != 4 or shape[0] != len(MODALITIES) or min(shape) <= 0:
        raise ValueError(f"shape {list(shape)}, expected [4, D, H, W]")
    slices = np.asarray(record["brain_slices"], dtype=np.float64)
    if slices.shape != (shape[1],):
        raise ValueError(f"brain_slices holds {slices.size} counts for {shape[1]} slices")
    if not (np.isfinite(slices).all() and (slices >= 0).all() and (slices <= shape[2] * shape[3]).all()):
        raise ValueError(f"brain_slices holds a count outside 0 .. {shape[2] * shape[3]}")
    percentiles = {Modality(k): float(v) for k, v in record["percentiles"].items()}
    if set(percentiles) != set(MODALITIES):
        raise ValueError(f"percentiles of {', '.join(sorted(m.value for m in percentiles))}")
    for m, value in percentiles.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"the {m.value} percentile is {value}")
    return CacheEntry(
        id=str(record["id"]),
        array=meta.with_suffix(".npy"),
        shape=shape,  # type: ignore[arg-type]
        brain_slices=slices.astype(np.int64),
        percentiles=percentiles,
    )


def _check_array(entry: CacheEntry) -> None:
    """The array's header (a few bytes): present, uint16, the JSON's shape."""
    array = np.load(entry.array, mmap_mode="r")
    if array.shape != tuple(entry.shape) or array.dtype != np.uint16:
        raise ValueError(
            f"its array holds {array.dtype} {list(array.shape)}, its JSON says uint16 {list(entry.shape)}"
        )


def load_entries(cache: Path, ids: Iterable[str] | None = None) -> list[CacheEntry]:
    """The complete, sound entries of ``cache`` (only those of ``ids`` when given), sorted by case id.
    Only the JSON files and the arrays' headers are read: the arrays are opened when a batch is drawn."""
    wanted = None if ids is None else set(ids)
    entries = []
    for meta in sorted(cache.glob("*.json")):
        if wanted is not None and meta.stem not in wanted:
            continue
        try:
            entry = _entry(meta, json.loads(meta.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("skipping the cache entry %s (%s): prepare the cache again", meta, exc)
            continue
        if not entry.array.is_file():
            log.warning("skipping the cache entry %s: its array %s is missing", meta, entry.array.name)
            continue
        try:
            _check_array(entry)
        except (OSError, ValueError, EOFError) as exc:
            log.warning("skipping the cache entry %s (%s): prepare the cache again", meta, exc)
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
