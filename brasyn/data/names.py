"""Which file of a set is which contrast: the one reading of file names that discovery, flat folders and
``--map`` share.

:func:`recognise` asks the ``--map`` patterns (:mod:`brasyn.data.contrast_map`) first and the built-in
names (:func:`~brasyn.data.modalities.parse_contrast_name`) for the files no pattern names, and gathers
every problem of the set at once (a file two contrasts' patterns match, a name with two contrasts, two
files of one contrast), so that a case is judged from one reading rather than by asking each rule in
turn. Names only, no file is opened: the rules can be tested on bare strings.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from brasyn.data.contrast_map import ContrastMap
from brasyn.data.modalities import (
    MODALITIES,
    AmbiguousNameError,
    ContrastName,
    Modality,
    is_annotation_name,
    parse_contrast_name,
    split_image_extension,
)

__all__ = ["NameProblem", "Recognition", "recognise"]


@dataclass(frozen=True)
class NameProblem:
    """Why a set of files cannot be read as one case's contrasts, and the files it concerns."""

    message: str
    names: list[str]


@dataclass
class Recognition:
    """What the names of a set of files say, each list and mapping in the order the names were given."""

    found: dict[Modality, list[tuple[str, ContrastName]]] = field(default_factory=dict)
    """Contrast -> every file read as it (more than one is a problem), keyed in the order first seen."""
    mapped: dict[str, ContrastMap] = field(default_factory=dict)
    """Files named by ``--map``: the rules that matched each (all of one contrast)."""
    conflicts: dict[str, ContrastMap] = field(default_factory=dict)
    """Files that ``--map`` patterns of different contrasts match: the rules that matched each."""
    ambiguous: list[tuple[str, AmbiguousNameError]] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    """Files that are no contrast image (segmentations, masks, other files): why, in words for the log."""

    @property
    def contrasts(self) -> dict[Modality, str]:
        """Contrast -> its file (the first, where there are several), in :data:`MODALITIES` order."""
        return {m: self.found[m][0][0] for m in MODALITIES if m in self.found}

    @property
    def contrast_names(self) -> list[ContrastName]:
        """The names of :attr:`contrasts`, cut into their parts, in the same order."""
        return [self.found[m][0][1] for m in MODALITIES if m in self.found]

    def problem(self, hint: str = "") -> NameProblem | None:
        """The first problem that stops the files from being one case's contrasts, or None.

        ``hint`` ends the message of several files for one contrast (what to do if they are several cases
        side by side)."""
        if self.conflicts:
            listed = "; ".join(f"{name} matches {rules.describe()}" for name, rules in self.conflicts.items())
            return NameProblem(
                f"--map patterns of different contrasts match the same file ({listed}); make the "
                "patterns narrower so that each file matches the patterns of one contrast",
                list(self.conflicts),
            )
        if self.ambiguous:
            details = "; ".join(f"{name} names {' and '.join(e.tokens)}" for name, e in self.ambiguous)
            return NameProblem(
                f"cannot tell which contrast a file holds ({details}); rename it so that its name holds "
                "exactly one of t1n, t1c, t2w, t2f (or an alias such as t1, t1ce, t2, flair)",
                [name for name, _ in self.ambiguous],
            )
        duplicated = {m: hits for m, hits in self.found.items() if len(hits) > 1}
        if not duplicated:
            return None
        details = "; ".join(
            f"{m.value}: {', '.join(self._shown(name) for name, _ in duplicated[m])}"
            for m in MODALITIES
            if m in duplicated
        )
        advice = "rename or remove one of them"
        if any(name in self.mapped for hits in duplicated.values() for name, _ in hits):
            advice += ", or make the --map pattern match one file per case"
        return NameProblem(
            f"more than one file for the same contrast ({details}); {advice}{hint}",
            [name for hits in duplicated.values() for name, _ in hits],
        )

    def _shown(self, name: str) -> str:
        return f"{name} (--map {self.mapped[name].describe()})" if name in self.mapped else name


def recognise(
    names: Iterable[str], mapping: ContrastMap | None = None, case_id: str | None = None
) -> Recognition:
    """Which contrast each of the file names ``names`` holds, and what stops them from being one case.

    A ``--map`` pattern of ``mapping`` decides before the built-in names, for images that are not
    segmentations or masks. ``case_id``: the names are read after it where they start with it
    (see :func:`~brasyn.data.modalities.parse_contrast_name`).
    """
    seen = Recognition()
    for name in names:
        matched = mapping.matches(name) if mapping and _mappable(name) else []
        if len({m for m, _ in matched}) > 1:
            seen.conflicts[name] = ContrastMap(tuple(matched))
            continue
        if matched:
            modality = matched[0][0]
            seen.mapped[name] = ContrastMap(tuple(matched))
            seen.found.setdefault(modality, []).append((name, _mapped_name(name, modality)))
            continue
        try:
            parsed = parse_contrast_name(name, case_id)
        except AmbiguousNameError as error:
            seen.ambiguous.append((name, error))
            continue
        if parsed is None:
            seen.ignored[name] = _ignore_reason(name)
        else:
            seen.found.setdefault(parsed.modality, []).append((name, parsed))
    return seen


def _mappable(name: str) -> bool:
    """Whether ``--map`` patterns apply to ``name``: an image that is not a segmentation or mask."""
    return split_image_extension(name) is not None and not is_annotation_name(name)


def _mapped_name(name: str, modality: Modality) -> ContrastName:
    """A file ``--map`` names: its own reading where that agrees, else a name that shares no pattern with
    the others, so that the output is named after the case (``<case>-<contrast>``), not after a guess."""
    try:
        parsed = parse_contrast_name(name)
    except AmbiguousNameError:
        parsed = None
    if parsed is not None and parsed.modality is modality:
        return parsed
    stem, extension = split_image_extension(name) or (name, "")
    return ContrastName(modality, "", "", stem, "", extension)


def _ignore_reason(name: str) -> str:
    if split_image_extension(name) is None:
        return "not an image (.nii, .nii.gz, .mha, .mhd or .nrrd)"
    if is_annotation_name(name):
        return "a segmentation or mask"
    return "no contrast name (t1n, t1c, t2w, t2f or an alias) in it"
