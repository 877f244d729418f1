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

Command line::

    python -m brasyn.weights init --config tiny --out DIR [--seed S] [--targets t1n t2f ...]
    python -m brasyn.weights import-official DIR --out DIR     (the official files, mapped by name)
    python -m brasyn.weights import-official [--target t2f] [--force] FILE --out DIR
    python -m brasyn.weights verify DIR
    python -m brasyn.weights list DIR

Each takes ``-v`` for the debug log. Exit status: 0 on success, 1 when ``verify`` finds a bad checkpoint,
2 on an error (one log line says which and what to do).
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brasyn.commands.command import parse_arguments, run_command
from brasyn.commands.options import add_verbosity_option, contrast, whole_number
from brasyn.common.errors import BrasynError, ExitCode, UsageError, WeightsError
from brasyn.common.version import __version__
from brasyn.data.modalities import MODALITIES, Modality
from brasyn.model.diffusion import DiffusionConfig
from brasyn.model.unet import PRESETS, Denoiser, DenoiserConfig
from brasyn.weights.manifest import (
    DEFAULT_INTENSITY_RATIOS,
    FORMAT_VERSION,
    FORMATS,
    MANIFEST_NAME,
    CheckpointInfo,
    _existing_manifest,
    _is_plain_name,
    _now,
    _parse_ratios,
    _safe_load,
    _state_dict_problems,
    _verify,
    _write_atomic,
    _write_manifest_entry,
    sha256_file,
)
from brasyn.weights.official import import_official, import_official_folder, read_entries

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


class WeightStore:
    """The checkpoints of one weights folder; models are loaded on demand and kept."""

    def __init__(self, folder: Path | str) -> None:
        """``folder``: a weights folder, its ``manifest.json``, or one checkpoint file in it: then the
        folder's manifest (or official names) is read for that file's entry, and only that checkpoint is
        used (a case missing another contrast fails naming the folder to give instead)."""
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
        if info.quality == "random":
            logger.warning(
                "the %s weights in %s are RANDOM (python -m brasyn.weights init): they make noise, not "
                "images; use them for tests only, and import or train real weights for anything else",
                info.target.value,
                self.folder,
            )
        elif info.quality == "demo":
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
            "quality": "random",
            "seed": seed,
        }
        if preset:
            provenance["preset"] = preset
        infos.append(save_checkpoint(folder, model, target, provenance=provenance))
    return infos


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

    imp = commands.add_parser(
        "import-official",
        help="add released cWDM checkpoints (plain state_dicts): a folder of them, or one file",
    )
    imp.add_argument(
        "--target",
        type=contrast,
        help="the contrast FILE synthesises (t1n, t1c, t2w, t2f or an alias); needed only when the file "
        "name is not an official one (t1_gen.pt->t1n, t1ce_gen.pt->t1c, t2_gen.pt->t2w, flair_gen.pt->t2f)",
    )
    imp.add_argument(
        "--force",
        action="store_true",
        help="import FILE for --target even when its official name says another contrast",
    )
    imp.add_argument(
        "file", type=Path, metavar="PATH", help="a checkpoint file, or a folder of official ones"
    )
    imp.add_argument("--out", type=Path, required=True, help="weights folder to add them to")

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
            if status == "OK":
                try:  # a file can match its recorded hash and still hold more than tensors
                    _safe_load(path)
                except WeightsError as exc:
                    status = f"UNSAFE ({exc})"
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
            if args.file.is_dir():
                if args.target is not None or args.force:
                    raise UsageError(
                        f"{args.file} is a folder: its files are mapped by name, so --target and --force "
                        "apply to one file only (import-official --target T FILE --out DIR)"
                    )
                infos = import_official_folder(args.file, args.out)
            else:
                infos = [import_official(args.file, args.target, args.out, force=args.force)]
            for info in infos:
                source = info.provenance["source_file"]
                print(f"{info.target.value}  {args.out / info.file}  {info.sha256}  (from {source})")
            return ExitCode.OK
        if args.command == "verify":
            return _verify_folder(args.folder)
        return _list_folder(args.folder)

    # a corrupt file or an unwritable folder is the user's to fix: one sentence, no traceback
    return run_command(body, usage_errors=(BrasynError, ValueError, OSError))


if __name__ == "__main__":
    raise SystemExit(main())
