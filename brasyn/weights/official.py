"""The released cWDM checkpoints as downloaded: their file names, the contrast each name stands for, the
structural check of such a file, reading a folder of them without a manifest, and importing them.

The official files are plain state_dicts (``torch.save(model.state_dict())``) named after the BraTS
contrast they synthesise: ``t1_gen.pt`` (t1n), ``t1ce_gen.pt`` (t1c), ``t2_gen.pt`` (t2w) and
``flair_gen.pt`` (t2f); names are matched case-insensitively. A weights folder that has no
``manifest.json`` but holds such files is read as if a manifest listed them: each recognised file is
checked against the denoiser its shapes describe, hashed once, and used with the default diffusion
settings and intensity ratios. The mapping is logged and ends up in the run report.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from brasyn.common.errors import WeightsError
from brasyn.common.files import atomic_write, sha256_file
from brasyn.common.version import __version__
from brasyn.data.modalities import Modality
from brasyn.model.unet import PRESETS, DenoiserConfig
from brasyn.weights.manifest import (
    MANIFEST_NAME,
    CheckpointInfo,
    _existing_manifest,
    _mark_verified,
    _now,
    _parse_entries,
    _read_manifest,
    _safe_load,
    _state_dict_problems,
    _write_manifest_entry,
)
from brasyn.weights.release import is_official_architecture, release_check

__all__ = [
    "OFFICIAL_NAMES",
    "OFFICIAL_SOURCE",
    "OfficialFolder",
    "adopt_official_files",
    "check_official",
    "find_official",
    "import_official",
    "import_official_folder",
    "infer_config",
    "official_target",
    "read_entries",
    "replaced_checkpoint",
    "source_label",
]

logger = logging.getLogger("brasyn.official")

OFFICIAL_SOURCE = "HuggingFace pfriedri/cwdm"

OFFICIAL_NAMES: dict[str, Modality] = {
    "t1_gen.pt": Modality.T1N,
    "t1ce_gen.pt": Modality.T1C,
    "t2_gen.pt": Modality.T2W,
    "flair_gen.pt": Modality.T2F,
}
"""Released file name (lower case) -> the contrast that checkpoint synthesises."""

MAPPING_TEXT = ", ".join(f"{name}->{m.value}" for name, m in OFFICIAL_NAMES.items())

# Files that look like checkpoints: left out of a folder of official files, they are worth a warning.
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
# What a weights folder may hold besides checkpoints, without a word.
_KNOWN_EXTRAS = ("baselines.json", "readme.md", "readme.txt")


def source_label(config: DenoiserConfig) -> str:
    """Where a plain state_dict under a released name comes from, as far as its shapes tell: the release
    only when it has the released architecture (the name alone proves nothing)."""
    if is_official_architecture(config):
        return OFFICIAL_SOURCE
    return (
        f"not the released architecture (model_channels {config.model_channels}, channel_mult "
        f"{','.join(map(str, config.channel_mult))}, {config.num_res_blocks} residual blocks)"
    )


def official_target(name: str) -> Modality | None:
    """The contrast a released file name stands for (case-insensitive), None for any other name."""
    return OFFICIAL_NAMES.get(Path(name).name.lower())


@dataclass(frozen=True)
class OfficialFolder:
    """The files of a folder whose names identify an official checkpoint, and the others."""

    folder: Path
    files: dict[Modality, Path]
    ignored: list[str] = field(default_factory=list)


def find_official(folder: Path | str) -> OfficialFolder | None:
    """The official checkpoints ``folder`` holds by name; None when it holds none (or is no folder). Two
    files naming the same contrast (``T1_gen.pt`` and ``t1_gen.pt``) are refused: which one is meant?"""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    files: dict[Modality, Path] = {}
    ignored = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        target = official_target(path.name) if path.is_file() else None
        if target is None:
            ignored.append(path.name)
        elif target in files:
            raise WeightsError(
                f"The weights folder {folder} holds both {files[target].name} and {path.name}, which both "
                f"name the {target.value} checkpoint; keep one."
            )
        else:
            files[target] = path
    return OfficialFolder(folder, files, ignored) if files else None


def infer_config(state: Any) -> DenoiserConfig | None:
    """The denoiser size a state_dict's shapes describe, or None when they describe none.

    The widths, the number of levels (one upsampling block per level but the last) and of residual blocks
    are read from the shapes; the GroupNorm group count leaves no trace in them, so it is that of the
    preset of the same shape, else 32 (the official value) or the largest count all widths allow."""
    try:
        first = state["input_blocks.0.0.weight"]
        out_channels = int(state["out.2.weight"].shape[0])
        model_channels, in_channels = int(first.shape[0]), int(first.shape[1])
        blocks = {int(k.split(".")[1]) for k in state if k.startswith("output_blocks.")}
        ups = {
            int(k.split(".")[1]) for k in state if k.startswith("output_blocks.") and k.split(".")[2] == "1"
        }
        levels = len(ups) + 1
        if not blocks or len(blocks) % levels:
            return None
        res_blocks = len(blocks) // levels - 1
        widths = [
            int(state[f"input_blocks.{1 + level * (res_blocks + 1)}.0.out_layers.3.weight"].shape[0])
            for level in range(levels)
        ]
    except (KeyError, AttributeError, TypeError, ValueError, IndexError):
        return None
    if res_blocks < 1 or model_channels < 1 or any(w % model_channels for w in widths):
        return None
    shape = {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "model_channels": model_channels,
        "channel_mult": tuple(w // model_channels for w in widths),
        "num_res_blocks": res_blocks,
    }
    for preset in PRESETS.values():
        if all(getattr(preset, k) == v for k, v in shape.items()):
            return preset
    try:
        return DenoiserConfig(**shape, num_groups=math.gcd(32, *widths))
    except ValueError:
        return None


def check_official(path: Path, config: DenoiserConfig | None = None) -> DenoiserConfig:
    """The config ``path`` (a plain state_dict) fits exactly; WeightsError naming the file otherwise.

    Without ``config`` it is inferred from the shapes and then checked strictly; a size other than the
    official one is allowed (small models in tests, retrained ones) with a warning."""
    state = _load_shapes(path)
    chosen = config or infer_config(state) or PRESETS["official"]
    problem = _state_dict_problems(state, chosen)
    if problem:
        raise WeightsError(
            f"{path} is not an official cWDM checkpoint: {problem}. Expected the plain state_dict "
            f"released at {OFFICIAL_SOURCE} (one file per target contrast)."
        )
    if config is None and chosen != PRESETS["official"]:
        logger.warning(
            "%s is not of the official cWDM size (it has model_channels %d, channel_mult %s, %d residual "
            "blocks per level; the official model 64, (1, 2, 2, 4, 4), 2): using it at the size its shapes "
            "describe",
            path,
            chosen.model_channels,
            chosen.channel_mult,
            chosen.num_res_blocks,
        )
    return chosen


def _load_shapes(path: Path) -> Any:
    """The file's state_dict, memory-mapped where the format allows it: the check needs shapes only."""
    try:
        return _safe_load(path, mmap=True)
    except WeightsError:
        return _safe_load(path)  # an old (non-zip) file cannot be mapped; a bad one fails here again


def _provenance(source: Path, config: DenoiserConfig, **extra: Any) -> dict[str, Any]:
    return {
        "source": source_label(config),
        "source_file": source.name,
        **extra,
        "brasyn_version": __version__,
        "intensity_ratios": "defaults measured on 4 public cases (DEFAULT_INTENSITY_RATIOS)",
    }


def _implicit_entries(found: OfficialFolder) -> dict[Modality, CheckpointInfo]:
    entries = {}
    for target, path in found.files.items():
        config = check_official(path)
        digest = sha256_file(path)
        _mark_verified(path, digest)  # the file is hashed once per run, here
        entries[target] = CheckpointInfo.create(
            target,
            path.name,
            digest,
            "official",
            config,
            _provenance(path, config, listed_by="file name (no manifest.json)"),
        )
        logger.info("recognised official cWDM checkpoint %s as the %s model", path.name, target.value)
    for name in found.ignored:
        log = logger.warning if name.lower().endswith(_CHECKPOINT_SUFFIXES) else logger.debug
        if name.lower() not in _KNOWN_EXTRAS:
            log(
                "ignored %s in %s: not an official checkpoint name (%s); to use it, import it with "
                "`python -m brasyn.weights import-official --target T %s --out DIR`",
                name,
                found.folder,
                ", ".join(OFFICIAL_NAMES),
                found.folder / name,
            )
    return entries


def adopt_official_files(folder: Path) -> None:
    """Enter the released files a folder holds by name into a new manifest, before the first other
    checkpoint is written there: a manifest listing only the new one would hide them from every later run.
    A folder that has a manifest, or no released files, is left as it is."""
    if (folder / MANIFEST_NAME).exists():
        return
    found = find_official(folder)
    if found is None:
        return
    for info in _implicit_entries(found).values():
        _write_manifest_entry(folder, info)
    logger.info(
        "entered the released files of %s (%s) in a new %s, so they stay in use beside what is added",
        folder,
        ", ".join(path.name for path in found.files.values()),
        MANIFEST_NAME,
    )


def replaced_checkpoint(folder: Path, target: Modality) -> str | None:
    """What ``folder`` already holds for ``target`` (its manifest entry, a file under the released name,
    or ``<target>.pt``), in words, or None: writing a checkpoint for ``target`` there would replace it."""
    folder = Path(folder)
    if (folder / MANIFEST_NAME).is_file():
        entry = _read_manifest(folder)["checkpoints"].get(target.value)
        if isinstance(entry, Mapping):
            return f"{folder / str(entry.get('file'))} (the {target.value} entry of its {MANIFEST_NAME})"
    names = [n for n, t in OFFICIAL_NAMES.items() if t is target] + [f"{target.value}.pt"]
    present = [folder / n for n in names if (folder / n).exists()]
    if not present and folder.is_dir():  # released names are matched case-insensitively
        present = [p for p in folder.iterdir() if official_target(p.name) is target]
    return f"{present[0]}" if present else None


def read_entries(folder: Path) -> dict[Modality, CheckpointInfo]:
    """The checkpoints of a weights folder: from its manifest, or, without one, the official files it
    holds by name. A folder with neither is refused, naming the expected file names."""
    if (folder / MANIFEST_NAME).is_file() or not folder.is_dir():
        return _parse_entries(folder, _read_manifest(folder))
    found = find_official(folder)
    if found is None:
        raise WeightsError(
            f"The weights folder {folder} has no {MANIFEST_NAME} and none of the official cWDM checkpoint "
            f"names ({', '.join(OFFICIAL_NAMES)}); put the downloaded files there under those names, or "
            f"create a manifest with `python -m brasyn.weights import-official DIR --out {folder}` (a "
            f"folder of official files) or `python -m brasyn.weights import-official --target T FILE --out "
            f"{folder}` (one file of another name), or, for tests only, `python -m brasyn.weights init "
            f"--config tiny --out {folder}` (random weights)."
        )
    return _implicit_entries(found)


def _copy_atomic(source: Path, dest: Path) -> str:
    """Copy ``source`` to ``dest`` atomically; the sha256 of what was written."""

    def copy_bytes(f: IO[bytes]) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)

    return cast(str, atomic_write(dest, copy_bytes, checksum=True))


def _choose_target(file: Path, target: Modality | str | None, force: bool) -> tuple[Modality, str]:
    """The contrast to import ``file`` for and how that is known; WeightsError when it cannot be told or
    ``target`` contradicts the file name (unless ``force``)."""
    named = official_target(file.name)
    if target is None:
        if named is None:
            raise WeightsError(
                f"The name {file.name} does not say which contrast the checkpoint synthesises (the official "
                f"names are {MAPPING_TEXT}); pass --target t1n, t1c, t2w or t2f."
            )
        return named, "file name"
    target = Modality(target)
    if named is None:
        logger.warning(
            "the contrast of %s cannot be confirmed: its name is not an official one (%s), so brasyn takes "
            "your word (--target %s); a checkpoint used for the wrong contrast gives plausible but wrong "
            "images",
            file,
            MAPPING_TEXT,
            target.value,
        )
        return target, "--target (not confirmed by the file name)"
    if named != target:
        if not force:
            raise WeightsError(
                f"{file.name} is the official {named.value} checkpoint, but --target says {target.value}; "
                f"leave out --target, or pass --force if the file was renamed and really is {target.value}."
            )
        logger.warning(
            "%s is named like the official %s checkpoint but is imported as %s (--force)",
            file,
            named.value,
            target.value,
        )
        return target, f"--target --force (the file name says {named.value})"
    return target, "file name and --target"


def import_official(
    file: Path | str,
    target: Modality | str | None,
    folder: Path | str,
    *,
    config: DenoiserConfig | None = None,
    force: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Add a released cWDM checkpoint (a plain state_dict) to ``folder``.

    ``target`` None takes the contrast from an official file name (``flair_gen.pt`` -> t2f); a ``target``
    the name cannot confirm is taken with a warning; one the name contradicts is refused unless
    ``force``. The file must load strictly into a denoiser of ``config`` (default: the size its shapes
    describe, with a warning when not the official one). It is copied as ``<target>.pt`` unless it
    already lies in ``folder``, where it keeps its name.
    """
    file = Path(file)
    folder = Path(folder)
    if not file.is_file():
        raise WeightsError(f"The checkpoint {file} does not exist or is not a file.")
    target, target_from = _choose_target(file, target, force)
    config = check_official(file, config)
    folder.mkdir(parents=True, exist_ok=True)
    _existing_manifest(folder)
    adopt_official_files(folder)
    if file.resolve().parent == folder.resolve():
        file_name, digest = file.name, sha256_file(file)
    else:
        file_name = f"{target.value}.pt"
        digest = _copy_atomic(file, folder / file_name)
    info = CheckpointInfo.create(
        target,
        file_name,
        digest,
        "official",
        config,
        {
            **_provenance(file, config, command="import-official", target_from=target_from, created=_now()),
            **(provenance or {}),
        },
    )
    _write_manifest_entry(folder, info)
    logger.info(
        "imported %s as the %s checkpoint %s (sha256 %s): %s",
        file,
        target.value,
        folder / file_name,
        digest,
        release_check(info),
    )
    return info


def import_official_folder(source: Path | str, folder: Path | str) -> list[CheckpointInfo]:
    """Import every official file of ``source`` (mapped by name) into ``folder``; every file is checked
    before the first is written, so a bad one leaves ``folder`` as it was."""
    source = Path(source)
    found = find_official(source)
    if found is None:
        raise WeightsError(
            f"{source} holds none of the official cWDM checkpoint names ({MAPPING_TEXT}); import a file of "
            "another name with `python -m brasyn.weights import-official --target T FILE --out DIR`."
        )
    configs = {target: check_official(path) for target, path in found.files.items()}
    for name in found.ignored:
        if name.lower().endswith(_CHECKPOINT_SUFFIXES):
            logger.warning(
                "ignored %s: not an official checkpoint name (%s); import it with --target T",
                name,
                MAPPING_TEXT,
            )
    return [
        import_official(path, None, folder, config=configs[target]) for target, path in found.files.items()
    ]


def describe(info: CheckpointInfo) -> dict[str, Any]:
    """What a run report records about one checkpoint: the file, its hash and where it came from."""
    provenance: Mapping[str, Any] = info.provenance
    return {
        "file": info.file,
        "sha256": info.sha256,
        "format": info.format,
        "source": provenance.get("source"),
        "source_file": provenance.get("source_file"),
        "listed_by": provenance.get("listed_by", MANIFEST_NAME),
    }
