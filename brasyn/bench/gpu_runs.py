"""The parts of the GPU check (:mod:`brasyn.bench.gpu_check`) that run what users run: one case and a batch
through the batch runner, and training steps, in the fastest variant that passed the golden check."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brasyn.bench.gpu_parts import VARIANTS, Budget, Sizes, backends
from brasyn.bench.speed import BenchSettings, synthetic_case, time_case
from brasyn.common.acceleration import Precision, SpeedSettings
from brasyn.common.measure import elapsed_ms, nvml_memory, peak_memory_and_nvml, reset_peak_memory
from brasyn.data.cases import discover
from brasyn.data.modalities import Modality
from brasyn.inference.batch import run_batch
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import PHASES, Synthesizer
from brasyn.model.diffusion import Sampling
from brasyn.train.settings import TrainSettings
from brasyn.train.trainer import Trainer
from brasyn.train.training_data import TrainingCase, TrainingSet
from brasyn.weights.store import WeightStore, init_random

log = logging.getLogger("brasyn.bench")


# --- 4. one case, 5. a batch -----------------------------------------------------------------------


def fastest_passing(correct: dict[str, Any], forward: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fastest timed variant whose numerics passed the golden check (fp32 when nothing else did)."""
    passed = {
        "fp32": True,
        "tf32": correct.get("tf32", {}).get("passed", False),
        "bf16": correct.get("bf16", {}).get("passed", False),
    }
    best, best_ms = "fp32", float("inf")
    for name, variant in VARIANTS.items():
        kind = "bf16" if variant["precision"] == Precision.BF16 else ("tf32" if variant["tf32"] else "fp32")
        ms = (forward.get(name) or {}).get("forward_ms")
        if passed[kind] and ms is not None and ms < best_ms:
            best, best_ms = name, ms
    return best, VARIANTS[best]


def _case_settings(config: str, sampler: str, steps: int, variant: dict[str, Any]) -> BenchSettings:
    speed = SpeedSettings(
        precision=variant["precision"],
        channels_last=variant["channels_last"],
        tf32=variant["tf32"],
        cudnn_benchmark=True,
        compile=variant["compile"],
    )
    return BenchSettings(config=config, sampler=sampler, steps=steps, speed=speed)


def case(
    device: torch.device, sizes: Sizes, budget: Budget, variant_name: str, forward_ms: float | None
) -> dict[str, Any]:
    """One case through the batch runner: the 1000-step DDPM and DPM-Solver++(2M)."""
    variant = VARIANTS[variant_name]
    result: dict[str, Any] = {"variant": variant_name, "stored_shape": list(sizes.case)}
    step_s = (forward_ms or 1000.0) / 1e3 * 1.1  # a step is a forward and a little arithmetic
    for key, sampler, steps in (
        ("dpmpp_2m", "dpm++2m", sizes.fast_steps),
        ("ddpm", "ddpm", sizes.ddpm_steps),
    ):
        reason = budget.refuse(step_s * steps + 15.0, f"{steps} {sampler} steps of one case")
        if reason:
            result[key] = {"skipped": reason}
            continue
        with backends(device, variant["tf32"]):
            timing = time_case(_case_settings(sizes.config, sampler, steps, variant), device, sizes.case)
        result[key] = {
            "steps": timing["steps"],
            "seconds": timing["case_seconds"],
            "phases_s": {k: v / 1e3 for k, v in timing["phases_ms"].items()},
            "sample_ms_per_step": timing["sample_ms_per_step"],
            "peak_memory_mib": timing["peak_memory_mib"],
            **nvml_memory(device),
        }
        log.info("one case, %d %s steps: %.1f s", timing["steps"], sampler, timing["case_seconds"])
    return result


def batch(
    device: torch.device, sizes: Sizes, budget: Budget, variant_name: str, forward_ms: float | None
) -> dict[str, Any]:
    """Four cases with read-ahead on and off, DPM-Solver++(2M): does loading hide behind sampling?"""
    variant = VARIANTS[variant_name]
    estimate = 2 * sizes.batch_cases * ((forward_ms or 1000.0) / 1e3 * sizes.fast_steps + 3.0)
    reason = budget.refuse(estimate, f"two batches of {sizes.batch_cases} cases")
    if reason:
        return {"skipped": reason}
    target = Modality.T2F
    result: dict[str, Any] = {"cases": sizes.batch_cases, "sampler": "dpm++2m", "steps": sizes.fast_steps}
    with tempfile.TemporaryDirectory(prefix="brasyn-gpu-batch-") as tmp:
        root = Path(tmp)
        for i in range(sizes.batch_cases):
            synthetic_case(root / "input", f"BraTS-BENCH-{i:05d}-000", sizes.case)
        init_random(root / "weights", sizes.config, targets=[target])
        speed = SpeedSettings(
            precision=variant["precision"], channels_last=variant["channels_last"], compile=variant["compile"]
        )
        predictor = DiffusionPredictor(
            WeightStore(root / "weights", quality_notice=False),
            device,
            Sampling("dpm++2m", sizes.fast_steps),
            speed,
        )
        predictor.model_for(target)
        with backends(device, variant["tf32"]):
            for label, prefetch in (("read_ahead", True), ("one_by_one", False)):
                start = time.perf_counter()
                done = run_batch(
                    discover(root / "input"),
                    Synthesizer(predictor, seed=0, progress=False),
                    root / label,
                    prefetch=prefetch,
                )
                seconds = time.perf_counter() - start
                result[label] = {
                    "seconds": seconds,
                    "written": done.counts["written"],
                    "phases_s": {
                        phase: sum(r.phases.get(phase, 0.0) for r in done.results) for phase in PHASES
                    },
                }
    result["saved_s"] = result["one_by_one"]["seconds"] - result["read_ahead"]["seconds"]
    return result


# --- 6. training -----------------------------------------------------------------------------------


def training(device: torch.device, sizes: Sizes, budget: Budget, forward_ms: float | None) -> dict[str, Any]:
    """Train steps per second at full resolution (bf16 where the device runs it) and the loader's rate."""
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    precision = Precision.BF16 if bf16 else Precision.FP32
    # forward + backward is about three forwards; plus the first step's set-up
    estimate = (forward_ms or 1000.0) / 1e3 * 3 * (sizes.train_steps + 1) + 20.0
    reason = budget.refuse(estimate, f"{sizes.train_steps} training steps")
    if reason:
        return {"skipped": reason}
    rng = np.random.default_rng(0)
    shape = (4, *sizes.volume)
    cases = [
        TrainingCase(f"synthetic-{i}", rng.random(shape, dtype=np.float32), np.ones(shape[1:], bool), {})
        for i in range(2)
    ]
    data = TrainingSet(cases)
    settings = TrainSettings(target=Modality.T2F, config=sizes.config, precision=precision, save_every=0)
    with tempfile.TemporaryDirectory(prefix="brasyn-gpu-train-") as tmp:
        trainer = Trainer(settings, data, Path(tmp), device)
        trainer.train_step()  # the first step allocates and tunes
        reset_peak_memory(device)

        def steps() -> None:
            for _ in range(sizes.train_steps):
                trainer.train_step()

        seconds = elapsed_ms(steps, device) / 1e3
        peak = peak_memory_and_nvml(device)
    gen = torch.Generator().manual_seed(0)
    loads = max(sizes.train_steps, 5)
    start = time.perf_counter()
    for _ in range(loads):
        data.sample(1, gen)
    loader_s = time.perf_counter() - start
    return {
        "precision": precision,
        "volume": list(sizes.volume),
        "steps": sizes.train_steps,
        "steps_per_s": sizes.train_steps / seconds,
        "loader_samples_per_s": loads / loader_s,
        **peak,
    }
