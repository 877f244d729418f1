"""The four MR contrasts brasyn works with, the fixed order the model sees them in, and their file names.

The rules for reading one file name live here, beside the enum, because every job (inference, training,
evaluation) has to agree on what ``_t1ce`` or ``Flair`` means; reading a whole set of files, ``--map``
patterns included, is :func:`brasyn.data.names.recognise`. The module stays pure (no file I/O, no torch)
so that the rules can be tested on bare strings.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "Modality",
    "MODALITIES",
    "conditions_for",
    "ALIASES",
    "ANNOTATION_WORDS",
    "NAMING_FAMILIES",
    "NAMING_SCHEMES",
    "ContrastName",
    "AmbiguousNameError",
    "modality_from_alias",
    "split_nifti_extension",
    "split_image_extension",
    "is_annotation_name",
    "parse_contrast_name",
    "naming_family",
    "output_file_name",
    "naming_note",
    "plain_case_name",
]


class Modality(str, Enum):
    """BraTS 2023 short names, used as canonical keys everywhere."""

    T1N = "t1n"
    """Native T1."""
    T1C = "t1c"
    """Contrast-enhanced (gadolinium) T1."""
    T2W = "t2w"
    """T2-weighted."""
    T2F = "t2f"
    """T2 FLAIR."""

    def __str__(self) -> str:
        return self.value


MODALITIES: tuple[Modality, ...] = (Modality.T1N, Modality.T1C, Modality.T2W, Modality.T2F)
"""Canonical order; the conditions of a model are the other three in this order."""


def conditions_for(target: Modality | str) -> tuple[Modality, Modality, Modality]:
    """The three contrasts a model for ``target`` is conditioned on, in the order it expects them."""
    target = Modality(target)
    first, second, third = (m for m in MODALITIES if m is not target)
    return first, second, third


ALIASES: dict[Modality, frozenset[str]] = {
    Modality.T1N: frozenset({"t1n", "t1", "t1w", "t1native"}),
    Modality.T1C: frozenset({"t1c", "t1ce", "t1gd", "t1post", "t1contrast"}),
    Modality.T2W: frozenset({"t2w", "t2"}),
    Modality.T2F: frozenset({"t2f", "flair", "fla", "t2flair"}),
}
"""Lower-case spellings of each contrast as one separator-free token of a file name.

``t1w`` counts as native T1 because BIDS and scanner exports use it for the plain T1; a post-contrast T1
nearly always says so (``ce``, ``gd``, ``post``)."""

_ALIAS_TO_MODALITY: dict[str, Modality] = {a: m for m, aliases in ALIASES.items() for a in aliases}

_COMPOUNDS: dict[str, dict[str, Modality]] = {
    "t1": {q: Modality.T1C for q in ("ce", "gd", "c", "post", "contrast")} | {"native": Modality.T1N},
    "t2": {"flair": Modality.T2F, "fla": Modality.T2F},
}
"""Two tokens that name one contrast together (``T1_Gd``, ``t2-flair``). Without these, ``t2_flair``
would read as two contrasts and be rejected as ambiguous, although its meaning is plain."""

ANNOTATION_WORDS: frozenset[str] = frozenset(
    {
        "seg",
        "segs",
        "segmentation",
        "mask",
        "masks",
        "brainmask",
        "label",
        "labels",
        "labelmap",
        "tumor",
        "tumour",
        "prediction",
        "pred",
        "prob",
        "probabilities",
        "roi",
        "gt",
    }
)
"""Tokens that mark a segmentation, mask or model output; such files sit beside the images in many
datasets (``BraTS-GLI-00001-000-seg.nii.gz``, ``x_t1_brainmask.nii.gz``) and must never be read as a
contrast."""

NAMING_FAMILIES: dict[str, dict[Modality, str]] = {
    "brats2023": {Modality.T1N: "t1n", Modality.T1C: "t1c", Modality.T2W: "t2w", Modality.T2F: "t2f"},
    "brats2021": {Modality.T1N: "t1", Modality.T1C: "t1ce", Modality.T2W: "t2", Modality.T2F: "flair"},
    "toolkit": {Modality.T1N: "t1", Modality.T1C: "t1c", Modality.T2W: "t2", Modality.T2F: "fla"},
    "gd": {Modality.T1N: "t1", Modality.T1C: "t1Gd", Modality.T2W: "t2", Modality.T2F: "flair"},
}
"""Token sets seen in the wild, in order of preference when the present tokens fit several equally."""

NAMING_SCHEMES: tuple[str, ...] = ("input", "brats2023")
"""Accepted values of ``naming``: named like the inputs, or ``<case>-<contrast>.nii.gz`` always."""

_NIFTI_EXTENSION = re.compile(r"(\.nii\.gz|\.nii)$", re.IGNORECASE)
_IMAGE_EXTENSION = re.compile(r"(\.nii\.gz|\.nii|\.mha|\.mhd|\.nrrd)$", re.IGNORECASE)
"""NIfTI (nibabel), MetaImage and NRRD (SimpleITK): what hospital exports and research pipelines hand over.
A ``.mhd`` header's pixel file (``.raw``, ``.zraw``) is not an image name of its own."""
_SEPARATOR_SPLIT = re.compile(r"([-_.])")


class AmbiguousNameError(ValueError):
    """A file name names two different contrasts (``t1_t2_fusion.nii.gz``): guessing would feed the
    model the wrong image silently, so the caller must report it."""

    def __init__(self, name: str, tokens: Iterable[str]) -> None:
        self.name = name
        self.tokens = tuple(tokens)
        super().__init__(f"{name} contains more than one contrast name ({', '.join(self.tokens)})")


@dataclass(frozen=True)
class ContrastName:
    """A contrast image's file name cut into the parts needed to name a sibling file the same way.

    ``prefix + separator + token + suffix + extension`` gives back the original name exactly.
    """

    modality: Modality
    prefix: str
    """Everything before the contrast token, e.g. ``BraTS-GLI-01667-000``; empty for bare ``T1.nii.gz``."""
    separator: str
    """The character between prefix and token (``-``, ``_`` or ``.``); empty when there is no prefix."""
    token: str
    """The contrast as written, letter case kept (``t1Gd``, ``Flair``, ``T2_FLAIR``)."""
    suffix: str
    """Everything after the token, its leading separator included (``_bet``); often empty."""
    extension: str
    """``.nii.gz``, ``.nii``, ``.mha``, ``.mhd`` or ``.nrrd`` as written."""

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.separator}{self.token}{self.suffix}{self.extension}"


def modality_from_alias(text: Modality | str) -> Modality:
    """The contrast a user means by ``text`` (``t1ce``, ``FLAIR``, ``t2f`` ...).

    Command lines and parameter files use whichever name the user's dataset uses, so all aliases are
    accepted; anything else raises ``ValueError`` listing the canonical names.
    """
    if isinstance(text, Modality):
        return text
    key = re.sub(r"[-_. ]", "", str(text).strip().lower())
    if key in _ALIAS_TO_MODALITY:
        return _ALIAS_TO_MODALITY[key]
    raise ValueError(
        f"unknown contrast {text!r}; use one of {', '.join(m.value for m in MODALITIES)} "
        "(or an alias such as t1, t1ce, t2, flair)"
    )


def split_nifti_extension(name: str) -> tuple[str, str] | None:
    """``(stem, extension)`` of a NIfTI file name, or ``None`` for any other file."""
    match = _NIFTI_EXTENSION.search(name)
    if match is None or match.start() == 0:
        return None
    return name[: match.start()], match.group(1)


def split_image_extension(name: str) -> tuple[str, str] | None:
    """``(stem, extension)`` of an image file name brasyn reads (NIfTI, MetaImage, NRRD), or ``None``."""
    match = _IMAGE_EXTENSION.search(name)
    if match is None or match.start() == 0:
        return None
    return name[: match.start()], match.group(1)


def _output_extension(names: list[ContrastName]) -> str:
    """``.nii.gz`` for NIfTI inputs (what the challenge expects); otherwise the inputs' own format, the
    most common one where they mix (ties to the first contrast's)."""
    kinds = [".nii.gz" if n.extension.lower() in (".nii", ".nii.gz") else n.extension.lower() for n in names]
    return max(kinds, key=kinds.count) if kinds else ".nii.gz"


def _split_tokens(stem: str) -> list[str]:
    """Tokens at even indices, separators at odd ones; empty tokens kept so that joining is exact."""
    return _SEPARATOR_SPLIT.split(stem)


def is_annotation_name(name: str) -> bool:
    """Whether a file name marks a segmentation, mask or prediction rather than an image."""
    split = split_image_extension(name)
    stem = split[0] if split else name
    return any(part.lower() in ANNOTATION_WORDS for part in _split_tokens(stem)[::2])


def parse_contrast_name(name: str, case_id: str | None = None) -> ContrastName | None:
    """Read which contrast a file holds from its base name.

    Returns ``None`` for files that are not contrast images: not NIfTI, MetaImage or NRRD, a segmentation
    or mask (:data:`ANNOTATION_WORDS`), or no contrast token at all. Raises :class:`AmbiguousNameError`
    when two tokens name different contrasts. When the same contrast is named twice (``T1_scan_t1.nii.gz``)
    the last token is taken as the contrast token, since names put the contrast last by convention.

    A name that starts with ``case_id`` and a separator (``<case>-t1c.nii.gz``) is read after it, so a
    case id that happens to contain a contrast or mask word does not confuse the reading.
    """
    split = split_image_extension(name)
    if split is None:
        return None
    stem, extension = split
    head = ""
    n = len(case_id or "")
    if case_id and len(stem) > n + 1 and stem[:n].lower() == case_id.lower() and stem[n] in "-_.":
        head, stem = stem[: n + 1], stem[n + 1 :]
    if is_annotation_name(stem + extension):
        return None
    parts = _split_tokens(stem)
    matches: list[tuple[int, int, Modality]] = []  # (first part, last part, modality), inclusive
    index = 0
    while index < len(parts):
        word = parts[index].lower()
        compound = _COMPOUNDS.get(word, {})
        if index + 2 < len(parts) and parts[index + 2].lower() in compound:
            matches.append((index, index + 2, compound[parts[index + 2].lower()]))
            index += 4
            continue
        if word in _ALIAS_TO_MODALITY:
            matches.append((index, index, _ALIAS_TO_MODALITY[word]))
        index += 2
    if not matches:
        return None
    if len({modality for _, _, modality in matches}) > 1:
        raise AmbiguousNameError(name, ("".join(parts[a : b + 1]) for a, b, _ in matches))
    first, last, modality = matches[-1]
    if first > 0:
        prefix, separator = head + "".join(parts[: first - 1]), parts[first - 1]
    else:
        prefix, separator = head[:-1], head[-1:]
    return ContrastName(
        modality=modality,
        prefix=prefix,
        separator=separator,
        token="".join(parts[first : last + 1]),
        suffix="".join(parts[last + 1 :]),
        extension=extension,
    )


def naming_family(tokens: Mapping[Modality, str]) -> str:
    """The key of :data:`NAMING_FAMILIES` whose spellings match most of ``tokens`` (case-insensitive).

    Ties go to the earlier family (brats2023, brats2021, toolkit, gd), so names that fit nothing well get
    the current BraTS spelling.
    """
    scores = {
        family: sum(spellings[m].lower() == token.lower() for m, token in tokens.items())
        for family, spellings in NAMING_FAMILIES.items()
    }
    return max(scores, key=lambda family: scores[family])  # max keeps the first of equal scores


def _letter_case(tokens: Iterable[str]) -> str:
    """``lower``, ``upper``, ``capital`` (``T1``/``Flair``) or ``as-is``, from the letters of ``tokens``.

    ``T1`` alone fits both upper and capital; the other tokens decide (``FLAIR`` makes it upper,
    ``Flair`` capital) and upper wins when nothing does, since a lone capital letter reads the same.
    """
    words = [re.sub(r"[^A-Za-z]", "", t) for t in tokens]
    words = [w for w in words if w]
    if all(w.islower() for w in words):
        return "lower"
    if all(w.isupper() for w in words):
        return "upper"
    if all(w[0].isupper() and (len(w) == 1 or w[1:].islower()) for w in words):
        return "capital"
    return "as-is"


def _apply_case(spelling: str, style: str) -> str:
    if style == "lower":
        return spelling.lower()
    if style == "upper":
        return spelling.upper()
    if style == "capital":
        return spelling[:1].upper() + spelling[1:].lower()
    return spelling


def _token_for(target: Modality, names: list[ContrastName]) -> str:
    """The target's token in the inputs' style: its own token when its file is present (pseudo-validation),
    otherwise the spelling of the family the others fit, in their letter case (``T1``, ``T2``, ``Flair``
    give ``T1ce``; ``t1``, ``t1c``, ``t2`` give ``fla``)."""
    for name in names:
        if name.modality is target:
            return name.token
    tokens = {name.modality: name.token for name in names}
    spelling = NAMING_FAMILIES[naming_family(tokens)][target]
    return _apply_case(spelling, _letter_case(tokens.values()))


def output_file_name(
    case_id: str, target: Modality | str, names: Iterable[ContrastName], naming: str = "input"
) -> str:
    """The flat file name of the synthetic ``target`` contrast of a case whose images are ``names``.

    Ends in ``.nii.gz`` for NIfTI inputs (the challenge and the orchestrator expect it, whether the inputs
    are ``.nii`` or ``.nii.gz``); MetaImage or NRRD inputs give an output in their own format (``.mha``,
    ``.mhd``, ``.nrrd``; the most common one when a case mixes formats).
    ``naming="input"``: when every input shares prefix, separator and suffix, the output follows them
    (``BraTS2021_00000_t1ce.nii.gz``, ``TCGA-DU-7294_fla_bet.nii.gz``); bare names (``T1.nii.gz``) and
    inputs that disagree fall back to ``<case_id>-<canonical>.nii.gz``, because a name built from one input
    alone could mislead. ``naming="brats2023"``: always ``<case_id>-<canonical>.nii.gz``.
    """
    if naming not in NAMING_SCHEMES:
        raise ValueError(f"naming must be one of {', '.join(NAMING_SCHEMES)}, not {naming!r}")
    target = modality_from_alias(target)
    names = list(names)
    patterns = {(n.prefix, n.separator, n.suffix) for n in names}
    prefix, separator, suffix = patterns.pop() if len(patterns) == 1 else ("", "", "")
    extension = _output_extension(names)
    if naming == "input" and prefix:
        result = f"{prefix}{separator}{_token_for(target, names)}{suffix}{extension}"
    elif case_id:
        result = f"{case_id}-{target.value}{extension}"
    else:
        raise ValueError(f"an empty case id cannot name the output of the {target.value} contrast")
    if "/" in result or "\\" in result or result.startswith("."):
        raise ValueError(f"cannot build a flat output file name for case {case_id!r}: got {result!r}")
    return result


FAMILY_NAMES: dict[str, str] = {
    "brats2023": "BraTS 2023",
    "brats2021": "BraTS 2021",
    "toolkit": "the BraTS-Toolkit's",
    "gd": "the t1Gd",
}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def plain_case_name(case_id: str) -> str:
    """``case_id`` in letters, digits, ``.``, ``-`` and ``_`` only (``Patient_002_Muller`` of
    ``Patient 002 (Müller)``): a name every file system, shell and pipeline takes as it is."""
    ascii_text = unicodedata.normalize("NFKD", case_id).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9.-]+", "_", ascii_text).strip("_.") or "case"


def naming_note(
    case_id: str,
    target: Modality | str,
    names: Iterable[ContrastName],
    output_name: str,
    naming: str = "input",
) -> str | None:
    """A sentence for the log where the output's name may surprise: the target's spelling is an
    abbreviation taken from the inputs' scheme (``P003_Fla.mha`` beside ``P003_T1``, ``_T1c``, ``_T2``:
    the BraTS-Toolkit's ``fla``, capitalised as the inputs are), or the name is the case folder's and that
    holds characters a plain file name avoids (``Patient 002 (Müller)-t2w.nii.gz``). None otherwise."""
    if naming != "input":
        return None
    target = modality_from_alias(target)
    names = list(names)
    plain = output_file_name(case_id, target, names, "brats2023")
    inputs = ", ".join(n.name for n in names)
    if output_name != plain:
        token = _token_for(target, names)
        usual = {NAMING_FAMILIES[family][target] for family in ("brats2023", "brats2021")}
        if token.lower() in usual or any(n.modality is target for n in names):
            return None
        family = naming_family({n.modality: n.token for n in names})
        spelled = ", ".join(NAMING_FAMILIES[family][m] for m in MODALITIES)
        return (
            f"{case_id}: the output is named {output_name} after its inputs ({inputs}): "
            f"{FAMILY_NAMES[family]} names ({spelled}) in their letter case; "
            f"--naming brats2023 names it {plain}"
        )
    if _PLAIN_NAME.fullmatch(case_id):
        return None
    return (
        f"{case_id}: the output is named {output_name} after the case folder, as its input names hold no "
        f"case id ({inputs}); for a plain file name rename the folder, e.g. to {plain_case_name(case_id)}"
    )
