"""The manifest of a weights folder (one entry per target contrast: read, checked, written atomically) and
the checks on the files it lists (sha256, safe reading, the shape of a state_dict).

Each entry (:class:`CheckpointInfo`) names the checkpoint file and its sha256, its format, the denoiser
config, the diffusion settings (:class:`~brasyn.model.diffusion.DiffusionConfig`) and the intensity ratios
that restore the input scale; :mod:`brasyn.weights.store` loads the checkpoints it lists. Every write goes
through :func:`brasyn.common.files.atomic_write`, so a reader sees the old manifest or the whole new one.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from brasyn.common.errors import WeightsError
from brasyn.common.files import atomic_write, sha256_file
from brasyn.common.version import __version__
from brasyn.data.modalities import MODALITIES, Modality, conditions_for
from brasyn.model.diffusion import DiffusionConfig
from brasyn.model.unet import Denoiser, DenoiserConfig

__all__ = [
    "DEFAULT_INTENSITY_RATIOS",
    "FORMATS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CheckpointInfo",
    "file_kind",
    "not_a_checkpoint",
    "parse_ratios",
    "require_regular_file",
]

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
FORMATS = ("brasyn", "official")

# target -> {condition: median over cases of p99.9(target) / p99.9(condition)}.
# Derived once from the four public cases in shared/data/real (BraTS-GLI-00001-000, BraTS-MET-00110-000,
# TCGA-DU-7294, preprocessed_case): np.percentile over the whole volume (background included) of each
# contrast read with nibabel, the ratio per case, the median of the four (mean of the middle two),
# rounded to 2 decimals. Per-case 99.9th percentiles (t1n, t1c, t2w, t2f):
#   BraTS-GLI-00001-000  1441, 7664, 2473, 2608
#   BraTS-MET-00110-000   601,  817, 2118,  589
#   TCGA-DU-7294          704,  724, 2065,  586
#   preprocessed_case     514,  777,  261,  382
# Four cases from different scanners and pipelines give ratios spread over up to 10x, so these are rough:
# a model trained with brasyn records its own ratios, measured on its training cases.
DEFAULT_INTENSITY_RATIOS: dict[Modality, dict[Modality, float]] = {
    Modality.T1N: {Modality.T1C: 0.70, Modality.T2W: 0.46, Modality.T2F: 1.11},
    Modality.T1C: {Modality.T1N: 1.44, Modality.T2W: 1.68, Modality.T2F: 1.71},
    Modality.T2W: {Modality.T1N: 2.32, Modality.T1C: 1.46, Modality.T2F: 2.24},
    Modality.T2F: {Modality.T1N: 0.91, Modality.T1C: 0.61, Modality.T2W: 0.67},
}

_SHA256 = re.compile(r"[0-9a-f]{64}")
_HOW_TO_CREATE = (
    "create it with `python -m brasyn.weights import-official --target T FILE --out {folder}` (one released "
    "cWDM checkpoint per target contrast) or, for tests only, `python -m brasyn.weights init --config tiny "
    "--out {folder}` (random weights)"
)


@dataclass(frozen=True)
class CheckpointInfo:
    """One manifest entry: where a target's checkpoint lies and how to use it."""

    target: Modality
    """The contrast the model synthesises."""
    file: str
    """File name inside the weights folder."""
    sha256: str
    """Hex sha256 of the file; checked before the file is read."""
    format: str
    """``"brasyn"`` (state_dict, config and target in a dict) or ``"official"`` (plain state_dict)."""
    config: DenoiserConfig
    """Size of the denoiser the state_dict belongs to."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """Diffusion settings the model was trained with (chain length, schedule, prediction, clipping)."""
    intensity_ratios: dict[Modality, float] = field(default_factory=dict)
    """Per condition contrast c: median over training cases of p99.9(target) / p99.9(c); left empty, it
    becomes ``DEFAULT_INTENSITY_RATIOS[target]``."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Free-form record of where the weights came from (source, command, created ...)."""

    def __post_init__(self) -> None:
        target = Modality(self.target)
        object.__setattr__(self, "target", target)
        if not _is_plain_name(self.file):
            raise ValueError(f"file {self.file!r} must be a plain file name inside the weights folder")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 lower-case hex digits")
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if not isinstance(self.config, DenoiserConfig):
            raise ValueError(f"config must be a DenoiserConfig, not {type(self.config).__name__}")
        diffusion = DiffusionConfig() if self.diffusion is None else self.diffusion
        if not isinstance(diffusion, DiffusionConfig):
            raise ValueError(f"diffusion must be a DiffusionConfig, not {type(diffusion).__name__}")
        provenance = {} if self.provenance is None else self.provenance
        if not isinstance(provenance, Mapping):
            raise ValueError("provenance must be a dict")
        object.__setattr__(self, "diffusion", diffusion)
        # An own copy: the record is frozen, and the caller's dict must not change under it.
        object.__setattr__(self, "provenance", copy.deepcopy(dict(provenance)))
        object.__setattr__(self, "intensity_ratios", parse_ratios(target, self.intensity_ratios))

    @classmethod
    def create(
        cls,
        target: Modality | str,
        file: str,
        sha256: str,
        format: str,
        config: DenoiserConfig,
        provenance: Mapping[str, Any],
        *,
        diffusion: DiffusionConfig | None = None,
        intensity_ratios: Mapping[Modality | str, float] | None = None,
    ) -> CheckpointInfo:
        """The entry of a checkpoint file brasyn has just hashed (written, imported or found under an
        official name): the one way a new entry is made. The diffusion settings default to
        ``DiffusionConfig()`` (those of the released models and of brasyn's training), the ratios to
        ``DEFAULT_INTENSITY_RATIOS[target]``; ``provenance`` is recorded in the order given."""
        return cls(
            target=Modality(target),
            file=file,
            sha256=sha256,
            format=format,
            config=config,
            diffusion=DiffusionConfig() if diffusion is None else diffusion,
            intensity_ratios=dict(intensity_ratios or {}),
            provenance=dict(provenance),
        )

    @property
    def quality(self) -> str:
        """ "random" (``weights init``: noise, for tests), "demo" (the bundled small model) or "trained"."""
        if self.provenance.get("quality") == "random" or self.provenance.get("command") == "init":
            return "random"
        return "demo" if self.provenance.get("quality") == "demo" else "trained"

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry, JSON-serialisable."""
        return {
            "file": self.file,
            "target": self.target.value,
            "sha256": self.sha256,
            "format": self.format,
            "config": self.config.to_dict(),
            "diffusion": self.diffusion.to_dict(),
            "intensity_ratios": {m.value: self.intensity_ratios[m] for m in conditions_for(self.target)},
            "provenance": copy.deepcopy(self.provenance),
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> CheckpointInfo:
        """Parse a manifest entry; ``ValueError`` says which field is wrong. Missing ``diffusion`` (or
        some of its keys) and ``intensity_ratios`` take the defaults (``DiffusionConfig()``,
        ``DEFAULT_INTENSITY_RATIOS``)."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"an entry must be an object, got {type(entry).__name__}")
        for key in ("file", "target", "sha256", "format", "config"):
            if key not in entry:
                raise ValueError(f"the field {key!r} is missing")
        if entry["target"] not in {m.value for m in MODALITIES}:
            raise ValueError(
                f"target {entry['target']!r} is not one of {', '.join(m.value for m in MODALITIES)}"
            )
        if not isinstance(entry["config"], Mapping):
            raise ValueError("config must be an object")
        try:
            config = DenoiserConfig.from_dict(entry["config"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"config is invalid: {e}") from e
        raw = entry.get("diffusion")
        if raw is not None and not isinstance(raw, Mapping):
            raise ValueError("diffusion must be an object")
        try:
            diffusion = DiffusionConfig() if raw is None else DiffusionConfig.from_dict(raw)
        except ValueError as e:
            raise ValueError(f"diffusion is invalid: {e}") from e
        return cls(
            target=Modality(entry["target"]),
            file=entry["file"],
            sha256=entry["sha256"],
            format=entry["format"],
            config=config,
            diffusion=diffusion,
            intensity_ratios=entry.get("intensity_ratios") or {},
            provenance=entry.get("provenance") or {},
        )


def _is_plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and bool(name)
        and name not in (".", "..")
        and Path(name).name == name
        and "\\" not in name
        and "\x00" not in name
    )


def parse_ratios(target: Modality, ratios: Mapping[Any, Any] | None) -> dict[Modality, float]:
    """Ratios keyed by Modality, checked: exactly the three conditions, finite and positive; empty or
    None gives the defaults."""
    conditions = conditions_for(target)
    if not ratios:
        return dict(DEFAULT_INTENSITY_RATIOS[target])
    if not isinstance(ratios, Mapping):
        raise ValueError("intensity_ratios must be an object")
    ratios = {k.value if isinstance(k, Modality) else str(k): v for k, v in ratios.items()}
    keys = set(ratios)
    expected = {m.value for m in conditions}
    if keys != expected:
        raise ValueError(
            f"intensity_ratios of target {target} must have exactly the keys {sorted(expected)}, "
            f"got {sorted(keys)}"
        )
    parsed = {}
    for m in conditions:
        value = ratios[m.value]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"intensity_ratios[{m.value!r}] = {value!r} is not a finite number")
        if value <= 0:
            raise ValueError(f"intensity_ratios[{m.value!r}] = {value!r} must be positive")
        parsed[m] = float(value)
    return parsed


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The raw manifest of ``folder``, its structure checked; WeightsError if absent or invalid."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise WeightsError(
            f"The weights folder {folder} does not exist; {_HOW_TO_CREATE.format(folder=folder)}."
        )
    if not path.is_file():
        raise WeightsError(
            f"The weights folder {folder} has no {MANIFEST_NAME}; {_HOW_TO_CREATE.format(folder=folder)}."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WeightsError(
            f"{path} cannot be read as JSON ({e}); restore it or create the folder again: "
            f"{_HOW_TO_CREATE.format(folder=folder)}."
        ) from e
    if not isinstance(manifest, dict):
        raise WeightsError(f"{path} must hold a JSON object, not {type(manifest).__name__}.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise WeightsError(
            f"{path} has format_version {version!r}; this brasyn ({__version__}) reads format_version "
            f"{FORMAT_VERSION}. Use the brasyn version that wrote it, or create the folder again."
        )
    if not isinstance(manifest.get("checkpoints"), dict):
        raise WeightsError(f"{path} has no 'checkpoints' object.")
    return manifest


def _parse_entries(folder: Path, manifest: Mapping[str, Any]) -> dict[Modality, CheckpointInfo]:
    path = folder / MANIFEST_NAME
    entries: dict[Modality, CheckpointInfo] = {}
    for key, entry in manifest["checkpoints"].items():
        # Checked first: with the wrong target every other field would be judged against the wrong contrast.
        if isinstance(entry, Mapping) and "target" in entry and entry["target"] != key:
            raise WeightsError(f"{path}: the entry {key!r} names target {entry['target']!r}.")
        try:
            info = CheckpointInfo.from_dict(entry)
        except ValueError as e:
            raise WeightsError(f"{path}: the entry {key!r} is invalid: {e}.") from e
        entries[info.target] = info
    return entries


def _existing_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest, fully checked, or a new empty one; called before a checkpoint is written so
    that a broken manifest is refused before anything changes."""
    if not (folder / MANIFEST_NAME).exists():
        return {"format_version": FORMAT_VERSION, "checkpoints": {}}
    manifest = _read_manifest(folder)
    _parse_entries(folder, manifest)
    return manifest


def _write_manifest_entry(folder: Path, info: CheckpointInfo) -> None:
    """Add or replace the entry of ``info.target``; other entries are kept as they are."""
    manifest = _existing_manifest(folder)
    checkpoints = dict(manifest["checkpoints"])
    checkpoints[info.target.value] = info.to_dict()
    manifest["checkpoints"] = {m.value: checkpoints[m.value] for m in MODALITIES if m.value in checkpoints}
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(folder / MANIFEST_NAME, lambda f: f.write(text.encode("utf-8")))


# (resolved path, size, mtime_ns, sha256) of files whose hash this process has already checked.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def file_kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words."""
    for test, name in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def require_regular_file(path: Path, mode: int | None = None) -> None:
    """Refuse a checkpoint (or a link to one) that is not a regular file, before anything reads it: a FIFO
    or ``/dev/zero`` would make the sha256 read never end."""
    mode = path.stat().st_mode if mode is None else mode
    if not stat.S_ISREG(mode):
        raise WeightsError(
            f"The checkpoint {path} is {file_kind(mode)}, not a regular file: put the checkpoint file itself "
            "there (a link is fine if it leads to a regular file)."
        )


def _verify(path: Path, expected: str) -> None:
    """Check the file's sha256 unless this process already checked this very file (same size and mtime)."""
    try:
        status = path.stat()
    except FileNotFoundError:
        raise WeightsError(
            f"The checkpoint {path} listed in {path.parent / MANIFEST_NAME} is missing; copy it back or "
            "create the weights folder again."
        ) from None
    require_regular_file(path, status.st_mode)
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns, expected)
    if key in _VERIFIED:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise WeightsError(
            f"The checkpoint {path} is damaged or was replaced: its sha256 is {actual}, but "
            f"{path.parent / MANIFEST_NAME} expects {expected}. Copy the original file back, or import "
            "it again if the replacement is intended."
        )
    _VERIFIED.add(key)


def _mark_verified(path: Path, digest: str) -> None:
    """Note that ``digest`` was just computed from ``path``, so loading it does not hash it again."""
    status = path.stat()
    _VERIFIED.add((str(path.resolve()), status.st_size, status.st_mtime_ns, digest))


def not_a_checkpoint(path: Path) -> str | None:
    """What the file is, in words, when its first bytes show it is no torch checkpoint (torch writes a zip
    archive, or a pickle in its old format); None when it may be one. torch's own error for such a file
    is a bare number from its unpickler."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    if head.startswith(b"version https://git-lfs"):
        return (
            "is a Git LFS pointer (a small text file standing for the real one), not the checkpoint: "
            "download the file itself (git lfs pull, or fetch-official)"
        )
    if head.startswith(b"\x1f\x8b"):
        return "is gzip-compressed, not a torch checkpoint: unpack it first"
    if len(head) > 9 and head[8:10] == b'{"':
        return "looks like a safetensors file, which brasyn does not read: use the released .pt file"
    if head.lstrip()[:1] in (b"<", b"{", b"["):
        return "is a text (HTML, JSON or XML) file, not a torch checkpoint: perhaps a download's error page"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "is not a torch checkpoint (neither a zip archive as torch writes nor a pickle)"
    return (
        f"is a text file ({text.strip().splitlines()[0][:40]!r} ...), not a torch checkpoint"
        if text.strip()
        else ("holds only white space, not a torch checkpoint")
    )


def _safe_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` that cannot run code from the file; any failure becomes a WeightsError. ``mmap``
    maps the tensors instead of reading them (for a look at their shapes)."""
    try:
        require_regular_file(path)
        what = not_a_checkpoint(path)
        if what is not None:
            raise WeightsError(f"{path} {what}.")
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except WeightsError:
        raise
    except pickle.UnpicklingError as e:
        # torch's own hint (load it with weights_only=False) is the one thing never to do with such a file
        raise WeightsError(
            f"{path} holds code or objects other than tensors; brasyn refuses to load it. Use a checkpoint "
            "from a trusted source (the official cWDM files are plain tensors)."
        ) from e
    except Exception as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{path} could not be read as a safe torch checkpoint (weights_only=True): {first_line}. "
            "It is damaged or is not a weights file."
        ) from e


def _state_dict_problems(state: Any, config: DenoiserConfig) -> str | None:
    """Why ``state`` is not a plain state_dict of a Denoiser of ``config`` (None if it is one)."""
    if not isinstance(state, Mapping):
        return f"it holds a {type(state).__name__}, not a state_dict (a dict of tensors)"
    if "state_dict" in state:
        return (
            "it is a dict with a 'state_dict' entry (a brasyn or training checkpoint), not a plain state_dict"
        )
    not_tensors = [
        str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if not_tensors:
        return f"it is not a dict of tensors (e.g. entry {not_tensors[0]!r})"
    with torch.device("meta"):  # shapes only: no memory for the full-size model
        expected = {k: tuple(v.shape) for k, v in Denoiser.from_config(config).state_dict().items()}
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            more = f" (and {len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:3])}{more}")
    if problems:
        return f"it does not fit the denoiser config {config.to_dict()}: " + "; ".join(problems)
    return None
