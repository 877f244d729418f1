"""The command line shared by ``entrypoint.py``, ``python -m brasyn`` and the MLCube ``infer`` task.

Forms:

* no arguments: ``/input`` to ``/output`` (the Docker form; ``BRASYN_INPUT`` / ``BRASYN_OUTPUT`` override);
* ``--input DIR --output DIR [options]``;
* ``infer --data_path DIR --output_path DIR [--weights PATH] [--parameters_file FILE]`` (MLCube), and
  ``hotfix``, which does nothing;
* ``demo [--out DIR] [options]``: the example case (``brasyn.example``) through the bundled weights.

Exit status: 0 when every case was written or skipped, 1 when any case failed (after all others ran),
2 when the run could not start (bad arguments, missing folders or weights), 143 when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from brasyn import __version__
from brasyn.acceleration import PRECISIONS, SpeedSettings
from brasyn.batch import check_folders, run_batch
from brasyn.cases import discover
from brasyn.demo import run_demo
from brasyn.diffusion import SAMPLERS
from brasyn.errors import BrasynError, ExitCode, UsageError, WeightsError
from brasyn.logs import configure_logging
from brasyn.modalities import MODALITIES, Modality, modality_from_alias
from brasyn.predictors import METHODS, Predictor, Sampling, make_predictor
from brasyn.runtime import writable_cache_environment
from brasyn.sharding import Shard, parse_shard, run_workers, shard_from_environment
from brasyn.synthesize import Synthesizer

__all__ = ["DEFAULT_WEIGHTS", "main"]

log = logging.getLogger("brasyn")

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
"""The weights folder shipped beside the package (baked into the container image)."""
PARAMETER_KEYS = {
    "sampler",
    "steps",
    "seed",
    "device",
    "eta",
    "naming",
    "target",
    "method",
    "precision",
    "grid_of",
}
MOUNTED_WEIGHTS = Path("/weights")
"""Where a container user mounts other weights (``-v DIR:/weights``)."""


def _default_weights() -> Path:
    """``$BRASYN_WEIGHTS``, else weights mounted at /weights, else the bundled ones."""
    env = os.environ.get("BRASYN_WEIGHTS")
    if env:
        return Path(env)
    if (MOUNTED_WEIGHTS / "manifest.json").is_file():
        return MOUNTED_WEIGHTS
    return DEFAULT_WEIGHTS


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="diffusion",
        help="diffusion: the cWDM model (default); linear, nearest: baselines on the CPU, no checkpoint "
        "(linear needs baselines.json in the weights folder)",
    )
    parser.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="ddpm",
        help="ddpm: the official 1000-step ancestral sampler (default); ddim: deterministic, 20-100 steps; "
        "dpm++2m: DPM-Solver++(2M), 10-20 steps; x0: one step, a quick preview",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=1000,
        help="sampling steps (default 1000; e.g. --sampler ddim --steps 50)",
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM noise, 0 = deterministic")
    parser.add_argument(
        "--seed", type=int, default=42, help="run seed; each case's seed follows from it and the case id"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (GPU with the most free memory, else CPU), cpu, cuda, cuda:N"
    )
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="network precision: fp32 (default), bf16 (autocast, about 2x faster; the sampler stays fp32), "
        "auto (bf16 where the GPU or CPU computes it natively)",
    )
    speed.add_argument(
        "--compile", action="store_true", help="compile the denoiser with torch.compile (first case slower)"
    )
    speed.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="run the denoiser in the contiguous (NCDHW) memory format instead of channels_last_3d",
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
    speed.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="do not read and prepare the next case while the current one is sampled",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brasyn",
        description="Synthesise the missing MR contrast (t1n, t1c, t2w or t2f) of every case folder.",
        epilog="MLCube form: brasyn infer --data_path DIR --output_path DIR [--weights PATH] "
        "[--parameters_file FILE]",
    )
    parser.add_argument(
        "--input",
        type=Path,
        default=None,
        help="folder of case folders (or one case's files); default $BRASYN_INPUT or /input",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder for the synthetic files, one per case; default $BRASYN_OUTPUT or /output",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="weights folder with manifest.json; default $BRASYN_WEIGHTS or the bundled weights",
    )
    _add_run_options(parser)
    parser.add_argument(
        "--target",
        choices=[m.value for m in MODALITIES],
        help="synthesise this contrast even in complete cases (pseudo-validation)",
    )
    parser.add_argument(
        "--naming",
        choices=("input", "brats2023"),
        default="input",
        help="output names like the case's inputs (default) or always <case>-<contrast>.nii.gz",
    )
    parser.add_argument(
        "--grid-of",
        choices=[m.value for m in MODALITIES],
        help="when a case's contrasts are not on one 1 mm grid: write the output on the grid of this input "
        "contrast (default: the highest-resolution one); a case that lacks it fails",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs instead of skipping"
    )
    parser.add_argument(
        "--devices",
        help="'all': one worker process per visible GPU, each on its own share of the cases; "
        "N: N workers (on the CPU where there is no GPU)",
    )
    parser.add_argument(
        "--shard",
        help="take only share i of n of the cases (e.g. 0/4; Slurm: "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); under torchrun the rank is the share",
    )
    parser.add_argument("--report", type=Path, help="write a JSON report here (outside the output folder)")
    parser.add_argument(
        "--extras", type=Path, help="write a PNG preview per case here (outside the output folder)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail (-vv: debug)")
    parser.add_argument("--version", action="version", version=f"brasyn {__version__}")
    return parser


def build_mlcube_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brasyn infer", description="MLCube inference task")
    parser.add_argument("--data_path", type=Path, required=True, help="input folder of case folders")
    parser.add_argument("--output_path", type=Path, required=True, help="output folder")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (or its manifest.json)")
    parser.add_argument(
        "--parameters_file", type=Path, default=None, help="YAML with sampler, steps, seed, device"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def _read_parameters(path: Path) -> dict[str, Any]:
    import yaml

    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot read the parameters file {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise UsageError(f"the parameters file {path} must hold a mapping such as 'sampler: ddim'")
    unknown = set(values) - PARAMETER_KEYS
    if unknown:
        log.warning("ignoring unknown keys in %s: %s", path.name, ", ".join(sorted(map(str, unknown))))
    return {k: v for k, v in values.items() if k in PARAMETER_KEYS}


def _mlcube_to_args(argv: list[str]) -> argparse.Namespace:
    ml = build_mlcube_parser().parse_args(argv)
    args = build_parser().parse_args([])
    args.input, args.output, args.verbose = ml.data_path, ml.output_path, ml.verbose
    if ml.weights is not None:
        folder = ml.weights.parent if ml.weights.is_file() else ml.weights
        # MLCube always mounts its weights input; an empty one means the weights baked into the image
        if any((folder / name).is_file() for name in ("manifest.json", "baselines.json")):
            args.weights = folder
        else:
            log.info("no manifest.json in %s: using the default weights", folder)
    if ml.parameters_file is not None:
        for key, value in _read_parameters(ml.parameters_file).items():
            setattr(args, key, value)
    return args


def _settings(args: argparse.Namespace) -> tuple[Sampling, SpeedSettings]:
    try:
        sampling = Sampling(sampler=str(args.sampler), steps=int(args.steps), eta=float(args.eta))
        speed = SpeedSettings(
            precision=str(args.precision),
            channels_last=bool(args.channels_last),
            tf32=bool(args.tf32),
            cudnn_benchmark=bool(args.cudnn_benchmark),
            compile=bool(args.compile),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    return sampling, speed


def _predictor(args: argparse.Namespace, sampling: Sampling, speed: SpeedSettings) -> Predictor:
    """The predictor the run asks for; a sentence and exit 2 when it cannot be had."""
    try:
        return make_predictor(args.method, args.weights, _device_spec(str(args.device)), sampling, speed)
    except WeightsError as exc:
        raise UsageError(f"--method {args.method}: {exc}") from exc
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _shard(args: argparse.Namespace) -> Shard | None:
    try:
        return parse_shard(args.shard) if getattr(args, "shard", None) else shard_from_environment()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _device_spec(spec: str) -> str:
    """Under torchrun, ``auto`` means this process's own GPU (LOCAL_RANK)."""
    local_rank = os.environ.get("LOCAL_RANK")
    if spec.strip().lower() == "auto" and local_rank is not None and torch.cuda.is_available():
        return f"cuda:{int(local_rank) % torch.cuda.device_count()}"
    return spec


def run(args: argparse.Namespace) -> int:
    """Everything after argument parsing; returns the exit status."""
    args.input = args.input or Path(os.environ.get("BRASYN_INPUT", "/input"))
    args.output = args.output or Path(os.environ.get("BRASYN_OUTPUT", "/output"))
    args.weights = args.weights or _default_weights()
    sampling, speed = _settings(args)
    check_folders(args.input, args.output, report=args.report, extras=args.extras)
    predictor = _predictor(args, sampling, speed)
    speed.configure_backends(predictor.device)  # process-wide switches: set once, here
    target = Modality(args.target) if args.target else None
    try:
        grid_of = modality_from_alias(args.grid_of) if args.grid_of else None
    except ValueError as exc:
        raise UsageError(f"grid_of: {exc}") from exc
    if grid_of is not None and grid_of is target:
        raise UsageError(
            f"--grid-of {grid_of.value} names the contrast to synthesise; name an input contrast"
        )
    found = discover(args.input, target=target, naming=args.naming)
    if args.method == "diffusion":
        log.info(
            "%d case(s) in %s; weights %s; %s, %d steps, seed %d, on %s in %s",
            len(found),
            args.input,
            args.weights,
            sampling.sampler,
            1 if sampling.sampler == "x0" else sampling.steps,
            args.seed,
            predictor.device,
            predictor.precision,
        )
    else:
        log.info("%d case(s) in %s; %s", len(found), args.input, predictor.describe())
    batch = run_batch(
        found,
        Synthesizer(predictor, seed=int(args.seed), progress=not args.no_progress),
        args.output,
        overwrite=args.overwrite,
        grid_of=grid_of,
        prefetch=args.prefetch,
        extras=args.extras,
        shard=_shard(args),
        report=args.report,
        context={
            "input": str(args.input),
            "output": str(args.output),
            "weights": str(args.weights),
            "device": str(predictor.device),
            "settings": {
                **asdict(sampling),
                "seed": int(args.seed),
                "progress": not args.no_progress,
                "method": args.method,
                "speed": asdict(speed),
            },
        },
    )
    return int(batch.exit_code)


def _synthesise(argv: list[str]) -> int:
    """The main job on an argument list (what ``brasyn demo`` runs)."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run(args)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in writable_cache_environment().items():
        os.environ[key] = value
    if argv[:1] == ["hotfix"]:
        return ExitCode.OK
    configure_logging(0)
    try:
        if argv[:1] == ["demo"]:
            return run_demo(argv[1:], _synthesise)
        args = _mlcube_to_args(argv[1:]) if argv[:1] == ["infer"] else build_parser().parse_args(argv)
        configure_logging(args.verbose)
        if getattr(args, "devices", None):
            if args.shard or shard_from_environment():
                raise UsageError(
                    "--devices starts its own shares: leave out --shard and do not start it with torchrun"
                )
            return run_workers(argv, args.devices)
        return run(args)
    except SystemExit as exc:  # argparse has printed its message
        return ExitCode.OK if exc.code in (0, None) else ExitCode.USAGE
    except BrasynError as exc:
        log.error("%s", exc)
        return ExitCode.USAGE
