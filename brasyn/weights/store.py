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

``diffusion`` is a :class:`~brasyn.model.diffusion.DiffusionConfig`: the training chain's length and schedule,
what the network predicts (only ``"x0"``) and whether sampling clamps the predicted x0 to [0, 1]. Missing
keys (manifests written before ``prediction`` and ``clip`` existed hold only ``steps`` and ``schedule``)
and a missing ``diffusion`` take the defaults above; unknown keys are refused.

Two file formats:

- ``brasyn``: ``torch.save({"state_dict": ..., "config": config.to_dict(), "target": "t1n"})``.
- ``official``: the plain state_dict of the released cWDM checkpoints (HuggingFace pfriedri/cwdm).
  A folder of them under their released names needs no manifest (:mod:`brasyn.weights.official`).

Both are read with ``torch.load(..., weights_only=True)``, so a checkpoint cannot run code, and loaded
into :class:`~brasyn.model.unet.Denoiser` with ``strict=True``. Every file is checked against its sha256
before it is read (once per file per process).

The command line is :mod:`brasyn.commands.weights` (``python -m brasyn.weights``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from brasyn.common.errors import WeightsError
from brasyn.common.files import atomic_write, sha256_file
from brasyn.common.version import __version__
from brasyn.data.modalities import MODALITIES, Modality
from brasyn.model.diffusion import DiffusionConfig
from brasyn.model.unet import PRESETS, Denoiser, DenoiserConfig
from brasyn.weights.manifest import (
    MANIFEST_NAME,
    CheckpointInfo,
    _existing_manifest,
    _is_plain_name,
    _now,
    _safe_load,
    _state_dict_problems,
    _verify,
    _write_manifest_entry,
    file_kind,
    parse_ratios,
)
from brasyn.weights.official import adopt_official_files, read_entries, replaced_checkpoint
from brasyn.weights.release import Release, release_check

__all__ = ["UNRECORDED", "WeightStore", "init_random", "save_checkpoint", "verify_folder"]

UNRECORDED = "UNRECORDED"
"""The verification state of a checkpoint no manifest records (see :func:`verify_folder`)."""

logger = logging.getLogger("brasyn.weights")


class WeightStore:
    """The checkpoints of one weights folder; models are loaded on demand and kept."""

    def __init__(self, folder: Path | str, *, quality_notice: bool = True) -> None:
        """``folder``: a weights folder, its ``manifest.json``, or one checkpoint file in it: then the
        folder's manifest (or official names) is read for that file's entry, and only that checkpoint is
        used (a case missing another contrast fails naming the folder to give instead).
        ``quality_notice=False`` keeps quiet about random or demo weights (a benchmark's own throwaway
        weights)."""
        self.quality_notice = quality_notice
        self._noticed: set[str] = set()
        path = Path(folder)
        named = path if path.is_file() and path.name != MANIFEST_NAME else None
        self.folder = path.parent if path.is_file() else path
        self.named = named
        """The one checkpoint file ``--weights`` named, when it named a file."""
        # a manifest, else the official files the folder holds by name (brasyn.weights.official)
        self._entries = read_entries(self.folder)
        if named is not None:
            self._check_named_file(named)
        self._models: dict[tuple[Modality, str], Denoiser] = {}

    def _notice_quality(self, quality: str) -> None:
        """Warn once per store (one run) that its weights are random or demo quality, not once per target."""
        if not self.quality_notice or quality == "trained" or quality in self._noticed:
            return
        self._noticed.add(quality)
        if quality == "random":
            logger.warning(
                "the weights in %s are RANDOM (python -m brasyn.weights init): they make noise, not images; "
                "for tests only",
                self.folder,
            )
        else:
            logger.warning(
                "the weights in %s are demo quality (a small model trained briefly on a few cases), not for "
                "real use: fetch the released ones with python -m brasyn.weights fetch-official --out DIR",
                self.folder,
            )

    def __repr__(self) -> str:
        return f"WeightStore({str(self.folder)!r}, targets={[m.value for m in self.targets()]})"

    def _check_named_file(self, file: Path) -> None:
        listed = {info.file: target for target, info in self._entries.items()}
        if file.name not in listed:
            lister = "manifest" if (self.folder / MANIFEST_NAME).is_file() else "official file names"
            raise WeightsError(
                f"--weights names the file {file}, which its folder's {lister} does not list (it lists "
                f"{', '.join(sorted(listed)) or 'nothing'}); give the folder {self.folder}, or add the file "
                f"with `python -m brasyn.weights import-official --target T {file} --out WEIGHTS_DIR` and "
                "give WEIGHTS_DIR"
            )
        target = listed[file.name]
        self._entries = {target: self._entries[target]}
        logger.info(
            "--weights %s: the %s checkpoint of %s alone (give the folder for the other contrasts)",
            file,
            target.value,
            self.folder,
        )

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
        if target not in self._entries and self.named is not None:
            raise WeightsError(
                f"--weights names one checkpoint, {self.named} ({self.targets()[0].value}), and this case "
                f"needs {target.value}: give the weights folder {self.folder} (or one with a {target.value} "
                "checkpoint) instead of the file"
            )
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
        self._notice_quality(info.quality)
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
    ratios = parse_ratios(target, intensity_ratios)  # before writing anything: a bad value leaves no trace
    diffusion = DiffusionConfig() if diffusion is None else diffusion
    if not isinstance(diffusion, DiffusionConfig):
        raise ValueError(f"diffusion must be a DiffusionConfig, not {type(diffusion).__name__}")
    config = model.config
    folder.mkdir(parents=True, exist_ok=True)
    _existing_manifest(folder)
    adopt_official_files(folder)
    # On the CPU, so the file loads the same whatever device the model trained on.
    payload = {
        "state_dict": {k: v.detach().to("cpu") for k, v in model.state_dict().items()},
        "config": config.to_dict(),
        "target": target.value,
    }
    digest = cast(str, atomic_write(folder / file_name, lambda f: torch.save(payload, f), checksum=True))
    info = CheckpointInfo.create(
        target,
        file_name,
        digest,
        "brasyn",
        config,
        {"created": _now(), "brasyn_version": __version__, **(provenance or {})},
        diffusion=diffusion,
        intensity_ratios=ratios,
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
    *,
    overwrite: bool = False,
) -> list[CheckpointInfo]:
    """Randomly initialised checkpoints for tests and smoke runs; they synthesise noise, not images.

    Each target gets its own weights: its generator is seeded with ``seed * 4 + index of the target``.
    A folder that already holds a checkpoint for one of ``targets`` is refused (WeightsError, nothing
    written) unless ``overwrite``: random weights must never replace real ones unasked.
    """
    targets = [Modality(t) for t in targets]
    if not overwrite:
        for target in targets:
            existing = replaced_checkpoint(Path(folder), target)
            if existing is not None:
                raise WeightsError(
                    f"{folder} already holds a {target.value} checkpoint, {existing}; random weights would "
                    "replace it. Choose another --out, or pass --overwrite if it is to be replaced."
                )
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
            "quality": "random",
            "seed": seed,
        }
        if preset:
            provenance["preset"] = preset
        infos.append(save_checkpoint(folder, model, target, provenance=provenance))
    return infos


def verify_folder(folder: Path) -> Iterator[tuple[CheckpointInfo, str]]:
    """Every checkpoint of ``folder`` with its state, one at a time as each is checked: ``OK``,
    ``MISSING``, ``MISMATCH (file has <sha256>)``, ``UNSAFE (<why>)`` or, in a folder without a manifest,
    ``UNRECORDED (...)``: there a file's sha256 is its own, so nothing proves it unchanged unless it is a
    released file whose digest brasyn knows. Each file is hashed again: a verification must not trust
    this process's record of files already checked."""
    store = WeightStore(folder)
    recorded = (store.folder / MANIFEST_NAME).is_file()
    for target in store.targets():
        info = store.info(target)
        path = folder / info.file
        if path.exists() and not path.is_file():
            status = f"NOT A FILE ({file_kind(path.stat().st_mode)}; nothing was read from it)"
        elif not path.is_file():
            status = "MISSING"
        else:
            actual = sha256_file(path)
            status = "OK" if actual == info.sha256 else f"MISMATCH (file has {actual})"
            if status == "OK":
                try:  # a file can match its recorded hash and still hold more than tensors
                    _safe_load(path)
                except WeightsError as exc:
                    status = f"UNSAFE ({exc})"
            if status == "OK" and not recorded and not _pinned_release(info, actual):
                status = (
                    f"{UNRECORDED} (no {MANIFEST_NAME} records its sha256, so nothing proves the file "
                    "unchanged: record it with python -m brasyn.weights import-official or fetch-official)"
                )
        yield info, status


def _pinned_release(info: CheckpointInfo, sha256: str) -> bool:
    check = release_check(info, sha256)
    return check is not None and check.state is Release.RELEASED
