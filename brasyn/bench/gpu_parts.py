"""The parts of the GPU check (:mod:`brasyn.bench.gpu_check`) that look at the device itself: the golden
numbers on it and the denoiser forward in each speed variant; with the sizes, the time budget and the
backend switch every part shares."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from brasyn.bench.speed import official_model
from brasyn.common.acceleration import (
    Precision,
    SpeedSettings,
    configure_backends,
    network_precision,
    optimise_model,
)
from brasyn.common.measure import elapsed_ms, peak_memory_and_nvml, reset_peak_memory, time_ms
from brasyn.model.diffusion import Diffusion
from brasyn.model.unet import PRESETS, Denoiser, DenoiserConfig

log = logging.getLogger("brasyn.bench")

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "cwdm_reference_small.pt"
"""The official code's golden numbers (shipped with the tests)."""
TOLERANCES = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 5e-2}
"""Largest error against the golden numbers: absolute for fp32 (the tests' bound), relative to the
largest golden value for TF32 (10-bit mantissa) and bf16 (8-bit mantissa)."""
DEFAULT_BUDGET_S = 420.0
"""Seven minutes for the measurements: with start-up and writing, the command ends within eight."""
QUICK_BUDGET_S = 120.0


@dataclass(frozen=True)
class Sizes:
    """How big each part of the check is: the real sizes, or the tiny ones of ``--quick``."""

    config: str
    volume: tuple[int, int, int]
    """Model-space volume of the forward timing (the network sees half of it per axis)."""
    case: tuple[int, int, int]
    """Stored grid of the end-to-end cases."""
    ddpm_steps: int
    fast_steps: int
    batch_cases: int
    train_steps: int
    repeats: int

    @classmethod
    def for_run(cls, quick: bool) -> Sizes:
        if quick:
            return cls("tiny", (32, 32, 32), (32, 32, 32), 5, 3, 4, 3, 2)
        return cls("official", (224, 224, 160), (240, 240, 155), 1000, 20, 4, 10, 5)


@dataclass
class Budget:
    """Seconds left for the check; a part that would not fit is skipped and says so."""

    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def refuse(self, estimate_s: float, what: str) -> str | None:
        """A reason to skip ``what`` when its estimate does not fit, else None."""
        if estimate_s > self.left():
            return (
                f"{what} would take about {estimate_s:.0f} s, {max(self.left(), 0):.0f} s of the budget left"
            )
        return None


@contextlib.contextmanager
def backends(device: torch.device, tf32: bool) -> Iterator[None]:
    """TF32 on or off for the block, the run's defaults afterwards."""
    configure_backends(device, SpeedSettings(tf32=tf32))
    try:
        yield
    finally:
        configure_backends(device, SpeedSettings())


# --- 2. correctness --------------------------------------------------------------------------------


def _golden_model(golden: dict[str, Any], device: torch.device) -> Denoiser:
    model = Denoiser.from_config(DenoiserConfig.from_dict(golden["config"]))
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.to(device).eval()


def _against_golden(
    golden: dict[str, Any], model: Denoiser, device: torch.device, precision: str
) -> dict[str, float]:
    """Largest absolute errors of the model output and of p_mean_variance's mean and x0 at the golden
    timesteps, with the largest golden value beside."""
    diffusion = Diffusion()
    x_t = golden["x_t"].to(device)
    cond = golden["conditioning"]["cond"].to(device)
    worst = {"model_output": 0.0, "mean": 0.0, "pred_xstart": 0.0, "scale": 0.0}
    with torch.inference_mode(), network_precision(device, precision):
        for t, step in golden["steps"].items():
            tt = torch.tensor([int(t)], device=device)
            out = model(torch.cat([x_t, cond], dim=1), tt).float().cpu()
            pmv = diffusion.p_mean_variance(model, x_t, tt, cond, clip=True)
            for key, ours, theirs in (
                ("model_output", out, step["model_output"]),
                ("mean", pmv["mean"].float().cpu(), step["mean"]),
                ("pred_xstart", pmv["pred_xstart"].float().cpu(), step["pred_xstart_clipped"]),
            ):
                worst[key] = max(worst[key], float((ours - theirs).abs().max()))
                worst["scale"] = max(worst["scale"], float(theirs.abs().max()))
    return worst


def correctness(device: torch.device, fixture: Path = FIXTURE) -> dict[str, Any]:
    """The golden numbers on ``device`` in fp32 (TF32 off), TF32 and bf16, and DPM-Solver++ here against
    the CPU on the same noise."""
    if not fixture.is_file():
        return {"skipped": f"no golden numbers at {fixture} (they ship with the tests)"}
    golden = torch.load(fixture, map_location="cpu", weights_only=True)
    model = _golden_model(golden, device)
    result: dict[str, Any] = {}
    for mode, tf32, precision in (("fp32", False, "fp32"), ("tf32", True, "fp32"), ("bf16", True, "bf16")):
        if mode == "tf32" and device.type != "cuda":
            result[mode] = {"skipped": "TF32 exists on CUDA only"}
            continue
        with backends(device, tf32):
            worst = _against_golden(golden, model, device, precision)
        error = max(worst["model_output"], worst["mean"], worst["pred_xstart"])
        relative = mode != "fp32"
        measured = error / worst["scale"] if relative else error
        result[mode] = {
            **{k: v for k, v in worst.items() if k != "scale"},
            "error": measured,
            "error_kind": "relative to the largest golden value" if relative else "absolute",
            "tolerance": TOLERANCES[mode],
            "passed": measured <= TOLERANCES[mode],
        }
        log.info("golden numbers, %s: error %.3g (tolerance %g)", mode, measured, TOLERANCES[mode])
    result["dpmpp_cpu_vs_device"] = _solver_agreement(golden, model, device)
    return result


def _solver_agreement(golden: dict[str, Any], model: Denoiser, device: torch.device) -> dict[str, Any]:
    """Five DPM-Solver++(2M) steps from the same noise on the CPU and on ``device`` (fp32, TF32 off)."""
    cond = golden["conditioning"]["cond"]
    noise = torch.randn(golden["x_t"].shape, generator=torch.Generator().manual_seed(0))
    diffusion = Diffusion()
    cpu_model = _golden_model(golden, torch.device("cpu"))
    with torch.inference_mode(), backends(device, False):
        here = diffusion.sample(model, cond.to(device), noise.shape, "dpm++2m", steps=5, noise=noise)
        there = diffusion.sample(cpu_model, cond, noise.shape, "dpm++2m", steps=5, noise=noise)
    difference = float((here.cpu() - there).abs().max())
    return {"steps": 5, "max_abs_difference": difference, "tolerance": 1e-3, "passed": difference <= 1e-3}


# --- 3. the denoiser forward -----------------------------------------------------------------------

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"tf32": False, "precision": "fp32", "channels_last": False, "compile": False},
    "tf32": {"tf32": True, "precision": "fp32", "channels_last": False, "compile": False},
    "bf16": {"tf32": True, "precision": "bf16", "channels_last": False, "compile": False},
    "bf16_channels_last": {"tf32": True, "precision": "bf16", "channels_last": True, "compile": False},
    "bf16_compile": {"tf32": True, "precision": "bf16", "channels_last": True, "compile": True},
}


def _random_denoiser(config: DenoiserConfig, device: torch.device, seed: int = 0) -> Denoiser:
    model = Denoiser.from_config(config).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a fresh model outputs zeros; give every layer work to do
            p.normal_(0.0, 0.02, generator=gen)
    return model


def _count_flops(model: Denoiser, inputs: torch.Tensor, t: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(inputs, t)
    return float(counter.get_total_flops())


def denoiser(
    device: torch.device, sizes: Sizes, budget: Budget, official: Path | None = None
) -> dict[str, Any]:
    """Forward milliseconds, TFLOP/s and peak memory per variant (see :data:`VARIANTS`)."""
    config = PRESETS[sizes.config]
    bands = tuple(n // 2 for n in sizes.volume)
    gen = torch.Generator(device=device).manual_seed(0)
    inputs = torch.rand(1, config.in_channels, *bands, generator=gen, device=device)
    t = torch.tensor([500], device=device)
    base = _random_denoiser(config, device)
    flops = _count_flops(base, inputs, t)
    result: dict[str, Any] = {
        "config": sizes.config,
        "input_shape": list(inputs.shape),
        "tflop_per_forward": flops / 1e12,
    }
    previous_ms = None
    for name, variant in VARIANTS.items():
        if variant["tf32"] and variant["precision"] != Precision.BF16 and device.type != "cuda":
            result[name] = {"forward_ms": None, "skipped": "TF32 exists on CUDA only"}
            continue
        if variant["compile"] and device.type != "cuda":
            result[name] = {
                "forward_ms": None,
                "skipped": "compile is timed on a GPU only (minutes on a CPU)",
            }
            continue
        estimate = (previous_ms or 1000.0) * (sizes.repeats + 2) / 1e3 + (90.0 if variant["compile"] else 0.0)
        reason = budget.refuse(estimate, f"the {name} forward")
        if reason:
            result[name] = {"forward_ms": None, "skipped": reason}
            continue
        result[name] = _time_variant(base, inputs, t, device, variant, sizes.repeats, flops)
        previous_ms = result[name]["forward_ms"]
        log.info("denoiser %s: %.1f ms per forward", name, previous_ms)
    if official is not None:
        result["official"] = _official_side_by_side(official, base, inputs, t, device, sizes, budget)
    return result


def _time_variant(
    base: Denoiser,
    inputs: torch.Tensor,
    t: torch.Tensor,
    device: torch.device,
    variant: dict[str, Any],
    repeats: int,
    flops: float,
) -> dict[str, Any]:
    speed = SpeedSettings(
        precision=variant["precision"], channels_last=variant["channels_last"], compile=variant["compile"]
    )
    model = Denoiser.from_config(base.config).to(device).eval()
    model.load_state_dict(base.state_dict())
    model = optimise_model(model, device, speed)
    x = inputs.contiguous(memory_format=torch.channels_last_3d) if variant["channels_last"] else inputs
    with (
        backends(device, variant["tf32"]),
        torch.inference_mode(),
        network_precision(device, speed.precision),
    ):
        reset_peak_memory(device)
        first_ms = elapsed_ms(lambda: model(x, t), device)  # warm-up (and the compilation)
        ms = time_ms(lambda: model(x, t), device, repeats)["median"]
        peak = peak_memory_and_nvml(device)
    return {"forward_ms": ms, "first_forward_ms": first_ms, "tflops": flops / (ms / 1e3) / 1e12, **peak}


def _official_side_by_side(
    checkout: Path,
    base: Denoiser,
    inputs: torch.Tensor,
    t: torch.Tensor,
    device: torch.device,
    sizes: Sizes,
    budget: Budget,
) -> dict[str, Any]:
    reason = budget.refuse(30.0, "the official UNetModel")
    if reason:
        return {"forward_ms": None, "skipped": reason}
    try:
        theirs = official_model(checkout, sizes.config)
    except (FileNotFoundError, ImportError) as exc:
        return {"forward_ms": None, "skipped": f"the official code could not be imported: {exc}"}
    theirs.load_state_dict(base.state_dict(), strict=True)
    theirs.to(device)  # the official UNetModel.to returns None
    theirs.eval()
    with backends(device, False), torch.inference_mode():
        ours_out = base(inputs, t).float()
        theirs_out = theirs(inputs, t).float()
        ms = time_ms(lambda: theirs(inputs, t), device, sizes.repeats)["median"]
    return {
        "forward_ms": ms,
        "precision": "fp32, TF32 off",
        "max_abs_difference": float((ours_out - theirs_out).abs().max()),
    }
