"""Finding cases in an input folder and deciding which contrast each one lacks.

Discovery only looks at names (no image is opened), so it can judge a whole input folder up front and
report every badly named case before any time is spent on the model. Per-case problems come back as
:class:`~brasyn.common.errors.CaseError` items in the result, so one bad case never stops the others.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from brasyn.common.errors import BrasynError, CaseError, UsageError
from brasyn.common.files import NAME_MAX, long_name
from brasyn.data.contrast_map import ContrastMap
from brasyn.data.flat_cases import ONE_FOLDER_PER_CASE, case_prefixes, flat_groups
from brasyn.data.modalities import (
    MODALITIES,
    NAMING_SCHEMES,
    AmbiguousNameError,
    ContrastName,
    Modality,
    conditions_for,
    modality_from_alias,
    naming_note,
    output_file_name,
    parse_contrast_name,
    split_image_extension,
)
from brasyn.data.names import Recognition, recognise

__all__ = ["Case", "complete_cases", "describe_no_cases", "discover", "refuse_no_cases", "single_case"]

logger = logging.getLogger("brasyn.cases")

_NEEDS_THREE = "each case needs three of " + ", ".join(m.value for m in MODALITIES)
CASE_NAME_MAX = NAME_MAX - 20
"""Bytes a case name may have: brasyn names files after the case, the longest being a training cache
entry's temporary ``.<case>.json.XXXXXXXX.part``, 20 bytes more, and no file name may pass
:data:`~brasyn.common.files.NAME_MAX`."""


@dataclass(frozen=True)
class Case:
    """One case folder: the contrasts found in it and what, if anything, to synthesise."""

    id: str
    """The case folder's name (for a root that directly holds one case's images: the root's name; for
    several cases side by side: the case id their names start with; for :func:`single_case`: the one the
    output name holds)."""
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
    root: Path | str,
    target: Modality | str | None = None,
    naming: str = "input",
    mapping: ContrastMap | None = None,
) -> list[Case | CaseError]:
    """Every case under ``root``, sorted by case id, each a :class:`Case` or the :class:`CaseError` that
    stops it.

    Every visible sub-folder of ``root`` is a case; a root that directly holds contrast images is itself
    one case, or, when it holds several cases' images side by side (``A-t1n.nii.gz``, ``B-t1n.nii.gz``
    ...), one case per case id the names start with (:mod:`brasyn.data.flat_cases`), named and written exactly
    as if each had a sub-folder of its own. A root holding both contrast images and sub-folders is refused
    with a :class:`~brasyn.common.errors.BrasynError`: whether the user meant one case or many cannot be told,
    and a guess would either skip the folders or mix a stray image into nothing.

    ``target`` (any alias, e.g. ``flair``) forces the contrast to synthesise: a case with all four
    contrasts then has it synthesised from the other three (pseudo-validation), and a case missing a
    different contrast is skipped. ``naming`` is one of :data:`~brasyn.data.modalities.NAMING_SCHEMES`
    (see :func:`~brasyn.data.modalities.output_file_name`). ``mapping`` (``--map``) names contrasts by glob
    patterns; it is asked before the built-in name recognition.
    """
    if naming not in NAMING_SCHEMES:
        raise ValueError(f"naming must be one of {', '.join(NAMING_SCHEMES)}, not {naming!r}")
    wanted = None if target is None else modality_from_alias(target)
    mapping = mapping or ContrastMap()
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
    files = [p for p in visible if p.is_file()]
    seen = recognise([p.name for p in files], mapping)
    images = [p for p in files if p.name not in seen.ignored]
    if images and folders:
        raise BrasynError(
            f"the input folder {root} holds both contrast images ({_names(images)}) and sub-folders "
            f"({_names(folders)}); put each case's images in a folder of its own under {root}, "
            "or give one case folder as the input"
        )
    if images:
        results = _read_flat(root, files, seen, wanted, naming, mapping)
        return _refuse_collisions(_refuse_long_names(results))
    results = []
    for folder in folders:
        if _holds_images(folder):
            results.append(_read_folder(folder.name, folder, wanted, naming, mapping))
        else:
            logger.warning("ignored the folder %s: it holds no image (not a case)", folder.name)
    for path in visible:
        if not path.is_dir():
            logger.debug("ignored %s in the input folder: not a case folder", path.name)
    return _refuse_collisions(_refuse_long_names(results))


def _read_flat(
    root: Path,
    files: list[Path],
    seen: Recognition,
    wanted: Modality | None,
    naming: str,
    mapping: ContrastMap,
) -> list[Case | CaseError]:
    """The case or cases of a root that directly holds images (``files``, read as ``seen``): one case, named
    after the root, unless :func:`~brasyn.data.flat_cases.flat_groups` finds several side by side."""
    groups = flat_groups([p.name for p in files], seen)
    if groups is None:
        hint = f"; if the folder holds several cases, {ONE_FOLDER_PER_CASE}"
        return [_read_case(_flat_case_id(root, seen), root, files, wanted, naming, mapping, hint)]
    by_name = {p.name: p for p in files}
    logger.info(
        "%s holds several cases side by side: %d case(s) by the start of the names", root, len(groups)
    )
    results: list[Case | CaseError] = []
    for group in groups:
        paths = [by_name[n] for n in group.names]
        if group.problem is not None:
            results.append(CaseError(group.case_id, group.problem, paths))
        else:
            hint = f"; if grouping by the start of the names is wrong, {ONE_FOLDER_PER_CASE}"
            results.append(_read_case(group.case_id, root, paths, wanted, naming, mapping, hint))
    return results


def _flat_case_id(root: Path, seen: Recognition) -> str:
    """The id of the one case a flat folder holds: the case id the ``--map`` patterns read from its names
    where they all agree (nnU-Net's ``BraTS_001_0000.nii.gz`` ... under ``*_0000.nii.gz``: ``BraTS_001``,
    not the folder ``imagesTs``), else the folder's name."""
    ids = set(case_prefixes(seen).values())
    if seen.mapped and len(ids) == 1 and "" not in ids:
        return ids.pop()
    return root.resolve().name or "case"


def _parsed(name: str) -> ContrastName | None:
    try:
        return parse_contrast_name(name)
    except AmbiguousNameError:
        return None


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


NNUNET_MAP = " ".join(
    f"--map {contrast}='*_{channel:04d}.nii.gz'"
    for channel, contrast in enumerate(("t1n", "t1c", "t2w", "t2f"))
)
"""The ``--map`` lines of nnU-Net's BraTS channel order (0000 t1n, 0001 t1c, 0002 t2w, 0003 t2f)."""
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
            f"contrast; name each channel's contrast with --map as your dataset.json maps the channel "
            f"numbers, e.g. {NNUNET_MAP} (cases side by side are told apart by the id before _0000)"
        )
    return f"no case found in the input folder {root} (it holds {shown}); expected {expected}"


def refuse_no_cases(found: list[Case | CaseError], root: Path) -> None:
    """A :class:`UsageError` (exit 2) when discovery found nothing at all: a wrong mount or an empty
    folder must not pass for a successful run that had nothing to do."""
    if not found:
        raise UsageError(describe_no_cases(root))


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)


def _read_folder(
    case_id: str, folder: Path, wanted: Modality | None, naming: str, mapping: ContrastMap
) -> Case | CaseError:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as error:
        return CaseError(case_id, f"cannot read the case folder {folder}: {error.strerror or error}")
    return _read_case(case_id, folder, entries, wanted, naming, mapping)


def _read_case(
    case_id: str,
    folder: Path,
    entries: list[Path],
    wanted: Modality | None,
    naming: str,
    mapping: ContrastMap,
    hint: str = "",
) -> Case | CaseError:
    """One case from its files (``entries``: its folder's, or its group's in a flat folder); ``hint`` ends
    the messages of files that do not make one case (what to do if they are several)."""
    visible = [p for p in entries if not p.name.startswith(".")]
    by_name = {p.name: p for p in visible if not p.is_dir()}
    seen = recognise(by_name, mapping, case_id)
    for path in visible:
        if path.name not in by_name:
            logger.debug("%s: ignored the sub-folder %s", case_id, path.name)
        elif path.name in seen.ignored:
            logger.debug("%s: ignored %s: %s", case_id, path.name, seen.ignored[path.name])
    problem = seen.problem(hint)
    if problem is not None:
        return CaseError(case_id, problem.message, [by_name[n] for n in problem.names])
    if len(seen.found) < 3:
        have = ", ".join(f"{m.value} ({name})" for m, name in seen.contrasts.items()) or "none"
        message = f"found {len(seen.found)} contrast(s): {have}; {_NEEDS_THREE}"
        if seen.ignored:
            message += (
                f" (not recognised as contrasts: {', '.join(seen.ignored)}; rename them if they are, or name "
                "their contrast with --map CONTRAST=PATTERN)"
            )
        shown = [hits[0][0] for hits in seen.found.values()] + list(seen.ignored)
        return CaseError(case_id, message + hint, [by_name[n] for n in shown])
    files = {m: by_name[name] for m, name in seen.contrasts.items()}
    return _with_target(case_id, folder, files, seen.contrast_names, wanted, naming)


def _with_target(
    case_id: str,
    folder: Path,
    files: dict[Modality, Path],
    names: list[ContrastName],
    wanted: Modality | None,
    naming: str,
) -> Case | CaseError:
    """The case of three or four recognised contrasts, with the contrast to synthesise and its file name:
    the missing one, or ``wanted`` where all four are present."""
    missing = next((m for m in MODALITIES if m not in files), None)
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
    output_name = output_file_name(case_id, target, names, naming)
    note = naming_note(case_id, target, names, output_name, naming)
    if note is not None:
        logger.info("%s", note)
    return Case(case_id, folder, files, target, output_name)


def _skipped(case_id: str, folder: Path, files: dict[Modality, Path], reason: str) -> Case:
    return Case(case_id, folder, files, target=None, output_name=None, skip_reason=reason)


def _bytes(name: str) -> int:
    return len(os.fsencode(name))


def _refuse_long_names(results: list[Case | CaseError]) -> list[Case | CaseError]:
    """Replace every case whose name, or output name, is too long for a file name by a
    :class:`CaseError`: the file system would refuse it (ENAMETOOLONG) the first time it is used, and the
    other cases must still run."""
    checked: list[Case | CaseError] = []
    for result in results:
        if isinstance(result, Case) and _bytes(result.id) > CASE_NAME_MAX:
            result = CaseError(
                result.id,
                f"the case name is {_bytes(result.id)} bytes long; brasyn names files after it and a file "
                f"name may have at most {NAME_MAX} bytes: shorten the case folder's name (or the start of "
                f"its file names) to at most {CASE_NAME_MAX} bytes",
                list(result.files.values()),
            )
        elif isinstance(result, Case) and result.output_name and _bytes(result.output_name) > NAME_MAX:
            result = CaseError(
                result.id,
                f"its output name {result.output_name} would be {_bytes(result.output_name)} bytes long, "
                f"more than the {NAME_MAX} a file name may have: shorten the names of its files, or name "
                "outputs after the case folders (--naming brats2023)",
                list(result.files.values()),
            )
        checked.append(result)
    return checked


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


def single_case(files: Mapping[Modality | str, Path | str | None], output_file: Path | str) -> Case:
    """The one case of the single-case form (``--t1n FILE --t1c FILE --t2w FILE --out FILE``, or
    :func:`brasyn.api.infer_single`): three contrasts given by name, the fourth written to ``output_file``.

    The case id is what the output name holds before its contrast (``BraTS-GLI-00001-000`` of
    ``BraTS-GLI-00001-000-t2f.nii.gz``), else its name less the extension: with the same seed the case
    then gets the same random draws as in a case folder of that name. Raises :class:`UsageError` for
    anything that stops it from starting (not three inputs, a file that is absent, an output name that is
    not an image or that names another contrast, an output that is one of the inputs)."""
    given: dict[Modality, Path] = {}
    for key, value in files.items():
        if value is None:
            continue
        modality = modality_from_alias(key)
        if modality in given:
            raise UsageError(f"{modality.value} is given twice ({given[modality]} and {value})")
        given[modality] = Path(value)
    if len(given) != 3:
        named = ", ".join(f"--{m.value}" for m in given) or "none"
        raise UsageError(
            f"the single-case form takes three of --t1n, --t1c, --t2w, --t2f (given: {named}); "
            "the fourth is synthesised"
        )
    for label, path in [
        *((f"the {m.value} input", p) for m, p in given.items()),
        ("--out", Path(output_file)),
    ]:
        too_long = long_name(path)
        if too_long is not None:
            raise UsageError(
                f"{label} {path} holds a name of {_bytes(too_long)} bytes, more than the {NAME_MAX} a file "
                "or folder name may have: choose a shorter name"
            )
    for modality, path in given.items():
        if not path.is_file():
            state = "is a folder" if path.is_dir() else "does not exist"
            raise UsageError(
                f"the {modality.value} input {path} {state}; give the image file of that contrast"
            )
    output = Path(output_file)
    target = next(m for m in MODALITIES if m not in given)
    split = split_image_extension(output.name)
    if split is None:
        raise UsageError(
            f"the output {output} is not an image file name: end it in .nii.gz (or .nii, .mha, .mhd, .nrrd), "
            f"e.g. {output.with_name(f'case-{target.value}.nii.gz')}"
        )
    if output.is_dir():
        raise UsageError(
            f"the output {output} is a folder; name the file to write, e.g. {output / 'case.nii.gz'}"
        )
    if any(output.resolve() == p.resolve() for p in given.values()):
        raise UsageError(f"the output {output} is one of the inputs; brasyn never writes over its input")
    parsed = _parsed(output.name)
    if parsed is not None and parsed.modality is not target:
        raise UsageError(
            f"the output name {output.name} says {parsed.modality.value}, but the contrast synthesised from "
            f"{', '.join(m.value for m in given)} is {target.value}; name the output after {target.value}"
        )
    case_id = parsed.prefix if parsed is not None and parsed.prefix else split[0]
    first = next(iter(given.values()))
    ordered = {m: given[m] for m in MODALITIES if m in given}
    return Case(case_id, first.parent, ordered, target, output.name)
