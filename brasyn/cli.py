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
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brasyn import __version__
from brasyn.acceleration import PRECISIONS, SpeedSettings
from brasyn.baselines import load_for
from brasyn.cases import Case, discover
from brasyn.diffusion import SAMPLERS
from brasyn.errors import BrasynError, CaseError, WeightsError
from brasyn.intensity import OUTPUT_THRESHOLD
from brasyn.logs import configure_logging
from brasyn.modalities import MODALITIES, Modality, modality_from_alias
from brasyn.prefetch import prefetched
from brasyn.preprocess import to_model
from brasyn.preview import mosaic, write_png
from brasyn.runtime import select_device, writable_cache_environment
from brasyn.sharding import Shard, parse_shard, shard_from_environment
from brasyn.synthesize import METHODS, CaseResult, Prepared, SynthesisSettings, Synthesizer
from brasyn.volumes import remove_stale_temporaries
from brasyn.weights import WeightStore

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
EXIT_OK, EXIT_FAILED_CASES, EXIT_USAGE, EXIT_TERMINATED = 0, 1, 2, 143


class Terminated(BaseException):
    """SIGTERM arrived: stop after cleaning up the case in progress."""


class UsageError(BrasynError):
    """The run cannot start: the message says why and what to do."""


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


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _check_paths(args: argparse.Namespace) -> None:
    if not args.input.is_dir():
        raise UsageError(f"the input folder {args.input} does not exist (mount it, e.g. -v DATA:/input:ro)")
    if _inside(args.output, args.input):
        raise UsageError(
            f"the output folder {args.output} lies inside the input folder {args.input}; "
            "choose a separate folder (brasyn never writes into its input)"
        )
    for name in ("report", "extras"):
        path = getattr(args, name)
        if path is not None and _inside(path, args.output):
            raise UsageError(
                f"--{name} {path} lies inside the output folder, which must hold only the "
                "synthetic images; put it elsewhere"
            )
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {args.output}: {exc.strerror}") from exc
    if not os.access(args.output, os.W_OK):
        raise UsageError(
            f"the output folder {args.output} is not writable by this user (uid {os.getuid()}); "
            "mount it writable or choose another folder"
        )


def _settings(args: argparse.Namespace) -> SynthesisSettings:
    try:
        return SynthesisSettings(
            sampler=str(args.sampler),
            steps=int(args.steps),
            eta=float(args.eta),
            seed=int(args.seed),
            progress=not args.no_progress,
            method=str(args.method),
            speed=SpeedSettings(
                precision=str(args.precision),
                channels_last=bool(args.channels_last),
                tf32=bool(args.tf32),
                cudnn_benchmark=bool(args.cudnn_benchmark),
                compile=bool(args.compile),
            ),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def _synthesizer(args: argparse.Namespace, settings: SynthesisSettings) -> Synthesizer:
    """The synthesizer of the run: weights and device for diffusion, the fitted numbers for a baseline."""
    if settings.method != "diffusion":
        if str(args.device).strip().lower() not in ("auto", "cpu"):
            log.info("the %s baseline runs on the CPU; --device %s is not used", settings.method, args.device)
        try:
            baselines = load_for(settings.method, args.weights)
        except WeightsError as exc:
            raise UsageError(f"--method {settings.method}: {exc}") from exc
        return Synthesizer(None, torch.device("cpu"), settings, baselines)
    try:
        weights = WeightStore(args.weights)
    except WeightsError as exc:
        raise UsageError(str(exc)) from exc
    try:
        device = select_device(_device_spec(str(args.device)))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        return Synthesizer(weights, device, settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


@contextmanager
def _terminate_on_sigterm() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _previewer(folder: Path | None):
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)

    def preview(case: Case, prepared: Prepared, model_space) -> None:
        # show the synthetic image as written: thresholded, zero outside the brain
        shown = np.where(
            (model_space > OUTPUT_THRESHOLD) & (to_model(prepared.brain, prepared.geometry) > 0),
            model_space,
            0.0,
        )
        volumes = [*prepared.images, shown]
        write_png(folder / f"{case.id}-{case.target}.png", mosaic(volumes))

    return preview


def _log_result(result: CaseResult) -> None:
    line = f"[{result.status}] {result.case}: {result.message}"
    if result.status == "written":
        line += f" ({result.seconds:.1f} s, {result.device}, peak {result.peak_memory_mib:.0f} MiB)"
        log.info(line)
    elif result.status == "skipped":
        log.info(line)
    else:
        log.error(line)


def _table(results: list[CaseResult]) -> str:
    rows = [("case", "status", "target", "seconds", "message")]
    rows += [(r.case, r.status, r.target or "-", f"{r.seconds:.1f}", r.message) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def _write_report(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".brasyn-report-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)


def _without_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def _run_workers(argv: list[str], args: argparse.Namespace) -> int:
    """``--devices``: the same run in one process per GPU (or N CPU processes), each on its own share."""
    if args.shard or shard_from_environment():
        raise UsageError(
            "--devices starts its own shares: leave out --shard and do not start it with torchrun"
        )
    gpus = torch.cuda.device_count()
    spec = str(args.devices).strip().lower()
    try:
        count = max(gpus, 1) if spec == "all" else int(spec)
    except ValueError:
        raise UsageError(f"--devices takes 'all' or a number of workers, got {args.devices!r}") from None
    if count < 1:
        raise UsageError("--devices needs at least one worker")
    base = _without_option(_without_option(argv, "--devices"), "--device")
    log.info("starting %d worker(s) on %s", count, f"{gpus} GPU(s)" if gpus else "the CPU")
    # the workers import this very package, installed or not
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
    }
    workers = []
    for i in range(count):
        device = f"cuda:{i % gpus}" if gpus else "cpu"
        cmd = [sys.executable, "-m", "brasyn", *base, "--shard", f"{i}/{count}", "--device", device]
        workers.append(subprocess.Popen(cmd, env=env))

    def forward(signum: int, frame: Any) -> None:
        for worker in workers:
            worker.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        signal.signal(signal.SIGTERM, previous)
    if any(code in (EXIT_TERMINATED, -signal.SIGTERM) for code in codes):
        return EXIT_TERMINATED
    if any(code == EXIT_USAGE for code in codes):
        return EXIT_USAGE
    return EXIT_FAILED_CASES if any(codes) else EXIT_OK


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
    started = dt.datetime.now(dt.timezone.utc)
    args.input = args.input or Path(os.environ.get("BRASYN_INPUT", "/input"))
    args.output = args.output or Path(os.environ.get("BRASYN_OUTPUT", "/output"))
    args.weights = args.weights or _default_weights()
    settings = _settings(args)
    _check_paths(args)
    synthesizer = _synthesizer(args, settings)
    device = synthesizer.device
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
    shard = _shard(args)
    if shard is not None:
        found = shard.select(found, key=lambda item: item.case if isinstance(item, CaseError) else item.id)
        log.info("shard %s: %d case(s)", shard, len(found))
        if args.report is not None and shard.count > 1:
            args.report = args.report.with_name(
                f"{args.report.stem}.shard-{shard.index}-of-{shard.count}.json"
            )
    if shard is None or shard.count == 1:
        # with several shards another process may be writing into the same folder right now
        remove_stale_temporaries(args.output)
    if settings.method == "diffusion":
        log.info(
            "%d case(s) in %s; weights %s; %s, %d steps, seed %d, on %s in %s",
            len(found),
            args.input,
            args.weights,
            settings.sampler,
            1 if settings.sampler == "x0" else settings.steps,
            settings.seed,
            device,
            synthesizer.precision,
        )
    else:
        log.info("%d case(s) in %s; %s", len(found), args.input, synthesizer.source)
    preview = _previewer(args.extras)
    results: list[CaseResult] = []
    interrupted = False
    stream = prefetched(
        found,
        load=lambda case: synthesizer.load(case, grid_of),
        wanted=lambda item: (
            isinstance(item, Case) and synthesizer.needs_work(item, args.output, args.overwrite)
        ),
        enabled=args.prefetch and len(found) > 1,
    )
    with _terminate_on_sigterm(), closing(stream):
        try:
            for item, loaded in stream:
                if isinstance(item, CaseError):
                    result = CaseResult(
                        case=item.case,
                        status="failed",
                        message=item.message,
                        files=[str(f) for f in item.files],
                    )
                else:
                    result = synthesizer.process(
                        item,
                        args.output,
                        overwrite=args.overwrite,
                        preview=preview,
                        grid_of=grid_of,
                        loaded=loaded,
                    )
                results.append(result)
                _log_result(result)
        except (Terminated, KeyboardInterrupt):
            interrupted = True
            log.error("stopped by a signal; the case in progress was discarded, finished cases are kept")

    counts = {s: sum(r.status == s for r in results) for s in ("written", "skipped", "failed")}
    if results:
        sys.stderr.write(_table(results) + "\n")
    log.info("%d written, %d skipped, %d failed", counts["written"], counts["skipped"], counts["failed"])
    if args.report is not None:
        _write_report(
            args.report,
            {
                "brasyn_version": __version__,
                "started": started.isoformat(),
                "finished": dt.datetime.now(dt.timezone.utc).isoformat(),
                "input": str(args.input),
                "output": str(args.output),
                "weights": str(args.weights),
                "device": str(device),
                "settings": asdict(settings),
                "interrupted": interrupted,
                "summary": counts,
                "cases": [r.to_dict() for r in results],
            },
        )
    if interrupted:
        return EXIT_TERMINATED
    return EXIT_FAILED_CASES if counts["failed"] else EXIT_OK


def demo(argv: list[str]) -> int:
    """``brasyn demo [--out DIR] [options]``: write the example case, synthesise its FLAIR with the bundled
    weights (20 DDIM steps unless told otherwise) and score it against the real one where it is known."""
    from brasyn.evaluate import pair_predictions, score_pair
    from brasyn.example import DEFAULT_SOURCE, write_example

    parser = argparse.ArgumentParser(prog="brasyn demo", description=demo.__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "brasyn-demo")
    known, rest = parser.parse_known_args(argv)
    kind = write_example(known.out)
    output = known.out / "output"
    args = build_parser().parse_args(
        [
            "--input",
            str(known.out / "input"),
            "--output",
            str(output),
            "--sampler",
            "ddim",
            "--steps",
            "20",
            "--overwrite",
            *rest,
        ]
    )
    configure_logging(args.verbose)
    code = run(args)
    if code == EXIT_OK and kind == "real":
        pairs, _ = pair_predictions(output, DEFAULT_SOURCE)
        for pair in pairs:
            row = score_pair(pair)
            log.info(
                "%s %s: SSIM %.4f, PSNR %.2f dB against the real image",
                row.case,
                row.target,
                row.ssim,
                row.psnr,
            )
    log.info("the synthetic image is in %s", output)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in writable_cache_environment().items():
        os.environ[key] = value
    if argv[:1] == ["hotfix"]:
        return EXIT_OK
    configure_logging(0)
    try:
        if argv[:1] == ["demo"]:
            return demo(argv[1:])
        args = _mlcube_to_args(argv[1:]) if argv[:1] == ["infer"] else build_parser().parse_args(argv)
        configure_logging(args.verbose)
        if getattr(args, "devices", None):
            return _run_workers(argv, args)
        return run(args)
    except SystemExit as exc:  # argparse has printed its message
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    except BrasynError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
