"""Which prediction belongs to which real image: pairing a folder of synthetic contrasts with the truth.

The truth may be kept as organisers keep it (:func:`truth_cases`): a folder per case with any of its
contrasts (at least the withheld one) and optionally ``<case>-seg.nii.gz``, or one flat folder of
``<case>-<contrast>.nii.gz`` and ``<case>-seg.nii.gz`` files, or the complete cases themselves.

A prediction (a flat file such as ``BraTS-GLI-00001-000-t2f.nii.gz``, ``TCGA-DU-7294_fla_bet.nii.gz`` or
``preprocessed_case-t1n.nii.gz``, or ``<case>/<file>`` in sub-folders) is matched to the truth case and
contrast it names, whatever naming scheme the truth folder uses: by the names brasyn would give it, else
by the longest case id its name starts with. The truth case's segmentation is found beside it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from brasyn.common.errors import CaseError
from brasyn.data.cases import Case
from brasyn.data.modalities import (
    MODALITIES,
    AmbiguousNameError,
    Modality,
    is_annotation_name,
    output_file_name,
    parse_contrast_name,
    split_nifti_extension,
)

__all__ = ["Pair", "pair_predictions", "segmentation_in", "segmentation_of", "truth_cases"]

log = logging.getLogger("brasyn.evaluate")


@dataclass(frozen=True)
class Pair:
    """A prediction and the real image of the same case and contrast."""

    case: str
    contrast: Modality
    prediction: Path
    truth: Path
    segmentation: Path | None = None
    """The truth case's tumour segmentation, when it has exactly one."""


def _key(name: str) -> str:
    """A file name without its NIfTI extension, case-folded: ``.nii`` and ``.nii.gz`` name the same image."""
    split = split_nifti_extension(name)
    return (split[0] if split else name).casefold()


def _names_of(case: Case) -> dict[Modality, str]:
    """The names a prediction of each of the case's contrasts may carry: as brasyn names it from the other
    three files (naming ``input`` and ``brats2023``), and the truth file's own name when it has a prefix."""
    parsed = {m: parse_contrast_name(p.name, case.id) for m, p in case.files.items()}
    names: dict[Modality, list[str]] = {}
    for modality in case.files:
        others = [n for m, n in parsed.items() if m is not modality and n is not None]
        candidates = [
            output_file_name(case.id, modality, others, naming) for naming in ("input", "brats2023")
        ]
        if parsed[modality] is not None and parsed[modality].prefix:
            candidates.append(case.files[modality].name)
        names[modality] = candidates
    return {name: m for m, candidates in names.items() for name in candidates}


def _truth_index(cases: list[Case]) -> dict[str, tuple[Case, Modality] | None]:
    """Prediction name key -> (case, contrast); ``None`` for a key that two truth images share."""
    index: dict[str, tuple[Case, Modality] | None] = {}
    for case in cases:
        for name, modality in _names_of(case).items():
            key = _key(name)
            if key in index and index[key] is not None and index[key] != (case, modality):
                index[key] = None
            else:
                index.setdefault(key, (case, modality))
    return index


def _by_case_id(
    name: str, case_id: str | None, cases: Mapping[str, Case | CaseError]
) -> tuple[Case, Modality] | CaseError | None:
    """The truth case a prediction belongs to by its case id (the sub-folder it lies in, else the longest
    case id its name starts with), and its contrast by its name."""
    stem = _key(name)
    if case_id is None:
        for candidate in sorted(cases, key=len, reverse=True):
            folded = candidate.casefold()
            if stem.startswith(folded) and len(stem) > len(folded) and stem[len(folded)] in "-_.":
                case_id = candidate
                break
    folded_ids = {c.casefold(): c for c in cases}
    if case_id is None or case_id.casefold() not in folded_ids:
        return None
    truth = cases[folded_ids[case_id.casefold()]]
    if isinstance(truth, CaseError):
        return CaseError(truth.case, f"the truth case cannot be used: {truth.message}", truth.files)
    parsed = parse_contrast_name(name, truth.id)
    if parsed is None:
        return CaseError(truth.id, f"{name}: no contrast name (t1n, t1c, t2w, t2f or an alias) in it")
    return truth, parsed.modality


def _prediction_files(root: Path) -> list[tuple[Path, str | None]]:
    """NIfTI files in ``root`` and its sub-folders (one level), each with the sub-folder's name."""
    found: list[tuple[Path, str | None]] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        inner = sorted(entry.iterdir(), key=lambda p: p.name) if entry.is_dir() else [entry]
        for path in inner:
            if path.name.startswith(".") or not path.is_file():
                continue
            if split_nifti_extension(path.name) is None:
                log.warning("ignored %s: not a NIfTI image", path)
            elif is_annotation_name(path.name):
                log.debug("ignored %s: a segmentation or mask", path)
            else:
                found.append((path, entry.name if entry.is_dir() else None))
    return found


_SEGMENTATION_WORDS = frozenset({"seg", "segmentation"})
_SEPARATORS = "-_."


def _after_case_id(stem: str, case_id: str) -> str | None:
    """What follows ``<case>`` and a separator in ``stem`` (letter case ignored), None if it does not
    start so: ``case1`` is not the start of ``case10-seg``."""
    folded, case = stem.casefold(), case_id.casefold()
    if folded.startswith(case) and folded[len(case) : len(case) + 1] in tuple(_SEPARATORS):
        return folded[len(case) + 1 :]
    return None


def _named_after(path: Path, case_id: str) -> bool:
    """``<case>-seg.nii.gz``, ``<case>_segmentation.nii`` ...: the case id, one separator, the word."""
    split = split_nifti_extension(path.name)
    return split is not None and _after_case_id(split[0], case_id) in _SEGMENTATION_WORDS


def _is_segmentation(path: Path, case_id: str, in_case_folder: bool) -> bool:
    """Whether ``path`` is the tumour segmentation of ``case_id``: named after it (:func:`_named_after`)
    anywhere, or, inside the case's own folder, any name with the word seg or segmentation; a mask (brain
    mask, ROI mask) is never one."""
    split = split_nifti_extension(path.name)
    if split is None or not path.is_file():
        return False
    if _named_after(path, case_id):
        return True
    if not in_case_folder:
        return False
    # the case id is not part of what marks a segmentation: a case "no-seg" marks nothing
    rest = _after_case_id(split[0], case_id)
    words = set(re.split(r"[-_.]", rest if rest is not None else split[0].casefold()))
    return bool(words & _SEGMENTATION_WORDS) and not any("mask" in word for word in words)


def _segmentation(folder: Path, case_id: str, in_case_folder: bool) -> Path | None:
    """The one tumour segmentation of ``case_id`` in ``folder`` (see :func:`_is_segmentation`); None, with
    a warning, when there are several."""
    hits = [
        p
        for p in sorted(folder.iterdir(), key=lambda p: p.name)
        if _is_segmentation(p, case_id, in_case_folder)
    ]
    if len(hits) > 1:
        hits = [p for p in hits if _named_after(p, case_id)] or hits
    if len(hits) > 1:
        log.warning(
            "%s: several segmentations (%s); no tumour scores", case_id, ", ".join(p.name for p in hits)
        )
    return hits[0] if len(hits) == 1 else None


def segmentation_in(root: Path, case_id: str) -> Path | None:
    """The tumour segmentation of ``case_id`` in a folder of truth cases or of segmentations only: in
    ``root/<case>/``, else named ``<case>-seg.nii.gz`` (or ``_seg``, ``-segmentation`` ...) in ``root``."""
    folder = root / case_id
    found = _segmentation(folder, case_id, in_case_folder=True) if folder.is_dir() else None
    return found if found is not None else _segmentation(root, case_id, in_case_folder=False)


def segmentation_of(case: Case) -> Path | None:
    """The truth case's one tumour segmentation: beside its images in its own folder, or named after it
    in a flat folder of several cases."""
    return _segmentation(case.folder, case.id, in_case_folder=case.folder.name == case.id)


def _contrast_files(
    paths: list[Path], case_id: str | None
) -> tuple[dict[str, dict[Modality, list[Path]]], list[Path]]:
    """Contrast images among ``paths`` grouped by case id (``case_id``, or each name's own prefix), and
    the names that hold two contrast words."""
    groups: dict[str, dict[Modality, list[Path]]] = {}
    ambiguous: list[Path] = []
    for path in paths:
        if path.name.startswith(".") or not path.is_file() or is_annotation_name(path.name):
            continue
        try:
            parsed = parse_contrast_name(path.name, case_id)
        except AmbiguousNameError:
            ambiguous.append(path)
            continue
        if parsed is None:
            continue
        key = case_id if case_id is not None else parsed.prefix
        if key:
            groups.setdefault(key, {}).setdefault(parsed.modality, []).append(path)
    return groups, ambiguous


def _truth_case(case_id: str, folder: Path, found: dict[Modality, list[Path]]) -> Case | CaseError:
    duplicated = {m: p for m, p in found.items() if len(p) > 1}
    if duplicated:
        details = "; ".join(f"{m.value}: {', '.join(p.name for p in ps)}" for m, ps in duplicated.items())
        return CaseError(case_id, f"more than one truth file for the same contrast ({details}); keep one")
    files = {m: found[m][0] for m in MODALITIES if m in found}
    return Case(case_id, folder, files, None, None)


def truth_cases(root: Path) -> list[Case | CaseError]:
    """The truth cases under ``root``, each with whichever contrasts it holds (one is enough): a folder
    per case, or ``root`` itself holding ``<case>-<contrast>`` files of many cases side by side."""
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    folders = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    result: list[Case | CaseError] = []
    flat, ambiguous = _contrast_files([p for p in entries if p.is_file()], None)
    for case_id, found in sorted(flat.items()):
        result.append(_truth_case(case_id, root, found))
    for folder in folders:
        grouped, unclear = _contrast_files(sorted(folder.iterdir(), key=lambda p: p.name), folder.name)
        ambiguous += unclear
        if folder.name in grouped:
            result.append(_truth_case(folder.name, folder, grouped[folder.name]))
    for path in ambiguous:
        log.warning("ignored %s in the truth: its name holds more than one contrast", path)
    return sorted(result, key=lambda item: item.id if isinstance(item, Case) else item.case)


def pair_predictions(predictions: Path, truth: Path) -> tuple[list[Pair], list[CaseError]]:
    """Every prediction in ``predictions`` paired with its truth image, and a CaseError for each that
    cannot be (no such case or contrast in the truth, a name that says neither, two for one image)."""
    found = truth_cases(truth)
    cases = {item.id if isinstance(item, Case) else item.case: item for item in found}
    good = [item for item in found if isinstance(item, Case)]
    index = _truth_index(good)
    pairs: dict[tuple[str, Modality], list[Pair]] = {}
    errors: list[CaseError] = []
    for path, folder in _prediction_files(predictions):
        label = f"{folder}/{path.name}" if folder else path.name
        try:
            match = _by_case_id(path.name, folder, cases) if folder else index.get(_key(path.name))
            if match is None and folder is None:
                match = _by_case_id(path.name, None, cases)
        except AmbiguousNameError as e:
            errors.append(CaseError(folder or path.name, f"{label}: {e}", [path]))
            continue
        if isinstance(match, CaseError):
            errors.append(CaseError(match.case, f"{label}: {match.message}", [path, *match.files]))
            continue
        if match is None:
            errors.append(
                CaseError(
                    folder or _key(path.name),
                    f"no case in the truth folder {truth} matches the prediction {label}; name it "
                    "<case>-<contrast>.nii.gz after a case folder of the truth",
                    [path],
                )
            )
            continue
        case, contrast = match
        if contrast not in case.files:
            errors.append(
                CaseError(case.id, f"the truth case has no {contrast.value} to compare {label} with", [path])
            )
            continue
        pair = Pair(case.id, contrast, path, case.files[contrast], segmentation_of(case))
        pairs.setdefault((case.id, contrast), []).append(pair)
    result = []
    for (case_id, contrast), candidates in pairs.items():
        if len(candidates) > 1:
            names = ", ".join(str(p.prediction) for p in candidates)
            errors.append(
                CaseError(
                    case_id, f"{len(candidates)} predictions of its {contrast.value}: {names}; keep one"
                )
            )
        else:
            result.append(candidates[0])
    return sorted(result, key=lambda p: (p.case, MODALITIES.index(p.contrast))), errors
