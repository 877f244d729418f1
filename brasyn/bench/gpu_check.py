"""``python -m brasyn.bench gpu --out DIR``: the GPU check, one command with a hard time budget.

GPU time comes in short slots, so everything worth knowing about a GPU is measured by one prepared command
that writes ``DIR/gpu.json`` and a ready-to-paste ``DIR/gpu.md``. Its parts, cheapest and most important
first (each skipped, with the reason in the JSON, when it would not fit in what is left of the budget):

1. ``environment``: GPU, driver, torch, CUDA and cuDNN versions, free memory;
2. ``correctness``: the official code's golden numbers (``tests/fixtures/cwdm_reference_small.pt``:
   denoiser outputs and ``p_mean_variance`` at four timesteps) on this device in float32 with TF32 off
   (to 1e-4), with TF32 on and under bf16 autocast (relative tolerances stated), and a short
   DPM-Solver++(2M) run on the same noise here and on the CPU;
3. ``denoiser``: the denoiser forward (official size: 112 x 112 x 80 sub-bands, batch 1) in fp32, TF32,
   bf16, bf16 + channels_last_3d and bf16 + ``torch.compile``: milliseconds, achieved TFLOP/s (FLOPs
   counted by torch), peak memory (torch and NVML); with ``--official DIR`` the official ``UNetModel``
   on the same weights and input;
4. ``case``: one 240 x 240 x 155 case through the batch runner (official-size random weights) with the
   1000-step DDPM in the fastest configuration that passed the correctness checks, and with 20
   DPM-Solver++(2M) steps: seconds per phase, peak memory;
5. ``batch``: four cases with read-ahead on and off (is loading hidden behind sampling?);
6. ``training``: official-size train steps per second at full resolution in bf16, and the loader's samples
   per second beside it.

``--quick`` runs the same code at tiny sizes (the ``tiny`` denoiser, 32-voxel volumes, a few steps) in
about a minute on a CPU; the test suite runs it, so the command cannot rot between GPU slots.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from brasyn.bench.gpu_parts import VARIANTS, Budget, Sizes, correctness, denoiser
from brasyn.bench.gpu_runs import batch, case, fastest_passing, training
from brasyn.common.measure import device_environment

log = logging.getLogger("brasyn.bench")


def gpu_check(
    device: torch.device, quick: bool, budget_s: float, official: Path | None = None
) -> dict[str, Any]:
    """Every part in order within ``budget_s`` seconds; a part that fails is recorded, not fatal."""
    sizes = Sizes.for_run(quick)
    budget = Budget(budget_s)
    report: dict[str, Any] = {"quick": quick, "budget_s": budget_s, "sizes": sizes.__dict__}

    def part(name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        log.info("gpu check: %s (%.0f s of the budget left)", name, budget.left())
        try:
            report[name] = run()
        except Exception as exc:  # one broken part must not cost the figures of the others
            log.exception("gpu check: %s failed", name)
            report[name] = {"skipped": f"failed: {type(exc).__name__}: {exc}"}
        return report[name]

    part("environment", lambda: device_environment(device))
    correct = part("correctness", lambda: correctness(device))
    forward = part("denoiser", lambda: denoiser(device, sizes, budget, official))
    chosen, _ = fastest_passing(correct, forward)
    forward_ms = (forward.get(chosen) or {}).get("forward_ms")
    part("case", lambda: case(device, sizes, budget, chosen, forward_ms))
    part("batch", lambda: batch(device, sizes, budget, chosen, forward_ms))
    part("training", lambda: training(device, sizes, budget, forward_ms))
    report["elapsed_s"] = time.perf_counter() - budget.start
    return report


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The figures as Markdown tables, ready for docs/benchmarks.md."""
    env = report.get("environment", {})
    lines = [
        f"GPU check ({'quick, tiny sizes' if report['quick'] else 'full sizes'}): {env.get('device_name')}, "
        f"driver {env.get('driver', '-')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"cuDNN {env.get('cudnn')}; {report.get('elapsed_s', 0):.0f} s of a "
        f"{report['budget_s']:.0f} s budget.",
        "",
        "| check | error | tolerance | passed |",
        "|---|---|---|---|",
    ]
    correct = report.get("correctness", {})
    for mode in ("fp32", "tf32", "bf16", "dpmpp_cpu_vs_device"):
        row = correct.get(mode) or {}
        error = row.get("error", row.get("max_abs_difference"))
        lines.append(
            f"| {mode} | {_cell(error, 6)} | {_cell(row.get('tolerance'), 6)} | "
            f"{_cell(row.get('passed')) if 'passed' in row else row.get('skipped', '-')} |"
        )
    forward = report.get("denoiser", {})
    lines += [
        "",
        f"Denoiser forward, {forward.get('config')} config, input {forward.get('input_shape')}, "
        f"{_cell(forward.get('tflop_per_forward'), 2)} TFLOP per forward:",
        "",
        "| variant | ms per forward | TFLOP/s | peak torch MiB | note |",
        "|---|---|---|---|---|",
    ]
    for name in (*VARIANTS, "official"):
        row = forward.get(name)
        if row is None:
            continue
        lines.append(
            f"| {name} | {_cell(row.get('forward_ms'))} | {_cell(row.get('tflops'), 2)} | "
            f"{_cell(row.get('peak_torch_mib'), 0)} | {row.get('skipped', '')} |"
        )
    one = report.get("case", {})
    lines += [
        "",
        f"One case through the batch runner ({one.get('variant', '-')}):",
        "",
        "| sampler | steps | seconds | sample ms per step | peak MiB | note |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("ddpm", "dpmpp_2m"):
        row = one.get(key) or {}
        lines.append(
            f"| {key} | {_cell(row.get('steps'))} | {_cell(row.get('seconds'))} | "
            f"{_cell(row.get('sample_ms_per_step'))} | {_cell(row.get('peak_memory_mib'), 0)} | "
            f"{row.get('skipped', '')} |"
        )
    many, train = report.get("batch", {}), report.get("training", {})
    lines += [
        "",
        f"Batch of {many.get('cases', '-')} cases: read-ahead "
        f"{_cell((many.get('read_ahead') or {}).get('seconds'))} s, one by one "
        f"{_cell((many.get('one_by_one') or {}).get('seconds'))} s {many.get('skipped', '')}",
        f"Training: {_cell(train.get('steps_per_s'), 2)} steps/s ({train.get('precision', '-')}), loader "
        f"{_cell(train.get('loader_samples_per_s'), 1)} samples/s {train.get('skipped', '')}",
    ]
    return "\n".join(lines) + "\n"
