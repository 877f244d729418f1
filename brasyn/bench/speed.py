"""Speed and memory of the core maths and of one whole case, printed as JSON.

    python -m brasyn.bench gpu --out DIR [--quick] [--official DIR]   (the GPU check: brasyn.bench.gpu_check)
    python -m brasyn.bench loader --cache DIR [--workers N] [--patch D H W] [--json FILE]
                                                         (the training data loader: brasyn.bench.loader_bench)
    python -m brasyn.bench quantisation --data DIR [--json FILE]   (what the case cache's rounding does)
    python -m brasyn.bench [--config official|small|tiny] [--shape D H W] [--device cpu|cuda[:N]]
                           [--precision fp32|bf16|auto] [--sampler ddpm|ddim|dpm++2m|x0] [--steps N]
                           [--no-channels-last] [--compile] [--no-tf32] [--no-cudnn-benchmark]
                           [--repeats N] [--warmup N] [--threads N] [--official DIR]
                           [--case-shape X Y Z | --no-case] [--json FILE]

Times in milliseconds (median of ``--repeats`` after ``--warmup`` runs, synchronised on CUDA):

- ``forward_ms``: one denoiser forward at the sub-band size of a ``--shape`` volume;
- ``<sampler>_step_ms``: one sampler step (forward, image-space clipping, update);
- ``dwt3_ms`` / ``idwt3_ms``: the Haar transform of the volume and back;
- ``case``: one synthetic case end to end, written to a temporary folder and run once through the
  batch runner (:func:`brasyn.inference.batch.run_batch`, the code path of every run) with randomly
  initialised weights of ``--config`` and ``--steps`` steps of ``--sampler``. Its phases are the runner's own
  timings: ``load`` (reading the files), ``prepare`` (model space), ``sample``, ``restore`` (geometry and
  intensity), ``write``; the time to load the checkpoint (and bring it into the run's memory format) is
  beside. The case is ``--case-shape`` (default: 240x240x155, the BraTS grid, for the default
  ``--shape``; otherwise ``--shape``); it runs with the speed switches given here (the same flags and
  defaults as ``python -m brasyn``: channels_last_3d, TF32 and cuDNN autotuning on, precision fp32);
- ``official``, with ``--official DIR`` (a checkout of github.com/pfriedri/cwdm, not part of brasyn): the
  official ``UNetModel`` built with the BraTS settings, loaded with the same weights, timed on the same
  input in the same process as it runs there (float32, contiguous), with ``speedup`` = official forward /
  brasyn forward and the largest difference between the two outputs.

``--precision bf16`` runs the network under ``torch.autocast`` with bfloat16; the sampler's arithmetic
stays float32. ``--compile`` times the ``torch.compile``-d denoiser after its compilation (reported as
``compile_ms``). Versions (torch, CUDA, cuDNN), the GPU and its NVML used memory are reported beside.
"""

from __future__ import annotations

import argparse
import logging
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from brasyn.commands.command import parse_arguments, print_json, run_command
from brasyn.commands.options import (
    add_device_option,
    add_sampling_options,
    add_speed_options,
    add_threads_option,
    add_verbosity_option,
    apply_threads,
    one_of,
    speed_settings,
    whole_number,
)
from brasyn.common.acceleration import network_precision, optimise_model
from brasyn.common.errors import BrasynError, ExitCode, UsageError
from brasyn.common.runtime import reset_peak_memory
from brasyn.data.cases import discover
from brasyn.data.modalities import Modality, conditions_for
from brasyn.inference.batch import run_batch
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import PHASES, Synthesizer
from brasyn.model.bands import image_to_bands
from brasyn.model.diffusion import Diffusion, Sampling
from brasyn.model.unet import PRESETS, Denoiser
from brasyn.model.wavelet import dwt3, idwt3
from brasyn.transform.preprocess import BRATS_SHAPE, TRAINING_SHAPE
from brasyn.weights.store import WeightStore, init_random

log = logging.getLogger("brasyn.bench")

BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
CASE_TARGET = Modality.T2F
CASE_ID = "BraTS-BENCH-00000-000"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Median and all timings of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        runs.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(runs), "runs": runs}


def _peak_memory_mib(device: torch.device) -> dict[str, float]:
    peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        peak["peak_cuda_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return peak


def _environment(device: torch.device) -> dict[str, Any]:
    """Library versions, threads and the device's name."""
    return {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def _nvml(device: torch.device) -> dict[str, Any]:
    """The GPU's used memory as NVML sees it (all processes, CUDA context and cache included) and the
    driver version; on the CPU nothing."""
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            return {
                "nvml_used_mib": int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / 2**20,
                "driver": str(pynvml.nvmlSystemGetDriverVersion()),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing or unusable: the torch figures still stand
        return {"nvml_error": str(exc)}


def _synthetic_case(folder: Path, case_id: str, shape: tuple[int, int, int]) -> dict[Modality, Path]:
    """The three conditions of a case: int16 ellipsoid 'brains' with texture, on the BraTS affine."""
    rng = np.random.default_rng(0)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = sum(g**2 for g in grid) < 0.8**2
    texture = np.sin(6 * grid[0]) * np.cos(5 * grid[1]) + 0.3 * rng.standard_normal(shape)
    paths = {}
    (folder / case_id).mkdir(parents=True)
    for i, modality in enumerate(conditions_for(CASE_TARGET)):
        data = np.where(brain, 500 * (i + 1) * (1.5 + (-1) ** i * 0.4 * texture), 0).astype(np.int16)
        image = nib.Nifti1Image(data, BRATS_AFFINE)
        image.header.set_qform(BRATS_AFFINE, code=1)
        image.header.set_sform(BRATS_AFFINE, code=1)
        paths[modality] = folder / case_id / f"{case_id}-{modality.value}.nii.gz"
        nib.save(image, str(paths[modality]))
    return paths


def time_case(args: argparse.Namespace, device: torch.device, shape: tuple[int, int, int]) -> dict[str, Any]:
    """One synthetic case through the batch runner, as a run processes it; the phases (in milliseconds)
    are the runner's own timings."""
    with tempfile.TemporaryDirectory(prefix="brasyn-bench-") as tmp:
        root = Path(tmp)
        _synthetic_case(root / "input", CASE_ID, shape)
        init_random(root / "weights", args.config, targets=[CASE_TARGET])
        predictor = DiffusionPredictor(
            WeightStore(root / "weights"), device, Sampling(args.sampler, args.steps), speed_settings(args)
        )
        start = time.perf_counter()
        predictor.model_for(CASE_TARGET)
        _sync(device)
        model_load = (time.perf_counter() - start) * 1e3
        reset_peak_memory(device)
        batch = run_batch(
            discover(root / "input"),
            Synthesizer(predictor, seed=0, progress=False),
            root / "output",
            prefetch=False,
        )
    (result,) = batch.results
    if result.status != "written":
        raise BrasynError(f"the benchmark case was not written: {result.message}")
    phases = {name: result.phases[name] * 1e3 for name in PHASES}
    steps = predictor.steps(CASE_TARGET)
    return {
        "stored_shape": list(shape),
        "model_shape": result.model_shape,
        "sampler": args.sampler,
        "precision": predictor.precision,
        "steps": steps,
        "model_load_ms": model_load,
        "phases_ms": phases,
        "total_ms": sum(phases.values()),
        "case_seconds": result.seconds,
        "sample_ms_per_step": phases["sample"] / steps,
        "peak_memory_mib": result.peak_memory_mib,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "shm_used_mib": _shm_used_mib(),
    }


def _shm_used_mib() -> float | None:
    """What /dev/shm holds now (containers get 64 MB by default, the challenge runs with 4 GB)."""
    try:
        return shutil.disk_usage("/dev/shm").used / 2**20
    except OSError:
        return None


def time_maths(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The denoiser forward, one sampler step and the wavelet transforms, on random data."""
    config = PRESETS[args.config]
    gen = torch.Generator(device=device).manual_seed(0)
    volume = torch.rand(1, 3, *args.shape, generator=gen, device=device)
    cond = image_to_bands(volume)
    band_shape = (1, config.out_channels, *cond.shape[2:])
    x = torch.randn(band_shape, generator=gen, device=device)
    t = torch.tensor([500], device=device)

    plain = Denoiser.from_config(config).to(device).eval()
    with torch.no_grad():
        for p in plain.parameters():  # fresh models output zeros; give every layer work to do
            p.normal_(0.0, 0.02, generator=gen)
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()} if args.official else None
    model = optimise_model(plain, device, speed_settings(args))
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        cond = cond.contiguous(memory_format=torch.channels_last_3d)
    diffusion = Diffusion()
    result: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "denoiser_input_shape": [1, config.in_channels, *cond.shape[2:]],
    }
    single = volume[:, :1]
    bands = dwt3(single)
    with torch.inference_mode():
        result["dwt3_ms"] = time_ms(lambda: dwt3(single), device, max(args.repeats, 5), 1)
        result["idwt3_ms"] = time_ms(lambda: idwt3(bands), device, max(args.repeats, 5), 1)
        inputs = torch.cat([x, cond], dim=1)
        with network_precision(device, args.precision):
            if args.compile:
                start = time.perf_counter()
                model(inputs, t)
                _sync(device)
                result["compile_ms"] = (time.perf_counter() - start) * 1e3
            log.info("timing the denoiser forward at %s (%s)", tuple(inputs.shape), args.precision)
            result["forward_ms"] = time_ms(lambda: model(inputs, t), device, args.repeats, args.warmup)
            ours = model(inputs, t).float() if args.official else None
            log.info("timing one %s step", args.sampler)
            result[f"{args.sampler}_step_ms"] = time_ms(
                lambda: diffusion.sample(model, cond, band_shape, args.sampler, steps=1, generator=gen),
                device,
                args.repeats,
                args.warmup,
            )
        if args.official:
            result["official"] = time_official(args, device, state, inputs.contiguous(), t, ours)
            result["official"]["speedup"] = (
                result["official"]["forward_ms"]["median"] / result["forward_ms"]["median"]
            )
    return result


def official_model(checkout: Path, config_name: str) -> torch.nn.Module:
    """The official cWDM ``UNetModel`` with the BraTS settings (REFERENCE.md) and the width of
    ``config_name``, imported from a checkout of its repository."""
    if not (checkout / "guided_diffusion" / "unet.py").is_file():
        raise FileNotFoundError(
            f"{checkout} is not a checkout of github.com/pfriedri/cwdm (no guided_diffusion)"
        )
    sys.path.insert(0, str(checkout))
    from guided_diffusion.unet import UNetModel  # type: ignore[import-not-found]

    config = PRESETS[config_name]
    return UNetModel(
        image_size=224,
        in_channels=config.in_channels,
        model_channels=config.model_channels,
        out_channels=config.out_channels,
        num_res_blocks=config.num_res_blocks,
        attention_resolutions=(),
        channel_mult=tuple(config.channel_mult),
        dims=3,
        num_groups=config.num_groups,
        bottleneck_attention=False,
        resample_2d=False,
        additive_skips=False,
        resblock_updown=True,
        use_scale_shift_norm=False,
    )


def time_official(
    args: argparse.Namespace,
    device: torch.device,
    state: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    t: torch.Tensor,
    ours: torch.Tensor,
) -> dict[str, Any]:
    """The official denoiser's forward on the same weights and input, as its own code runs it."""
    model = official_model(args.official, args.config)
    model.load_state_dict(state, strict=True)
    model.to(device)  # the official UNetModel.to returns None
    model.eval()
    log.info("timing the official denoiser forward at %s (fp32)", tuple(inputs.shape))
    timing = time_ms(lambda: model(inputs, t), device, args.repeats, args.warmup)
    theirs = model(inputs, t).float()
    scale = float(theirs.abs().max())
    return {
        "forward_ms": timing,
        "max_abs_difference": float((theirs - ours).abs().max()),
        "output_max_abs": scale,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    apply_threads(args.threads)
    speed_settings(args).configure_backends(device)  # process-wide: once, for everything timed here
    result: dict[str, Any] = {
        "device": str(device),
        **_environment(device),
        "config": args.config,
        "volume_shape": list(args.shape),
        "memory_format": "channels_last_3d" if args.channels_last else "contiguous",
        "precision": args.precision,
        "sampler": args.sampler,
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    result.update(time_maths(args, device))
    if args.case:
        shape = args.case_shape or (BRATS_SHAPE if tuple(args.shape) == TRAINING_SHAPE else tuple(args.shape))
        log.info(
            "timing one %s case end to end, %d %s steps", "x".join(map(str, shape)), args.steps, args.sampler
        )
        result["case"] = time_case(args, device, tuple(shape))
    result.update(_peak_memory_mib(device))
    result.update(_nvml(device))
    return result


def build_parser() -> argparse.ArgumentParser:
    """The bench's flags; the speed switches, device, sampler and steps are those of ``python -m
    brasyn`` (:mod:`brasyn.commands.options`), with the same defaults, so a figure means what a run does."""
    parser = argparse.ArgumentParser(prog="python -m brasyn.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=one_of(*sorted(PRESETS)), default="official", help="denoiser size")
    parser.add_argument(
        "--shape",
        type=whole_number(1),
        nargs=3,
        metavar=("D", "H", "W"),
        default=list(TRAINING_SHAPE),
        help="image volume size (the network sees half of it); default 224 224 160",
    )
    add_device_option(parser, default="cuda" if torch.cuda.is_available() else "cpu")
    add_speed_options(parser)
    add_sampling_options(parser, sampler="ddim", steps=10, eta=False)
    parser.add_argument(
        "--official",
        type=Path,
        metavar="DIR",
        help="also time the official UNetModel from this checkout of pfriedri/cwdm on the same input",
    )
    parser.add_argument("--repeats", type=whole_number(1), default=3, help="timed runs (default 3)")
    parser.add_argument("--warmup", type=whole_number(0), default=1, help="untimed runs first (default 1)")
    add_threads_option(parser)
    parser.add_argument(
        "--case-shape",
        type=whole_number(1),
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="stored grid of the end-to-end case (default 240 240 155 for the default --shape, else --shape)",
    )
    parser.add_argument("--no-case", dest="case", action="store_false", help="skip the end-to-end case")
    parser.add_argument("--json", type=Path, help="also write the JSON to this file")
    add_verbosity_option(parser)
    return parser


def _measure(argv: list[str] | None) -> int:
    args = parse_arguments(build_parser(), argv)
    divisor = 2 * PRESETS[args.config].divisor
    if any(s % divisor for s in args.shape):
        raise UsageError(f"--shape must be multiples of {divisor} for the {args.config} config")
    if args.official and not (args.official / "guided_diffusion" / "unet.py").is_file():
        raise UsageError(
            f"--official {args.official}: not a checkout of github.com/pfriedri/cwdm "
            "(git clone https://github.com/pfriedri/cwdm; it needs PyWavelets)"
        )
    result = run(args)
    print_json(result, args.json)
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gpu"]:
        from brasyn.bench.gpu_check import main as gpu_check  # it builds on this module's timings

        return run_command(lambda: gpu_check(argv[1:]))
    if argv[:1] == ["loader"]:
        from brasyn.bench.loader_bench import main as loader_bench  # the training data loader's rate

        return loader_bench(argv[1:])
    if argv[:1] == ["quantisation"]:
        from brasyn.bench.loader_bench import main as loader_bench

        return loader_bench(argv[1:], "quantisation")
    return run_command(lambda: _measure(argv))


if __name__ == "__main__":
    raise SystemExit(main())
