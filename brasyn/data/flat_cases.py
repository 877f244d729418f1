"""Several cases' images side by side in one folder (``A-t1n.nii.gz``, ``A-t1c.nii.gz``, ``B-t1n.nii.gz``
...), as nnU-Net and orchestrator users keep them: grouped into cases by the case id their names start with.

The case ids are the prefixes the built-in name recognition reads before the contrast token
(``BraTS-GLI-00001-000`` of ``BraTS-GLI-00001-000-t1n.nii.gz``); every file of the folder then goes to the
case whose id, followed by a separator, its name starts with. A file that starts with no id, or with two
(``sub-01_T1w`` and ``sub-01_ce-gadolinium_T1w`` make the ids ``sub-01`` and ``sub-01_ce-gadolinium``),
cannot be placed without a guess: it, and every case it might belong to, gets a problem that says to put
one sub-folder per case. A folder is split only where one case cannot hold its images: they name several
case ids and some contrast occurs more than once. Names only, no files: the caller reads the groups as
cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from brasyn.data.modalities import Modality
from brasyn.data.names import Recognition

__all__ = ["FlatGroup", "case_prefixes", "flat_groups", "group_flat", "ONE_FOLDER_PER_CASE"]

ONE_FOLDER_PER_CASE = "put one sub-folder per case (named after the case) under the input folder"


@dataclass
class FlatGroup:
    """The files of one case found among others in a flat folder, or the files that fit no case."""

    case_id: str
    names: list[str] = field(default_factory=list)
    problem: str | None = None
    """Why the group cannot be processed as a case (it then fails, naming its files); None when it can."""


def _starts_with(name: str, case_id: str) -> bool:
    n = len(case_id)
    return len(name) > n + 1 and name[:n] == case_id and name[n] in "-_."


def group_flat(
    names: Iterable[str], prefixes: Mapping[str, str], contrasts: Iterable[str]
) -> list[FlatGroup]:
    """The cases of a flat folder holding ``names``, sorted by case id.

    ``prefixes`` maps a contrast image's name to the case id read from it (names without a usable one, such
    as a bare ``T1.nii.gz`` or a file named by ``--map``, are left out); ``contrasts`` are the names that
    are contrast images (these must find a case; any other file that fits none is left out quietly)."""
    ids = sorted({p for p in prefixes.values() if p})
    wanted = set(contrasts)
    groups = {case_id: FlatGroup(case_id) for case_id in ids}
    strays: list[FlatGroup] = []
    for name in sorted(names):
        owners = [case_id for case_id in ids if _starts_with(name, case_id)]
        if len(owners) == 1:
            groups[owners[0]].names.append(name)
        elif len(owners) > 1:
            problem = (
                f"{name} could belong to case {' or '.join(owners)}: the names do not tell the cases apart; "
                f"{ONE_FOLDER_PER_CASE} (or name the contrast with --map)"
            )
            for owner in owners:
                group = groups[owner]
                group.names.append(name)
                group.problem = group.problem or problem
        elif name in wanted:
            strays.append(
                FlatGroup(
                    name,
                    [name],
                    f"{name} starts with no case id that other files share ({', '.join(ids)}); "
                    f"{ONE_FOLDER_PER_CASE}",
                )
            )
    return sorted([*groups.values(), *strays], key=lambda g: g.case_id)


def case_prefixes(seen: Recognition) -> dict[str, str]:
    """Contrast image -> the case id its name starts with, read by the built-in names or, for a file named
    by ``--map``, by its pattern (empty where neither reads one)."""
    return {
        name: seen.mapped_ids.get(name, "") if name in seen.mapped else contrast.prefix
        for hits in seen.found.values()
        for name, contrast in hits
    }


def flat_groups(names: list[str], seen: Recognition) -> list[FlatGroup] | None:
    """The cases of a flat folder holding ``names`` (read, without a case id, as ``seen``), or None when
    its images make one case: they name fewer than two case ids, or no contrast occurs twice.

    The case ids come from the built-in names and, for a file named by ``--map``, from what the pattern's
    leading ``*`` stands for (``BraTS_001`` of ``BraTS_001_0000.nii.gz`` under ``*_0000.nii.gz``); a file
    two contrasts' patterns match counts, for each of them, towards a contrast occurring twice."""
    prefixes = case_prefixes(seen)
    counts: dict[Modality, int] = {m: len(hits) for m, hits in seen.found.items()}
    for rules in seen.conflicts.values():
        for modality in {m for m, _ in rules.rules}:
            counts[modality] = counts.get(modality, 0) + 1
    if len({p for p in prefixes.values() if p}) < 2 or all(n < 2 for n in counts.values()):
        return None
    return group_flat(names, prefixes, [n for n in names if n not in seen.ignored])
