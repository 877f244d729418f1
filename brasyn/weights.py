"""Denoiser checkpoints on disk: one file per target contrast plus ``manifest.json`` in a weights folder.

The manifest maps each target contrast to its file, that file's sha256, its format, the denoiser config,
the diffusion settings and the intensity ratios the pipeline uses to restore the input scale::

    {"format_version": 1,
     "checkpoints": {"t1n": {"file": "t1n.pt", "target": "t1n", "sha256": "...", "format": "brasyn",
                             "config": {...},
                             "diffusion": {"steps": 1000, "schedule": "linear", "prediction": "x0",
                                           "clip": true},
                             "intensity_ratios": {"t1c": 0.7, "t2w": 0.46, "t2f": 1.11},
                             "provenance": {"source": "...", "created": "..."}}}}

``diffusion`` is a :class:`~brasyn.diffusion.DiffusionConfig`: the training chain's length and schedule,
what the network predicts (only ``"x0"``) and whether sampling clamps the predicted x0 to [0, 1]. Missing
keys (manifests written before ``prediction`` and ``clip`` existed hold only ``steps`` and ``schedule``)
and a missing ``diffusion`` take the defaults above; unknown keys are refused.

Two file formats:

- ``brasyn``: ``torch.save({"state_dict": ..., "config": config.to_dict(), "target": "t1n"})``.
- ``official``: the plain state_dict of the released cWDM checkpoints (HuggingFace pfriedri/cwdm).

Both are read with ``torch.load(..., weights_only=True)``, so a checkpoint cannot run code, and loaded
into :class:`~brasyn.unet.Denoiser` with ``strict=True``. Every file is checked against its sha256 before
it is read (once per file per process).

Command line::

    python -m brasyn.weights init --config tiny --out DIR [--seed S] [--targets t1n t2f ...]
    python -m brasyn.weights import-official --target t2f FILE --out DIR
    python -m brasyn.weights verify DIR
    python -m brasyn.weights list DIR

Each takes ``-v`` for the debug log. Exit status: 0 on success, 1 when ``verify`` finds a bad checkpoint,
2 on an error (one log line says which and what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from brasyn import __version__
from brasyn.command import parse_arguments, run_command
from brasyn.diffusion import DiffusionConfig
from brasyn.errors import BrasynError, ExitCode, WeightsError
from brasyn.modalities import MODALITIES, Modality, conditions_for
from brasyn.options import add_verbosity_option, contrast, whole_number
from brasyn.unet import PRESETS, Denoiser, DenoiserConfig

__all__ = [
    "MANIFEST_NAME",
    "FORMAT_VERSION",
    "FORMATS",
    "DEFAULT_INTENSITY_RATIOS",
    "CheckpointInfo",
    "WeightStore",
    "sha256_file",
    "save_checkpoint",
    "init_random",
    "import_official",
    "main",
]

logger = logging.getLogger("brasyn.weights")

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
FORMATS = ("brasyn", "official")
OFFICIAL_SOURCE = "HuggingFace pfriedri/cwdm"

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
_CHUNK = 1 << 20
_HOW_TO_CREATE = (
    "create it with `python -m brasyn.weights import-official --target T FILE --out {folder}` (one released "
    "cWDM checkpoint per target contrast) or, for tests only, `python -m brasyn.weights init --config tiny "
    "--out {folder}` (random weights)"
)

# (resolved path, size, mtime_ns, sha256) of files whose hash this process has already checked.
_VERIFIED: set[tuple[str, int, int, str]] = set()


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
        object.__setattr__(self, "intensity_ratios", _parse_ratios(target, self.intensity_ratios))

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
    )


def _parse_ratios(target: Modality, ratios: Mapping[Any, Any] | None) -> dict[Modality, float]:
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


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> str:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``, so readers see the
    old file or the whole new one, never a part; returns the sha256 of what was written."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); weights are often written by one user (an image build)
        # and read by another (the container's uid), so make it world-readable like a normal file.
        os.chmod(tmp, 0o644)
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return digest


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
    _write_atomic(folder / MANIFEST_NAME, lambda f: f.write(text.encode("utf-8")))


def _verify(path: Path, expected: str) -> None:
    """Check the file's sha256 unless this process already checked this very file (same size and mtime)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise WeightsError(
            f"The checkpoint {path} listed in {path.parent / MANIFEST_NAME} is missing; copy it back or "
            "create the weights folder again."
        ) from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
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


def _safe_load(path: Path) -> Any:
    """``torch.load`` that cannot run code from the file; any failure becomes a WeightsError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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


class WeightStore:
    """The checkpoints of one weights folder; models are loaded on demand and kept."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self._entries = _parse_entries(self.folder, _read_manifest(self.folder))
        self._models: dict[tuple[Modality, str], Denoiser] = {}

    def __repr__(self) -> str:
        return f"WeightStore({str(self.folder)!r}, targets={[m.value for m in self.targets()]})"

    def targets(self) -> list[Modality]:
        """Targets with a checkpoint, in the canonical order."""
        return [m for m in MODALITIES if m in self._entries]

    def info(self, target: Modality | str) -> CheckpointInfo:
        """The manifest entry of ``target``; WeightsError if the folder has none."""
        try:
            target = Modality(target)
        except ValueError:
            raise WeightsError(
                f"{target!r} is not a contrast; use one of {', '.join(m.value for m in MODALITIES)}."
            ) from None
        if target not in self._entries:
            present = ", ".join(m.value for m in self.targets()) or "none"
            raise WeightsError(
                f"The weights folder {self.folder} has no checkpoint for target {target.value} "
                f"(it has: {present}); add one with `python -m brasyn.weights import-official --target "
                f"{target.value} FILE --out {self.folder}`."
            )
        return self._entries[target]

    def load(self, target: Modality | str, device: torch.device | str = "cpu") -> Denoiser:
        """The denoiser for ``target`` on ``device``, in eval mode. The file's sha256 is checked first;
        the model is kept, so a second call returns the same object."""
        info = self.info(target)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        key = (info.target, str(device))
        if key in self._models:
            return self._models[key]

        path = self.folder / info.file
        _verify(path, info.sha256)
        loaded = _safe_load(path)
        if info.format == "brasyn":
            state = self._unwrap_brasyn(path, info, loaded)
        else:
            state = loaded
            problem = _state_dict_problems(state, info.config)
            if problem:
                raise WeightsError(f"{path} is listed as an official checkpoint but {problem}.")
        model = Denoiser.from_config(info.config)
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, AttributeError) as e:
            raise WeightsError(f"{path} does not fit its config {info.config.to_dict()}: {e}") from e
        model = model.to(device).eval()
        logger.info(
            "loaded %s denoiser from %s (%s format, %.1f M parameters) on %s",
            info.target.value,
            path,
            info.format,
            sum(p.numel() for p in model.parameters()) / 1e6,
            device,
        )
        if info.provenance.get("quality") == "demo":
            logger.warning(
                "the %s weights in %s are demo quality (a small model trained briefly on a few cases): "
                "for real use, import the official cWDM checkpoints (python -m brasyn.weights "
                "import-official) or train your own (python -m brasyn.train) and pass --weights DIR",
                info.target.value,
                self.folder,
            )
        self._models[key] = model
        return model

    @staticmethod
    def _unwrap_brasyn(path: Path, info: CheckpointInfo, loaded: Any) -> Mapping[str, Any]:
        if not isinstance(loaded, Mapping) or not {"state_dict", "config", "target"} <= set(loaded):
            raise WeightsError(
                f"{path} is listed as a brasyn checkpoint but is not a dict with 'state_dict', 'config' "
                "and 'target'; if it is a released cWDM file, import it with `python -m brasyn.weights "
                "import-official`."
            )
        # The manifest is what callers read; a file that disagrees with it would mislead them.
        if loaded["target"] != info.target.value:
            raise WeightsError(
                f"{path} holds a model for target {loaded['target']!r}, but the manifest lists it for "
                f"{info.target.value}."
            )
        try:
            file_config = DenoiserConfig.from_dict(loaded["config"])
        except (TypeError, ValueError, AttributeError) as e:
            raise WeightsError(f"{path} holds an invalid config: {e}") from e
        if file_config != info.config:
            raise WeightsError(
                f"{path} holds config {file_config.to_dict()}, but the manifest says {info.config.to_dict()}."
            )
        state = loaded["state_dict"]
        if not isinstance(state, Mapping):
            raise WeightsError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors.")
        return state


def save_checkpoint(
    folder: Path | str,
    model: Denoiser,
    target: Modality | str,
    *,
    intensity_ratios: Mapping[Modality | str, float] | None = None,
    provenance: Mapping[str, Any] | None = None,
    diffusion: DiffusionConfig | None = None,
    file_name: str | None = None,
) -> CheckpointInfo:
    """Write ``model`` as ``<target>.pt`` (brasyn format) into ``folder`` and add or replace its manifest
    entry; both writes are atomic. Ratios default to ``DEFAULT_INTENSITY_RATIOS[target]``, ``diffusion``
    (the settings the model was trained with) to ``DiffusionConfig()``."""
    folder = Path(folder)
    target = Modality(target)
    file_name = file_name or f"{target.value}.pt"
    if not _is_plain_name(file_name):
        raise ValueError(f"file_name {file_name!r} must be a plain file name")
    ratios = _parse_ratios(target, intensity_ratios)  # before writing anything: a bad value leaves no trace
    diffusion = DiffusionConfig() if diffusion is None else diffusion
    if not isinstance(diffusion, DiffusionConfig):
        raise ValueError(f"diffusion must be a DiffusionConfig, not {type(diffusion).__name__}")
    config = model.config
    folder.mkdir(parents=True, exist_ok=True)
    _existing_manifest(folder)
    # On the CPU, so the file loads the same whatever device the model trained on.
    payload = {
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "target": target.value,
    }
    digest = _write_atomic(folder / file_name, lambda f: torch.save(payload, f))
    info = CheckpointInfo(
        target=target,
        file=file_name,
        sha256=digest,
        format="brasyn",
        config=config,
        diffusion=diffusion,
        intensity_ratios=ratios,
        provenance={"created": _now(), "brasyn_version": __version__, **(provenance or {})},
    )
    _write_manifest_entry(folder, info)
    logger.info("wrote %s checkpoint %s (sha256 %s)", target.value, folder / file_name, digest)
    return info


@torch.no_grad()
def _randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Give every parameter random values, the layers a fresh model zero-initialises included."""
    for module in model.modules():
        if isinstance(module, nn.GroupNorm):
            module.weight.uniform_(0.5, 1.5, generator=generator)
            module.bias.uniform_(-0.1, 0.1, generator=generator)
        elif isinstance(module, (nn.Conv3d, nn.Linear)):
            # PyTorch's default scale (uniform within 1/sqrt(fan_in)): activations stay of order one.
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            module.weight.uniform_(-bound, bound, generator=generator)
            if module.bias is not None:
                module.bias.uniform_(-bound, bound, generator=generator)
        elif list(module.parameters(recurse=False)):
            raise TypeError(f"no random initialisation for {type(module).__name__}")


def init_random(
    folder: Path | str,
    config: str | DenoiserConfig = "tiny",
    seed: int = 0,
    targets: Iterable[Modality | str] = MODALITIES,
) -> list[CheckpointInfo]:
    """Randomly initialised checkpoints for tests and smoke runs; they synthesise noise, not images.

    Each target gets its own weights: its generator is seeded with ``seed * 4 + index of the target``.
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown config {config!r}; choose one of {', '.join(PRESETS)}")
        preset, config = config, PRESETS[config]
    else:
        preset = None
    infos = []
    for target in dict.fromkeys(Modality(t) for t in targets):
        model = Denoiser.from_config(config)
        generator = torch.Generator().manual_seed(seed * len(MODALITIES) + MODALITIES.index(target))
        _randomise(model, generator)
        provenance = {
            "source": "random initialisation (not a trained model)",
            "command": "init",
            "seed": seed,
        }
        if preset:
            provenance["preset"] = preset
        infos.append(save_checkpoint(folder, model, target, provenance=provenance))
    return infos


def _copy_atomic(source: Path, dest: Path) -> str:
    def copy_bytes(f: IO[bytes]) -> None:
        with open(source, "rb") as src:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                f.write(chunk)

    return _write_atomic(dest, copy_bytes)


def import_official(
    file: Path | str,
    target: Modality | str,
    folder: Path | str,
    *,
    config: DenoiserConfig | None = None,
) -> CheckpointInfo:
    """Add a released cWDM checkpoint (a plain state_dict) for ``target`` to ``folder``.

    The file must load strictly into a denoiser of ``config`` (default: the official size). It is
    copied as ``<target>.pt`` unless it already lies in ``folder``, where it keeps its name.
    """
    file = Path(file)
    folder = Path(folder)
    target = Modality(target)
    config = config or PRESETS["official"]
    if not file.is_file():
        raise WeightsError(f"The checkpoint {file} does not exist or is not a file.")
    state = _safe_load(file)
    problem = _state_dict_problems(state, config)
    if problem:
        raise WeightsError(
            f"{file} is not an official cWDM checkpoint: {problem}. Expected the plain state_dict "
            f"released at {OFFICIAL_SOURCE} (one file per target contrast)."
        )
    del state
    folder.mkdir(parents=True, exist_ok=True)
    _existing_manifest(folder)
    if file.resolve().parent == folder.resolve():
        file_name, digest = file.name, sha256_file(file)
    else:
        file_name = f"{target.value}.pt"
        digest = _copy_atomic(file, folder / file_name)
    info = CheckpointInfo(
        target=target,
        file=file_name,
        sha256=digest,
        format="official",
        config=config,
        diffusion=DiffusionConfig(),
        intensity_ratios=DEFAULT_INTENSITY_RATIOS[target],
        provenance={
            "source": OFFICIAL_SOURCE,
            "source_file": file.name,
            "command": "import-official",
            "created": _now(),
            "brasyn_version": __version__,
            "intensity_ratios": "defaults measured on 4 public cases (DEFAULT_INTENSITY_RATIOS)",
        },
    )
    _write_manifest_entry(folder, info)
    logger.info(
        "imported %s as the %s checkpoint %s (sha256 %s)", file, target.value, folder / file_name, digest
    )
    return info


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m brasyn.weights", description="Create, import, verify and list brasyn weights folders."
    )
    add_verbosity_option(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    contrasts = [m.value for m in MODALITIES]

    init = commands.add_parser("init", help="write randomly initialised checkpoints (tests, smoke runs)")
    init.add_argument("--config", choices=list(PRESETS), default="tiny", help="denoiser size (default: tiny)")
    init.add_argument("--out", type=Path, required=True, help="weights folder to write into")
    init.add_argument("--seed", type=whole_number(), default=0)
    init.add_argument(
        "--targets",
        nargs="+",
        type=contrast,
        default=contrasts,
        metavar="TARGET",
        help="contrasts to write a checkpoint for: t1n, t1c, t2w, t2f or an alias (default: all four)",
    )

    imp = commands.add_parser("import-official", help="add a released cWDM checkpoint (plain state_dict)")
    imp.add_argument(
        "--target",
        type=contrast,
        required=True,
        help="the contrast the checkpoint synthesises: t1n, t1c, t2w, t2f or an alias",
    )
    imp.add_argument("file", type=Path, help="the checkpoint file")
    imp.add_argument("--out", type=Path, required=True, help="weights folder to add it to")

    verify = commands.add_parser("verify", help="check every checkpoint's sha256")
    verify.add_argument("folder", type=Path)

    listing = commands.add_parser("list", help="show the checkpoints of a weights folder")
    listing.add_argument("folder", type=Path)
    for sub in (init, imp, verify, listing):
        # SUPPRESS: a sub-command's default must not undo a -v given before the sub-command
        add_verbosity_option(sub, default=argparse.SUPPRESS)
    return parser


def _verify_folder(folder: Path) -> ExitCode:
    store = WeightStore(folder)
    failures = 0
    for target in store.targets():
        info = store.info(target)
        path = folder / info.file
        if not path.is_file():
            status = "MISSING"
        else:
            actual = sha256_file(path)  # always re-read: verification must not trust this process's cache
            status = "OK" if actual == info.sha256 else f"MISMATCH (file has {actual})"
        failures += status != "OK"
        print(f"{target.value}  {info.file}  {info.sha256}  {status}")
    if failures:
        logger.error("%d checkpoint(s) in %s failed verification", failures, folder)
    return ExitCode.FAILED_CASES if failures else ExitCode.OK


def _list_folder(folder: Path) -> ExitCode:
    store = WeightStore(folder)
    for target in store.targets():
        info = store.info(target)
        c = info.config
        ratios = ", ".join(f"{m.value}={r:g}" for m, r in info.intensity_ratios.items())
        source = info.provenance.get("source", "unknown")
        print(
            f"{target.value}  {info.file}  {info.format}  channels={c.model_channels} "
            f"mult={','.join(map(str, c.channel_mult))} blocks={c.num_res_blocks}  "
            f"sha256={info.sha256[:12]}  ratios: {ratios}  source: {source}"
        )
    if not store.targets():
        logger.warning("%s: no checkpoints", folder)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    """Command line; returns 0 on success, 1 when ``verify`` finds a bad checkpoint, 2 on an error."""

    def body() -> ExitCode:
        args = parse_arguments(_parser(), argv)
        if args.command == "init":
            for info in init_random(args.out, args.config, seed=args.seed, targets=args.targets):
                print(f"{info.target.value}  {args.out / info.file}  {info.sha256}")
            return ExitCode.OK
        if args.command == "import-official":
            info = import_official(args.file, args.target, args.out)
            print(f"{info.target.value}  {args.out / info.file}  {info.sha256}")
            return ExitCode.OK
        if args.command == "verify":
            return _verify_folder(args.folder)
        return _list_folder(args.folder)

    # a corrupt file or an unwritable folder is the user's to fix: one sentence, no traceback
    return run_command(body, usage_errors=(BrasynError, ValueError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
