"""Finding cases in an input folder and deciding which contrast each one lacks.

Discovery only looks at names (no image is opened), so it can judge a whole input folder up front and
report every badly named case before any time is spent on the model. Per-case problems come back as
:class:`~brasyn.errors.CaseError` items in the result, so one bad case never stops the others.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from brasyn.errors import BrasynError, CaseError, UsageError
from brasyn.modalities import (
    MODALITIES,
    NAMING_SCHEMES,
    AmbiguousNameError,
    ContrastName,
    Modality,
    conditions_for,
    is_annotation_name,
    modality_from_alias,
    output_file_name,
    parse_contrast_name,
    split_image_extension,
)

__all__ = ["Case", "complete_cases", "describe_no_cases", "discover", "refuse_no_cases"]

logger = logging.getLogger(__name__)

_NEEDS_THREE = "each case needs three of " + ", ".join(m.value for m in MODALITIES)


@dataclass(frozen=True)
class Case:
    """One case folder: the contrasts found in it and what, if anything, to synthesise."""

    id: str
    """The case folder's name (for a root that directly holds images: the root's name)."""
    folder: Path
    files: dict[Modality, Path]
    """Every contrast found (three or four)."""
    target: Modality | None
    """Contrast to synthesise; ``None`` when there is nothing to do (see ``skip_reason``)."""
    output_name: str | None
    """Flat file name of the synthetic contrast; ``None`` when ``target`` is ``None``."""
    skip_reason: str | None = None
    """Why ``target`` is ``None``, in a sentence for the log."""

    @property
    def complete(self) -> bool:
        """Whether the case holds all four contrasts (what training, fitting and scoring need)."""
        return all(m in self.files for m in MODALITIES)

    @property
    def conditions(self) -> dict[Modality, Path]:
        """The three inputs of the model, in :func:`conditions_for` order.

        When all four contrasts are present the target's own file is left out, so pseudo-validation
        never shows the model the answer. Empty for a case with nothing to synthesise.
        """
        if self.target is None:
            return {}
        return {m: self.files[m] for m in conditions_for(self.target)}


def discover(
    root: Path | str, target: Modality | str | None = None, naming: str = "input"
) -> list[Case | CaseError]:
    """Every case under ``root``, sorted by case id, each a :class:`Case` or the :class:`CaseError` that
    stops it.

    Every visible sub-folder of ``root`` is a case; a root that directly holds contrast images is itself
    one case. A root holding both contrast images and sub-folders is refused with a
    :class:`~brasyn.errors.BrasynError`: whether the user meant one case or many cannot be told, and a
    guess would either skip the folders or mix a stray image into nothing.

    ``target`` (any alias, e.g. ``flair``) forces the contrast to synthesise: a case with all four
    contrasts then has it synthesised from the other three (pseudo-validation), and a case missing a
    different contrast is skipped. ``naming`` is one of :data:`~brasyn.modalities.NAMING_SCHEMES`
    (see :func:`~brasyn.modalities.output_file_name`).
    """
    if naming not in NAMING_SCHEMES:
        raise ValueError(f"naming must be one of {', '.join(NAMING_SCHEMES)}, not {naming!r}")
    wanted = None if target is None else modality_from_alias(target)
    root = Path(root)
    if not root.exists():
        raise BrasynError(f"the input folder {root} does not exist; check the path or the volume mount")
    if not root.is_dir():
        raise BrasynError(f"the input {root} is a file, not a folder; give the folder that holds the cases")
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as error:
        raise BrasynError(f"cannot read the input folder {root}: {error.strerror or error}") from error

    visible = [p for p in entries if not p.name.startswith(".")]
    folders = [p for p in visible if p.is_dir()]
    images = [p for p in visible if p.is_file() and _looks_like_contrast(p.name)]
    if images and folders:
        raise BrasynError(
            f"the input folder {root} holds both contrast images ({_names(images)}) and sub-folders "
            f"({_names(folders)}); put each case's images in a folder of its own under {root}, "
            "or give one case folder as the input"
        )
    if images:
        case_dirs = [(root.resolve().name or "case", root)]
    else:
        case_dirs = []
        for folder in folders:
            if _holds_images(folder):
                case_dirs.append((folder.name, folder))
            else:
                logger.warning("ignored the folder %s: it holds no image (not a case)", folder.name)
        for path in visible:
            if not path.is_dir():
                logger.debug("ignored %s in the input folder: not a case folder", path.name)
    results = [_read_case(case_id, folder, wanted, naming) for case_id, folder in case_dirs]
    return _refuse_collisions(results)


def complete_cases(found: Iterable[Case | CaseError], purpose: str) -> tuple[list[Case], list[CaseError]]:
    """Discovery results split into the cases that hold all four contrasts and the rest, each of the rest
    as a :class:`CaseError` saying what it lacks and that ``purpose`` (e.g. "training") needs all four."""
    complete: list[Case] = []
    rest: list[CaseError] = []
    for item in found:
        if isinstance(item, CaseError):
            rest.append(item)
        elif item.complete:
            complete.append(item)
        else:
            absent = ", ".join(m.value for m in MODALITIES if m not in item.files)
            rest.append(
                CaseError(
                    item.id,
                    f"no {absent}; {purpose} needs all four contrasts (t1n, t1c, t2w, t2f)",
                    item.files.values(),
                )
            )
    return complete, rest


def _holds_images(folder: Path) -> bool:
    """Whether ``folder`` holds any image file (a folder that cannot be read counts: its case fails)."""
    try:
        return any(
            split_image_extension(p.name) is not None for p in folder.iterdir() if not p.name.startswith(".")
        )
    except OSError:
        return True


_NNUNET = re.compile(r"_\d{4}\.(nii|nii\.gz|mha|nrrd)$", re.IGNORECASE)


def describe_no_cases(root: Path) -> str:
    """Why discovery found no case in ``root``, and what names it expects (a wrong mount, an empty folder,
    or images named in another scheme)."""
    entries = [p for p in sorted(root.iterdir(), key=lambda p: p.name) if not p.name.startswith(".")]
    expected = (
        "one folder per case holding three of its contrasts, named like <case>-t1n.nii.gz, "
        "<case>-t1c.nii.gz, <case>-t2w.nii.gz, <case>-t2f.nii.gz (or t1, t1ce, t2, flair)"
    )
    if not entries:
        return f"the input folder {root} is empty (is the right folder mounted?); expected {expected}"
    shown = _names(entries)
    nnunet = [p for p in entries if _NNUNET.search(p.name)]
    if nnunet:
        return (
            f"the input folder {root} holds {shown}: nnU-Net channel files (case_0000.nii.gz ...) name no "
            "contrast; rename each to the contrast it holds (your dataset.json maps the channel numbers, "
            f"e.g. 0000 -> t1n) and put each case in its own folder; expected {expected}"
        )
    return f"no case found in the input folder {root} (it holds {shown}); expected {expected}"


def refuse_no_cases(found: list[Case | CaseError], root: Path) -> None:
    """A :class:`UsageError` (exit 2) when discovery found nothing at all: a wrong mount or an empty
    folder must not pass for a successful run that had nothing to do."""
    if not found:
        raise UsageError(describe_no_cases(root))


def _looks_like_contrast(name: str) -> bool:
    """True for a name that parses as a contrast or would be reported as ambiguous."""
    try:
        return parse_contrast_name(name) is not None
    except AmbiguousNameError:
        return True


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)


def _ignore_reason(name: str) -> str:
    if split_image_extension(name) is None:
        return "not an image (.nii, .nii.gz, .mha, .mhd or .nrrd)"
    if is_annotation_name(name):
        return "a segmentation or mask"
    return "no contrast name (t1n, t1c, t2w, t2f or an alias) in it"


def _read_case(case_id: str, folder: Path, wanted: Modality | None, naming: str) -> Case | CaseError:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as error:
        return CaseError(case_id, f"cannot read the case folder {folder}: {error.strerror or error}")

    found: dict[Modality, list[tuple[Path, ContrastName]]] = {}
    ambiguous: list[tuple[Path, AmbiguousNameError]] = []
    ignored: list[Path] = []
    for path in entries:
        if path.name.startswith("."):
            continue
        if path.is_dir():
            logger.debug("%s: ignored the sub-folder %s", case_id, path.name)
            continue
        try:
            parsed = parse_contrast_name(path.name, case_id)
        except AmbiguousNameError as error:
            ambiguous.append((path, error))
            continue
        if parsed is None:
            logger.debug("%s: ignored %s: %s", case_id, path.name, _ignore_reason(path.name))
            ignored.append(path)
        else:
            found.setdefault(parsed.modality, []).append((path, parsed))

    if ambiguous:
        details = "; ".join(f"{p.name} names {' and '.join(e.tokens)}" for p, e in ambiguous)
        return CaseError(
            case_id,
            f"cannot tell which contrast a file holds ({details}); rename it so that its name holds "
            "exactly one of t1n, t1c, t2w, t2f (or an alias such as t1, t1ce, t2, flair)",
            [p for p, _ in ambiguous],
        )
    duplicated = {m: hits for m, hits in found.items() if len(hits) > 1}
    if duplicated:
        details = "; ".join(
            f"{m.value}: {', '.join(p.name for p, _ in duplicated[m])}" for m in MODALITIES if m in duplicated
        )
        return CaseError(
            case_id,
            f"more than one file for the same contrast ({details}); rename or remove one of them",
            [p for hits in duplicated.values() for p, _ in hits],
        )
    if len(found) < 3:
        have = ", ".join(f"{m.value} ({found[m][0][0].name})" for m in MODALITIES if m in found) or "none"
        message = f"found {len(found)} contrast(s): {have}; {_NEEDS_THREE}"
        if ignored:
            message += f" (not recognised as contrasts: {_names(ignored)}; rename them if they are)"
        return CaseError(case_id, message, [hits[0][0] for hits in found.values()] + ignored)

    files = {m: found[m][0][0] for m in MODALITIES if m in found}
    names = [found[m][0][1] for m in MODALITIES if m in found]
    missing = next((m for m in MODALITIES if m not in found), None)
    if missing is None and wanted is None:
        return _skipped(
            case_id, folder, files, "all four contrasts present; use --target to synthesise one anyway"
        )
    if missing is not None and wanted not in (None, missing):
        # a forced target that cannot be made here is a failure: a run that writes nothing must not exit 0
        return CaseError(
            case_id,
            f"it lacks {missing.value} and already holds {wanted.value}: --target {wanted.value} synthesises "
            f"that contrast in complete cases only; run without --target to synthesise its {missing.value}",
            list(files.values()),
        )
    target = missing if missing is not None else wanted
    assert target is not None  # one of the two branches above returned otherwise
    if naming == "input" and len({(n.prefix, n.separator, n.suffix) for n in names}) > 1:
        logger.info(
            "%s: the file names do not share one pattern (%s); naming the output after the case folder",
            case_id,
            _names(list(files.values())),
        )
    return Case(case_id, folder, files, target, output_file_name(case_id, target, names, naming))


def _skipped(case_id: str, folder: Path, files: dict[Modality, Path], reason: str) -> Case:
    return Case(case_id, folder, files, target=None, output_name=None, skip_reason=reason)


def _refuse_collisions(results: list[Case | CaseError]) -> list[Case | CaseError]:
    """Replace every case whose output name an earlier case already uses by a :class:`CaseError`.

    Names are compared case-insensitively because output folders on macOS and Windows hosts are, and a
    second write there would silently replace the first case's result.
    """
    owners: dict[str, str] = {}
    checked: list[Case | CaseError] = []
    for result in results:
        if isinstance(result, Case) and result.output_name is not None:
            key = result.output_name.casefold()
            if key in owners:
                result = CaseError(
                    result.id,
                    f"its output file name {result.output_name} is already that of case {owners[key]}; "
                    "rename the files of one of the two cases, or name outputs after the case folders "
                    "(--naming brats2023, or naming: brats2023 in the MLCube parameters)",
                    list(result.files.values()),
                )
            else:
                owners[key] = result.id
        checked.append(result)
    return checked
