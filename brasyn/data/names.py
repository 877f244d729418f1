"""Which file of a set is which contrast: the one reading of file names that discovery, flat folders and
``--map`` share.

:func:`recognise` asks the ``--map`` patterns (:mod:`brasyn.data.contrast_map`) first and the built-in
names (:func:`~brasyn.data.modalities.parse_contrast_name`) for the files no pattern names, and gathers
every problem of the set at once (a file two contrasts' patterns match, a name with two contrasts, two
files of one contrast), so that a case is judged from one reading rather than by asking each rule in
turn. Names only, no file is opened: the rules can be tested on bare strings.
"""

from __future__ import annotations

import re
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

__all__ = ["NameProblem", "Recognition", "recognise", "suggest_map"]

_CONTRAST_AGENT = frozenset(
    {"ce", "gd", "gad", "gado", "contrast", "kontrast", "km", "c", "enhanced", "plus"}
)
"""Words of scanner exports that mark a T1 taken after the contrast agent (``T1_MPRAGE_post``,
``t1_gd``, ``T1+KM``): where two files read as t1n, the one with such a word is the t1c."""


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
    mapped_ids: dict[str, str] = field(default_factory=dict)
    """Files named by ``--map``: the case id the pattern reads from each (see
    :meth:`~brasyn.data.contrast_map.ContrastMap.case_id`; empty where none), for flat folders."""
    case_id: str | None = None
    """The case id the names were read after, if any (it becomes ``*`` in the ``--map`` lines suggested)."""

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
        if any(name in self.mapped for hits in duplicated.values() for name, _ in hits):
            advice = "rename or remove one of them, or make the --map pattern match one file per case"
        else:
            lines = " ".join(
                f"--map {contrast}='{pattern}'" for contrast, pattern in suggest_map(self, duplicated)
            )
            advice = f"name each file's contrast with --map, e.g. {lines} (or rename or remove one of them)"
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
    seen = Recognition(case_id=case_id)
    for name in names:
        matched = mapping.matches(name) if mapping and _mappable(name) else []
        if len({m for m, _ in matched}) > 1:
            seen.conflicts[name] = ContrastMap(tuple(matched))
            continue
        if matched:
            modality = matched[0][0]
            seen.mapped[name] = ContrastMap(tuple(matched))
            seen.mapped_ids[name] = seen.mapped[name].case_id(name)
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


def _after_agent(name: str) -> bool:
    """Whether ``name`` says it was taken after the contrast agent (a word of it starts with ``post``, or is
    one of :data:`_CONTRAST_AGENT`)."""
    stem = (split_image_extension(name) or (name, ""))[0]
    words = [w for w in re.split(r"[^a-z0-9]+", stem.casefold()) if w]
    return any(w.startswith("post") or w in _CONTRAST_AGENT for w in words)


def suggest_map(
    seen: Recognition, duplicated: dict[Modality, list[tuple[str, ContrastName]]]
) -> list[tuple[str, str]]:
    """``--map`` rules (contrast, pattern) that give each of the ``duplicated`` files a contrast of its own.

    A file of two read as t1n whose name marks the contrast agent (``T1_MPRAGE_post``) is suggested as
    t1c; of the rest the first keeps its contrast and the others take the contrasts the case lacks, in
    order (``CONTRAST`` where none is left: the user must say). The pattern is the file name itself, with
    the case id replaced by ``*`` so that the same line fits every case of the folder."""
    absent = [m for m in MODALITIES if m not in seen.found]
    rules: list[tuple[str, str]] = []
    for modality, hits in duplicated.items():
        names = [name for name, _ in hits]
        assigned: dict[str, str] = {}
        if modality is Modality.T1N and Modality.T1C in absent:
            agent = [n for n in names if _after_agent(n)]
            if len(agent) == 1:
                assigned[agent[0]] = Modality.T1C.value
                absent.remove(Modality.T1C)
        for name in names:
            if name in assigned:
                continue
            if modality.value not in assigned.values():
                assigned[name] = modality.value
            else:
                assigned[name] = absent.pop(0).value if absent else "CONTRAST"
        rules.extend((assigned[n], _pattern_for(n, seen.case_id)) for n in names)
    return rules


def _pattern_for(name: str, case_id: str | None) -> str:
    n = len(case_id or "")
    if case_id and len(name) > n + 1 and name[:n].casefold() == case_id.casefold() and name[n] in "-_.":
        return "*" + name[n:]
    return name
