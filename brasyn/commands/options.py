"""What a user can say to brasyn, as command-line flags or as MLCube parameters, checked in one place.

The values are checked by the converters of :mod:`brasyn.commands.converters` (re-exported here), the same
for a flag and for a key of the parameters file.

The ``add_*_option`` helpers give every command the same flags with the same defaults (``--device``,
``-v``, ``--threads``, the speed switches).
"""

from __future__ import annotations

import argparse
import difflib
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch

from brasyn.commands.converters import (
    Converter,
    contrast,
    device_spec,
    map_spec,
    one_of,
    real_number,
    shown_value,
    whole_number,
)
from brasyn.common.acceleration import PRECISIONS, SpeedSettings
from brasyn.common.cpu_backends import BACKENDS, Backend
from brasyn.common.errors import UsageError
from brasyn.common.version import __version__
from brasyn.data.contrast_map import ContrastMap
from brasyn.inference.predictors import METHODS
from brasyn.model.diffusion import MAX_DRAWS, Sampling
from brasyn.model.samplers import SAMPLERS
from brasyn.weights.official import OFFICIAL_NAMES, official_target

__all__ = [
    "MLCUBE_IGNORED",
    "MLCUBE_PARAMETERS",
    "mlcube_weights",
    "NAMINGS",
    "add_data_option",
    "add_device_option",
    "add_map_option",
    "add_method_option",
    "add_draws_option",
    "add_sampling_options",
    "add_single_case_options",
    "add_speed_options",
    "add_threads_option",
    "add_verbosity_option",
    "add_version_option",
    "apply_threads",
    "torch_threads",
    "contrast_mapping",
    "read_parameters",
    "refuse_conflicts",
    "sampling_settings",
    "single_case_files",
    "speed_settings",
]

NAMINGS = ("input", "brats2023")
"""Output names like the case's inputs, or always ``<case>-<contrast>.nii.gz``."""

log = logging.getLogger("brasyn.options")


def add_map_option(parser: argparse.ArgumentParser) -> None:
    """``--map CONTRAST=PATTERN|FILE`` (repeatable): contrasts named by file-name patterns
    (:mod:`brasyn.data.contrast_map`); :func:`contrast_mapping` combines what was given."""
    parser.add_argument(
        "--map",
        type=map_spec,
        action="append",
        metavar="CONTRAST=PATTERN|FILE",
        help="name a contrast by a file-name pattern, e.g. --map t1c='*MPRAGE_post*' (repeatable; letter "
        "case ignored; asked before the built-in names), or a YAML file of such lines (t1c: '*MPRAGE_post*')",
    )


def contrast_mapping(args: argparse.Namespace) -> ContrastMap:
    """The one :class:`ContrastMap` of parsed arguments (``--map`` may be given several times; the
    parameters file's ``map`` is one), empty where none was given."""
    return ContrastMap.combine(getattr(args, "map", None))


SINGLE_CONTRASTS = ("t1n", "t1c", "t2w", "t2f")
"""The flags of the single-case form, one per contrast."""


def add_single_case_options(parser: argparse.ArgumentParser) -> None:
    """``--t1n FILE --t1c FILE --t2w FILE --t2f FILE --out FILE``: one case named file by file."""
    single = parser.add_argument_group(
        "one case", "three of the four input files and the output file, instead of --input and --output"
    )
    for name in SINGLE_CONTRASTS:
        single.add_argument(f"--{name}", type=Path, metavar="FILE", help=f"the {name} image")
    single.add_argument("--out", type=Path, metavar="FILE", help="the synthetic image to write (.nii.gz ...)")


def single_case_files(args: argparse.Namespace) -> dict[str, Path | None] | None:
    """The files of the single-case form (``{"t1n": path or None, ...}``), None for the folder form; a
    UsageError for a command line that mixes the two forms or gives half of one."""
    named = [f"--{m}" for m in SINGLE_CONTRASTS if getattr(args, m, None) is not None]
    if not named and getattr(args, "out", None) is None:
        return None
    folder_form = {
        "--input": args.input,
        "--output": args.output,
        "--map": getattr(args, "map", None),
        "--target": getattr(args, "target", None),
        "--devices": getattr(args, "devices", None),
    }
    mixed = [flag for flag, value in folder_form.items() if value]
    if mixed:
        raise UsageError(
            f"{' and '.join(mixed)} cannot be combined with the single-case form "
            f"({' '.join(named or ['--out'])}): give either --input DIR --output DIR for a folder of cases, "
            "or three of --t1n, --t1c, --t2w, --t2f and --out FILE for one case"
        )
    if args.out is None:
        raise UsageError(f"{' '.join(named)} given without --out FILE: name the synthetic image to write")
    return {m: getattr(args, m) for m in SINGLE_CONTRASTS}


# --- flags shared by the commands ----------------------------------------------------------------


def add_method_option(parser: argparse.ArgumentParser) -> None:
    """``--method``: what fills in the missing contrast
    (:func:`brasyn.inference.predictors.make_predictor`)."""
    parser.add_argument(
        "--method",
        type=one_of(*METHODS),
        default="diffusion",
        metavar="{" + ",".join(METHODS) + "}",
        help="diffusion: the cWDM model (default); linear, nearest: baselines on the CPU, no checkpoint "
        "(linear needs baselines.json in the weights folder)",
    )


def add_sampling_options(
    parser: argparse.ArgumentParser, sampler: str = "ddpm", steps: int = 1000, eta: bool = True
) -> None:
    """``--sampler``, ``--steps`` (and ``--eta``): how the diffusion model is sampled."""
    parser.add_argument(
        "--sampler",
        type=one_of(*SAMPLERS),
        default=sampler,
        metavar="{" + ",".join(SAMPLERS) + "}",
        help="ddpm: the official 1000-step ancestral sampler; ddim: deterministic, 20-100 steps; "
        f"dpm++2m: DPM-Solver++(2M), 10-20 steps; x0: one step, a quick preview (default {sampler})",
    )
    parser.add_argument(
        "--steps",
        type=whole_number(1, 1000),
        default=steps,
        help=f"sampling steps (default {steps}; e.g. --sampler ddim --steps 50)",
    )
    if eta:
        parser.add_argument(
            "--eta", type=real_number(0, 1), default=0.0, help="DDIM noise, 0 = deterministic (default)"
        )


def add_draws_option(parser: argparse.ArgumentParser) -> None:
    """``--draws N``: the output is the mean of N samples, their spread the uncertainty map."""
    parser.add_argument(
        "--draws",
        type=whole_number(1, MAX_DRAWS),
        default=1,
        help="synthesise N samples per case, each from its own noise, and write their voxel-wise mean; with "
        "--extras also <case>-<target>-std.nii.gz, their per-voxel standard deviation (default 1; N times "
        "the sampling time)",
    )


def sampling_settings(args: argparse.Namespace) -> Sampling:
    """The :class:`~brasyn.inference.predictors.Sampling` of parsed arguments (``--eta`` 0 and one draw
    where a command has no such flag)."""
    return Sampling(
        sampler=args.sampler, steps=args.steps, eta=getattr(args, "eta", 0.0), draws=getattr(args, "draws", 1)
    )


def add_version_option(parser: argparse.ArgumentParser, prog: str) -> None:
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")


def refuse_conflicts(args: argparse.Namespace) -> None:
    """Checks between options of the main command, after flags and parameters file are merged."""
    grid_of, target = getattr(args, "grid_of", None), getattr(args, "target", None)
    if grid_of is not None and grid_of == target:
        raise UsageError(f"--grid-of {grid_of} names the contrast to synthesise; name an input contrast")
    if getattr(args, "overwrite", False) and getattr(args, "resume_any", False):
        raise UsageError("--overwrite replaces every output and --resume-any keeps every one: give one")


def add_speed_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The speed switches of :class:`brasyn.common.acceleration.SpeedSettings`, with its defaults, in a group
    "speed" (returned, so a command can add its own switches to it). Every command that runs the
    denoiser takes them, so a setting measured with ``brasyn.bench.speed`` means the same in a run."""
    defaults = SpeedSettings()
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--precision",
        type=one_of(*PRECISIONS),
        default=defaults.precision,
        metavar="{" + ",".join(PRECISIONS) + "}",
        help="network precision: fp32 (default), bf16 (autocast, about 2x faster; the sampler stays fp32), "
        "auto (bf16 where the GPU or CPU computes it natively)",
    )
    speed.add_argument(
        "--compile", action="store_true", help="compile the denoiser with torch.compile (first case slower)"
    )
    speed.add_argument(
        "--backend",
        type=one_of(*BACKENDS),
        default=defaults.backend,
        metavar="{" + ",".join(BACKENDS) + "}",
        help="the engine of the denoiser: torch, openvino (CPU only, needs pip install 'brasyn[cpu]'; "
        "converted when the first case starts), auto (default: torch; docs/benchmarks.md says why)",
    )
    speed.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="run the denoiser in the contiguous (NCDHW) memory format instead of channels_last_3d",
    )
    speed.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_true",
        help="run the denoiser in channels_last_3d (the default; kept for older command lines)",
    )
    speed.add_argument(
        "--no-tf32", dest="tf32", action="store_false", help="no TF32 for float32 work on the GPU"
    )
    speed.add_argument(
        "--no-cudnn-benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="do not let cuDNN time its convolution algorithms",
    )
    parser.set_defaults(
        channels_last=defaults.channels_last, tf32=defaults.tf32, cudnn_benchmark=defaults.cudnn_benchmark
    )
    return speed


def speed_settings(args: argparse.Namespace) -> SpeedSettings:
    """The :class:`SpeedSettings` of arguments parsed with :func:`add_speed_options`."""
    return SpeedSettings(
        precision=str(args.precision),
        channels_last=bool(args.channels_last),
        tf32=bool(args.tf32),
        cudnn_benchmark=bool(args.cudnn_benchmark),
        compile=bool(args.compile),
        backend=str(getattr(args, "backend", Backend.AUTO)),
    )


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--device``, checked for its form when parsed (whether it exists is checked when the run starts)."""
    parser.add_argument(
        "--device",
        type=device_spec,
        default=default,
        metavar="{auto,cpu,cuda,cuda:N}",
        help="auto (the GPU with the most free memory, else the CPU), cpu, cuda or cuda:N "
        f"(default {default})",
    )


def add_data_option(parser: argparse.ArgumentParser, *, required: bool, after: str = "") -> None:
    """``--data DIR [DIR ...]``, also repeatable: the training commands take their folders one way."""
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        action="extend",
        required=required,
        metavar="DIR",
        help="folders of complete cases (several after one --data, or --data repeated)" + after,
    )


def add_verbosity_option(parser: argparse.ArgumentParser, default: Any = 0) -> None:
    """``-v/--verbose`` (one ``-v`` shows the debug log) and ``-q/--quiet`` (warnings and errors only),
    which exclude each other; :func:`brasyn.commands.command.parse_arguments` applies them.

    Give ``default=argparse.SUPPRESS`` on a sub-command's parser when the main parser has them too:
    a sub-parser's default would otherwise overwrite a ``-v`` or ``-q`` given before the sub-command."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="count", default=default, help="debug log")
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if default == 0 else default,
        help="log warnings and errors only (tables and results are still printed)",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: CPU threads of torch's operators; 0 leaves torch's own choice."""
    parser.add_argument(
        "--threads",
        type=whole_number(0),
        default=0,
        metavar="N",
        help="CPU threads (default 0: torch's choice)",
    )


def apply_threads(n: int) -> None:
    """Set torch's CPU thread count to ``n``; 0 keeps torch's choice (the CPUs this process may use)."""
    if n > 0:
        torch.set_num_threads(n)


def torch_threads() -> int:
    """The CPU threads torch computes with (what a report records: results depend on it)."""
    return torch.get_num_threads()


# --- MLCube parameters -----------------------------------------------------------------------------


def mlcube_weights(path: Path) -> Path | None:
    """The weights folder an MLCube ``--weights`` mount (or a ``/weights`` mount) means: the folder (or the
    folder of the file given) when it holds ``manifest.json``, ``baselines.json`` or the official cWDM
    checkpoints under their released names (``flair_gen.pt`` ...); None (the weights baked into the
    image) when it is empty. Anything else is refused: running the baked-in weights instead would be a
    quiet mistake."""
    folder = path.parent if path.is_file() else path
    if any((folder / name).is_file() for name in ("manifest.json", "baselines.json")):
        return folder
    if any(official_target(p.name) for p in _listing(folder)):
        return folder  # brasyn.weights.official reads it as if a manifest listed them
    present = sorted(p.name for p in _listing(folder) if not p.name.startswith("."))
    if not present:
        return None
    shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
    raise UsageError(
        f"the weights folder {folder} holds {shown} but no manifest.json and none of the official "
        f"checkpoint names ({', '.join(OFFICIAL_NAMES)}), so brasyn cannot tell which checkpoint "
        f"synthesises which contrast; rename the downloaded files to those names, or add them with "
        f"`python -m brasyn.weights import-official --target T FILE --out {folder}` (one per contrast), or "
        "mount an empty folder to use the weights baked into the image"
    )


def _listing(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


MLCUBE_PARAMETERS: dict[str, Converter] = {
    "sampler": one_of(*SAMPLERS),
    "steps": whole_number(1, 1000),
    "seed": whole_number(0),
    "draws": whole_number(1, MAX_DRAWS),
    "device": device_spec,
    "eta": real_number(0, 1),
    "naming": one_of(*NAMINGS),
    "target": contrast,
    "method": one_of(*METHODS),
    "precision": one_of(*PRECISIONS),
    "backend": one_of(*BACKENDS),
    "grid_of": contrast,
    "map": map_spec,
}
"""The keys of the MLCube ``infer`` task's parameters file, with the converters the matching flags use
(the attribute names of the main command's parsed arguments: ``grid_of`` is ``--grid-of``)."""
MLCUBE_IGNORED = ("hotfix",)
"""Keys an MLCube parameters file may hold that mean nothing to brasyn: the ``hotfix`` task MLCube requires
does nothing, so its settings are accepted and ignored (a debug line says so) rather than refused."""


def read_parameters(
    path: Path, spec: Mapping[str, Converter], ignored: Collection[str] = (), what: str = "parameters file"
) -> dict[str, Any]:
    """The values of a YAML parameters file, each checked by its converter in ``spec``.

    A parameters file is read unattended (MLCube, MedPerf), so everything wrong with it stops the run with
    a :class:`UsageError` naming the file: unreadable or not YAML, not a mapping, a key ``spec`` does not
    know (a typo such as ``step: 20`` must not silently run 1000 steps), or a value its converter refuses.
    A key set to null (``steps:``) keeps the command's default and is left out of the result. Keys in
    ``ignored`` (:data:`MLCUBE_IGNORED`) are accepted whatever their value and left out, with a debug line.
    ``what`` names the file in the messages (the main command's ``--config`` reads the same file)."""
    import yaml

    from brasyn.common.yaml_text import load_plain_yaml

    try:
        values = load_plain_yaml(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(f"the {what} {path} is not valid YAML: {exc}") from exc
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"the {what} {path} must hold a mapping such as 'sampler: ddim'")
    for key in [k for k in values if k in ignored]:
        log.debug("%s: %r is ignored (it configures nothing in brasyn)", path, key)
        del values[key]
    known = ", ".join(sorted(spec))
    unknown = [key for key in values if not isinstance(key, str) or key not in spec]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        close = [m for key in unknown for m in difflib.get_close_matches(str(key), list(spec), n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UsageError(f"{path}: unknown key(s) {names}{hint}; the known keys are {known}")
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        try:
            converted[key] = spec[key](value)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise UsageError(f"{path}: {key}: {shown_value(value)} is not valid: {exc}") from None
    return converted
