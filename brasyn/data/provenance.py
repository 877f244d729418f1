"""The settings an output was synthesised with, recorded in the file itself, and what a rerun does with it.

Every output carries a record (a flat JSON object): the brasyn version, the target, the method and what
decides its voxels (sampler, steps, eta where the sampler uses it, precision, the sha256 of the weights, the
seed where the method draws random numbers, the number of draws averaged, ``--grid-of`` and whether the
case was resampled). NIfTI holds
it as a header extension of code 6 (comment) with ``{"brasyn": {...}}`` and a short form in ``descrip``;
MetaImage and NRRD hold it under the metadata key ``brasyn`` (:func:`brasyn.data.volumes.write_volume` writes
it, :func:`read_record` reads it back). Nothing in it depends on the time or the machine, so two runs with
the same settings still write the same bytes.

A rerun into a folder that holds an output compares the record with its own settings
(:func:`decide`): the same settings -> the output is kept (the run resumes); different ones -> the case is
synthesised again and the file replaced atomically; no record (another tool's file, or one of a brasyn
that did not record) -> kept, with a warning. ``--resume-any`` keeps every output, ``--overwrite``
replaces every one.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import SimpleITK as sitk

from brasyn.data.volumes import RECORD_KEY, is_itk_path

__all__ = [
    "COMPARED",
    "Decision",
    "decide",
    "describe",
    "differences",
    "read_record",
    "short_description",
]

log = logging.getLogger(__name__)

COMPARED = ("method", "sampler", "steps", "eta", "precision", "weights", "seed", "draws")
"""The settings that decide an output's voxels: a rerun that differs in one of them synthesises again.
``grid_of`` counts too, for a case that was resampled (otherwise it changes nothing). Speed switches,
device and thread count are not compared: they change no setting of the model, only (on some devices)
the last bits of a float."""


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings record of an existing output (a path or its text), or None where it holds none (or
    cannot be read)."""
    path = Path(path)
    try:
        if is_itk_path(path):
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            if not reader.HasMetaDataKey(RECORD_KEY):
                return None
            record = json.loads(reader.GetMetaData(RECORD_KEY))
        else:
            record = _nifti_record(path)
    except Exception as exc:  # a damaged or foreign file: its settings are unknown, which is an answer
        log.debug("no settings record readable in %s: %s", path, exc)
        return None
    return record if isinstance(record, dict) else None


def _nifti_record(path: Path) -> Any:
    header = nib.load(str(path)).header
    found = None
    for extension in getattr(header, "extensions", ()):
        if extension.get_code() != 6:
            continue
        try:
            content = json.loads(bytes(extension.get_content()).rstrip(b"\0").decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # someone else's comment
        if isinstance(content, dict) and RECORD_KEY in content:
            found = content[RECORD_KEY]
    return found


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The compared settings in which ``old`` (an output's record) and ``new`` (this run's) differ."""
    if old.get("method") != new.get("method"):
        return ["method"]  # the rest belongs to one method or the other: naming it says nothing more
    keys = [k for k in COMPARED if _setting(old, k) != _setting(new, k)]
    if "sampler" in keys and "eta" in keys:
        keys.remove("eta")  # recorded for ddim alone: it differs because the sampler does
    if old.get("resampled") and old.get("grid_of") != new.get("grid_of"):
        keys.append("grid_of")
    return keys


def _setting(record: dict[str, Any], key: str) -> Any:
    """A compared setting of a record; a sampled output that records no ``draws`` was one draw (it was
    written before several could be taken, and is what ``--draws 1`` writes)."""
    if key == "draws" and "sampler" in record:
        return record.get("draws", 1)
    return record.get(key)


def describe(record: dict[str, Any], keys: list[str]) -> str:
    """``keys`` of ``record`` in words, e.g. ``sampler x0, steps 1``."""
    return ", ".join(f"{k} {_value(k, _setting(record, k))}" for k in keys)


def _value(key: str, value: Any) -> str:
    if value is None:
        return "(default)" if key == "grid_of" else "(none)"
    if key == "weights" and isinstance(value, str):
        return f"sha256 {value[:12]}"
    return str(value)


def short_description(record: dict[str, Any]) -> str:
    """The record in the 80 bytes of a NIfTI ``descrip``: version, target, method and, for a sampler,
    sampler, steps and seed."""
    words = ["brasyn", str(record.get("version", "")), str(record.get("target", "")), str(record["method"])]
    if "sampler" in record:
        words += [str(record["sampler"]), f"{record.get('steps')} steps", f"seed {record.get('seed')}"]
        if record.get("draws", 1) > 1:
            words.append(f"mean of {record['draws']}")
    return " ".join(w for w in words if w)[:79]


@dataclass(frozen=True)
class Decision:
    """What to do with a case whose output may already exist."""

    work: bool
    """Synthesise (and write or replace the output)."""
    message: str = ""
    """For a kept output: the case's line in the log and report; for a replaced one: why."""
    note: str | None = None
    """The short reason the report records (``replaced: settings differed``, ``kept: settings unknown``,
    ``kept: --resume-any``); None for a new output or one kept with the same settings."""


def decide(
    path: Path, settings: dict[str, Any], overwrite: bool = False, resume_any: bool = False
) -> Decision:
    """Whether the output ``path`` is (re)written by a run with ``settings`` (see the module text)."""
    if not path.exists():
        return Decision(True)
    name = path.name
    if overwrite:
        return Decision(True, f"{name} is replaced (--overwrite)", "replaced: --overwrite")
    if resume_any:
        return Decision(False, f"{name} already exists; kept (--resume-any)", "kept: --resume-any")
    old = read_record(path)
    if old is None:
        return Decision(
            False,
            f"{name} already exists but records no brasyn settings (another tool's file, or an older "
            "brasyn's): kept, its settings unknown; use --overwrite to replace it",
            "kept: settings unknown",
        )
    changed = differences(old, settings)
    if not changed:
        return Decision(
            False, f"{name} already exists with this run's settings (use --overwrite to replace it)"
        )
    return Decision(
        True,
        f"{name} was written with {describe(old, changed)}; this run uses {describe(settings, changed)}: "
        "synthesising it again (--resume-any keeps it)",
        "replaced: settings differed",
    )
