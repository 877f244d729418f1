"""Explicit contrast names: ``--map t1c='*MPRAGE_post*'`` for exports whose file names say the contrast in
words brasyn cannot know (``T1_MPRAGE_post``, BIDS ``ce-gadolinium_T1w``).

A :class:`ContrastMap` holds glob patterns per contrast, matched case-insensitively against a file's base
name. The reading of file names (:func:`brasyn.data.names.recognise`) asks it first and falls back on the
built-in names (:mod:`brasyn.data.modalities`) for files no pattern matches. This module knows names and
patterns only; the one piece of I/O is reading a mapping file, which a command line names.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brasyn.data.modalities import MODALITIES, Modality, modality_from_alias

__all__ = ["ContrastMap", "MapError", "parse_map"]

_EXAMPLE = (
    "CONTRAST=PATTERN such as t1c='*MPRAGE_post*', or a YAML file of lines such as t1c: '*MPRAGE_post*'"
)


class MapError(ValueError):
    """A mapping that cannot be used: the message says which part and what is expected."""


@dataclass(frozen=True)
class ContrastMap:
    """Glob patterns (``*``, ``?``, ``[...]``) that name a contrast, in the order given."""

    rules: tuple[tuple[Modality, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __add__(self, other: ContrastMap) -> ContrastMap:
        return ContrastMap(self.rules + tuple(r for r in other.rules if r not in self.rules))

    def matches(self, name: str) -> list[tuple[Modality, str]]:
        """Every rule whose pattern matches the base name ``name`` (letter case ignored)."""
        folded = name.casefold()
        return [(m, p) for m, p in self.rules if fnmatch.fnmatchcase(folded, p.casefold())]

    def case_id(self, name: str) -> str:
        """The case id a pattern reads from ``name``: what the leading ``*`` of the first matching pattern
        that starts with one stands for, less trailing separators (``BraTS_001`` of
        ``BraTS_001_0000.nii.gz`` under ``*_0000.nii.gz``); empty where no such pattern matches."""
        for _, pattern in self.rules:
            if not pattern.startswith("*") or pattern.startswith("**"):
                continue
            found = re.match("(.*?)" + fnmatch.translate(pattern[1:]), name, re.IGNORECASE | re.DOTALL)
            if found:
                return found.group(1).rstrip("-_.")
        return ""

    def describe(self) -> str:
        """The rules as a user would write them (``t1c='*MPRAGE_post*'``), for messages and the report."""
        return ", ".join(f"{m.value}='{p}'" for m, p in self.rules)

    @classmethod
    def combine(cls, maps: Iterable[ContrastMap | None] | ContrastMap | None) -> ContrastMap:
        """One map from several (``--map`` given more than once), or from None."""
        if maps is None:
            return cls()
        if isinstance(maps, ContrastMap):
            return maps
        combined = cls()
        for item in maps:
            if item is not None:
                combined = combined + item
        return combined


def _rules_of(contrast: Any, patterns: Any, where: str) -> list[tuple[Modality, str]]:
    try:
        modality = modality_from_alias(str(contrast))
    except ValueError as exc:
        raise MapError(f"{where}: {exc}") from None
    values = patterns if isinstance(patterns, (list, tuple)) else [patterns]
    rules = []
    for pattern in values:
        if not isinstance(pattern, str) or not pattern.strip():
            raise MapError(f"{where}: the pattern of {modality.value} must be text such as '*MPRAGE_post*'")
        if "/" in pattern or "\\" in pattern:
            raise MapError(f"{where}: {pattern!r} holds a folder; patterns match file names only")
        rules.append((modality, pattern.strip()))
    return rules


def _from_mapping(values: Mapping[Any, Any], where: str) -> ContrastMap:
    rules: list[tuple[Modality, str]] = []
    for contrast, patterns in values.items():
        rules.extend(_rules_of(contrast, patterns, where))
    if not rules:
        raise MapError(f"{where}: no pattern in it; expected {_EXAMPLE}")
    return ContrastMap(tuple(rules))


def _read_file(path: Path) -> ContrastMap:
    import yaml

    from brasyn.common.yaml_text import load_plain_yaml

    try:
        values = load_plain_yaml(path.read_text())
    except OSError as exc:
        raise MapError(f"cannot read the mapping file {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MapError(f"the mapping file {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise MapError(f"the mapping file {path} must hold lines such as t1c: '*MPRAGE_post*'")
    return _from_mapping(values, f"the mapping file {path}")


def parse_map(value: Any) -> ContrastMap:
    """A map from what a user wrote: ``CONTRAST=PATTERN`` (``t1c=*MPRAGE_post*``; any contrast alias), the
    path of a YAML file of ``contrast: pattern`` lines (a pattern or a list of them per contrast), or,
    from a parameters file, such a mapping itself. Raises :class:`MapError` saying what is expected."""
    if isinstance(value, ContrastMap):
        return value
    if isinstance(value, Mapping):
        return _from_mapping(value, "map")
    if isinstance(value, (list, tuple)):
        return ContrastMap.combine(parse_map(v) for v in value)
    if not isinstance(value, str) or not value.strip():
        raise MapError(f"expected {_EXAMPLE}, got {value!r}")
    text = value.strip()
    if "=" in text:
        contrast, _, pattern = text.partition("=")
        return ContrastMap(tuple(_rules_of(contrast.strip(), pattern, f"map {text!r}")))
    path = Path(text)
    if path.is_file():
        return _read_file(path)
    known = ", ".join(m.value for m in MODALITIES)
    raise MapError(
        f"{text!r} is neither CONTRAST=PATTERN (contrast one of {known}) nor an existing mapping file"
    )
