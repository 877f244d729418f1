"""Speed and memory of the core maths and of one whole case (``python -m brasyn.bench``).

Times in milliseconds (median of ``repeats`` after ``warmup`` runs, synchronised on CUDA):

- ``forward_ms``: one denoiser forward at the sub-band size of a ``shape`` volume;
- ``<sampler>_step_ms``: one sampler step (forward, image-space clipping, update);
- ``dwt3_ms`` / ``idwt3_ms``: the Haar transform of the volume and back;
- ``case``: one synthetic case end to end, written to a temporary folder and run once through the
  batch runner (:func:`brasyn.inference.batch.run_batch`, the code path of every run) with randomly
  initialised weights of ``config`` and ``steps`` steps of ``sampler``. Its phases are the runner's own
  timings: ``load`` (reading the files), ``prepare`` (model space), ``sample``, ``restore`` (geometry and
  intensity), ``write``; the time to load the checkpoint (and bring it into the run's memory format) is
  beside. The case is ``case_shape`` (default: 240x240x155, the BraTS grid, for the default ``shape``;
  otherwise ``shape``); it runs with the speed switches of the settings (those of ``python -m brasyn``:
  channels_last_3d, TF32 and cuDNN autotuning on, precision fp32, by default);
- ``official``, with ``official`` (a checkout of github.com/pfriedri/cwdm, not part of brasyn): the
  official ``UNetModel`` built with the BraTS settings, loaded with the same weights, timed on the same
  input in the same process as it runs there (float32, contiguous), with ``speedup`` = official forward /
  brasyn forward and the largest difference between the two outputs.

Precision bf16 runs the network under ``torch.autocast`` with bfloat16; the sampler's arithmetic stays
float32. ``compile`` times the ``torch.compile``-d denoiser after its compilation (reported as
``compile_ms``). Versions (torch, CUDA, cuDNN), the GPU and its NVML used memory are reported beside.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brasyn.common.acceleration import SpeedSettings, network_precision, optimise_model, resolve_precision
from brasyn.common.cpu_backends import resolve_backend
from brasyn.common.errors import BrasynError
from brasyn.common.measure import (
    elapsed_ms,
    environment,
    nvml_memory,
    peak_memory_figures,
    peak_rss_mib,
    reset_peak_memory,
    time_ms,
)
from brasyn.data.cases import discover
from brasyn.data.modalities import Modality, conditions_for
from brasyn.data.phantom import Waves, phantom, write_phantom_case
from brasyn.inference.batch import run_batch
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import PHASES, Synthesizer
from brasyn.model.bands import image_to_bands
from brasyn.model.diffusion import Diffusion, Sampling
from brasyn.model.unet import PRESETS, Denoiser
from brasyn.model.wavelet import dwt3, idwt3
from brasyn.transform.preprocess import BRATS_SHAPE, TRAINING_SHAPE
from brasyn.weights.store import WeightStore, init_random

__all__ = [
    "CASE_ID",
    "CASE_TARGET",
    "BenchSettings",
    "official_model",
    "run",
    "synthetic_case",
    "time_case",
    "time_maths",
    "time_official",
]

log = logging.getLogger("brasyn.bench")

CASE_TARGET = Modality.T2F
CASE_ID = "BraTS-BENCH-00000-000"


@dataclass(frozen=True)
class BenchSettings:
    """What the bench measures and how: the denoiser's size, the volume, the sampler, the speed switches
    of a run and the number of timed runs (the defaults are those of ``python -m brasyn.bench``)."""

    config: str = "official"
    """Denoiser size (a key of :data:`brasyn.model.unet.PRESETS`)."""
    shape: tuple[int, int, int] = TRAINING_SHAPE
    """Image volume of the maths timings (the network sees half of it per axis)."""
    sampler: str = "ddim"
    steps: int = 10
    """Steps of the end-to-end case."""
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    repeats: int = 3
    warmup: int = 1
    official: Path | None = None
    """A checkout of pfriedri/cwdm whose UNetModel is timed beside, or None."""
    case: bool = True
    """Time one synthetic case end to end."""
    case_shape: tuple[int, int, int] | None = None
    """Stored grid of that case; None: the BraTS grid for the default ``shape``, else ``shape``."""


def synthetic_case(folder: Path, case_id: str, shape: tuple[int, int, int]) -> dict[Modality, Path]:
    """The three conditions of a case: int16 ellipsoid 'brains' with texture, on the BraTS affine."""
    volumes = {
        modality.value: phantom(
            shape,
            seed=0,
            scale=500 * (i + 1),
            centre=(0, 0, 0),
            radii=(1, 1, 1),
            texture=Waves(contrast=(-1) ** i * 0.4),
            lesion=False,
            coordinates="unit",
            extent=0.8,
            dtype=np.int16,
        )
        for i, modality in enumerate(conditions_for(CASE_TARGET))
    }
    return {Modality(name): path for name, path in write_phantom_case(folder, case_id, volumes).items()}


def time_case(settings: BenchSettings, device: torch.device, shape: tuple[int, int, int]) -> dict[str, Any]:
    """One synthetic case through the batch runner, as a run processes it; the phases (in milliseconds)
    are the runner's own timings."""
    with tempfile.TemporaryDirectory(prefix="brasyn-bench-") as tmp:
        root = Path(tmp)
        synthetic_case(root / "input", CASE_ID, shape)
        init_random(root / "weights", settings.config, targets=[CASE_TARGET])
        predictor = DiffusionPredictor(
            WeightStore(root / "weights", quality_notice=False),
            device,
            Sampling(settings.sampler, settings.steps),
            settings.speed,
        )
        model_load = elapsed_ms(lambda: predictor.model_for(CASE_TARGET), device)
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
        "sampler": settings.sampler,
        "precision": predictor.precision,
        "steps": steps,
        "model_load_ms": model_load,
        "phases_ms": phases,
        "total_ms": sum(phases.values()),
        "case_seconds": result.seconds,
        "sample_ms_per_step": phases["sample"] / steps,
        "peak_memory_mib": result.peak_memory_mib,
        "peak_rss_mib": peak_rss_mib(),
        "shm_used_mib": _shm_used_mib(),
    }


def _shm_used_mib() -> float | None:
    """What /dev/shm holds now (containers get 64 MB by default, the challenge runs with 4 GB)."""
    try:
        return shutil.disk_usage("/dev/shm").used / 2**20
    except OSError:
        return None


def time_maths(settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """The denoiser forward, one sampler step and the wavelet transforms, on random data."""
    config = PRESETS[settings.config]
    speed = settings.speed
    gen = torch.Generator(device=device).manual_seed(0)
    volume = torch.rand(1, 3, *settings.shape, generator=gen, device=device)
    cond = image_to_bands(volume)
    band_shape = (1, config.out_channels, *cond.shape[2:])
    x = torch.randn(band_shape, generator=gen, device=device)
    t = torch.tensor([500], device=device)

    plain = Denoiser.from_config(config).to(device).eval()
    with torch.no_grad():
        for p in plain.parameters():  # fresh models output zeros; give every layer work to do
            p.normal_(0.0, 0.02, generator=gen)
    state = {k: v.detach().clone() for k, v in plain.state_dict().items()} if settings.official else None
    model = optimise_model(plain, device, speed)
    precision = resolve_precision(speed.precision, device)  # "auto" as a run resolves it
    if speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        cond = cond.contiguous(memory_format=torch.channels_last_3d)
    diffusion = Diffusion()
    result: dict[str, Any] = {
        "precision_used": precision,  # what "auto" became here: the figures describe that path
        "parameters": sum(p.numel() for p in model.parameters()),
        "denoiser_input_shape": [1, config.in_channels, *cond.shape[2:]],
    }
    single = volume[:, :1]
    bands = dwt3(single)
    with torch.inference_mode():
        result["dwt3_ms"] = time_ms(lambda: dwt3(single), device, max(settings.repeats, 5), 1)
        result["idwt3_ms"] = time_ms(lambda: idwt3(bands), device, max(settings.repeats, 5), 1)
        inputs = torch.cat([x, cond], dim=1)
        with network_precision(device, precision):
            if speed.compile:
                result["compile_ms"] = elapsed_ms(lambda: model(inputs, t), device)
            log.info("timing the denoiser forward at %s (%s)", tuple(inputs.shape), precision)
            result["forward_ms"] = time_ms(
                lambda: model(inputs, t), device, settings.repeats, settings.warmup
            )
            ours = model(inputs, t).float() if settings.official else None
            log.info("timing one %s step", settings.sampler)
            result[f"{settings.sampler}_step_ms"] = time_ms(
                lambda: diffusion.sample(model, cond, band_shape, settings.sampler, steps=1, generator=gen),
                device,
                settings.repeats,
                settings.warmup,
            )
        if settings.official:
            result["official"] = time_official(settings, device, state, inputs.contiguous(), t, ours)
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
    settings: BenchSettings,
    device: torch.device,
    state: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    t: torch.Tensor,
    ours: torch.Tensor,
) -> dict[str, Any]:
    """The official denoiser's forward on the same weights and input, as its own code runs it."""
    model = official_model(settings.official, settings.config)
    model.load_state_dict(state, strict=True)
    model.to(device)  # the official UNetModel.to returns None
    model.eval()
    log.info("timing the official denoiser forward at %s (fp32)", tuple(inputs.shape))
    timing = time_ms(lambda: model(inputs, t), device, settings.repeats, settings.warmup)
    theirs = model(inputs, t).float()
    scale = float(theirs.abs().max())
    return {
        "forward_ms": timing,
        "max_abs_difference": float((theirs - ours).abs().max()),
        "output_max_abs": scale,
    }


def run(settings: BenchSettings, device: torch.device) -> dict[str, Any]:
    """Every figure of the bench on ``device``, whose backends (and torch's threads) the caller has set
    up once for the whole process."""
    result: dict[str, Any] = {
        "device": str(device),
        **environment(device),
        "config": settings.config,
        "volume_shape": list(settings.shape),
        "memory_format": "channels_last_3d" if settings.speed.channels_last else "contiguous",
        "precision": settings.speed.precision,
        "backend": resolve_backend(settings.speed.backend, device, settings.speed.compile),
        "sampler": settings.sampler,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
    }
    result.update(time_maths(settings, device))
    if settings.case:
        shape = settings.case_shape or (
            BRATS_SHAPE if tuple(settings.shape) == TRAINING_SHAPE else tuple(settings.shape)
        )
        log.info(
            "timing one %s case end to end, %s",
            "x".join(map(str, shape)),
            Sampling(settings.sampler, settings.steps).describe(),
        )
        result["case"] = time_case(settings, device, tuple(shape))
    result.update(peak_memory_figures(device))
    result.update(nvml_memory(device))
    return result
