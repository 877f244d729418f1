"""How close the denoiser's forward comes to what this processor can do (``python -m brasyn.bench floor``).

The network's work is its 3-D convolutions (the rest, GroupNorm, SiLU, the time embedding's linear layers,
is a few per cent of the operations). One forward at the sub-band size of a ``shape`` volume is run once
with a hook on every ``Conv3d`` and ``Linear``, which records each call's input and output shape; from them:

- ``forward_tflop``: the multiply-adds of the whole forward (2 operations each);
- ``convolutions``: the distinct convolution shapes that carry the most operations (``top``), each timed
  alone in fp32 and in bf16 (both in the channels_last_3d layout a run uses), as TFLOP/s; the best bf16
  and fp32 rates among them are the processor's **floor** for this network's kind of work, the rate its
  convolutions reach with nothing else in the way;
- ``forward``: the whole forward timed as a run computes it (the speed switches of ``python -m brasyn``,
  precision ``auto`` by default) in TFLOP/s, and ``share_of_floor``: that rate over the floor of the same
  precision. What is missing to 1 is the cost of everything between the convolutions (normalisation,
  activations, layout changes, memory traffic).

The JSON names the CPU (model and the instruction sets that matter here: AVX-512, AVX-512 BF16, AMX),
torch's CPU capability, oneDNN's bf16 support and the thread count.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brasyn.common.acceleration import (
    SpeedSettings,
    cpu_has_fast_bf16,
    network_precision,
    optimise_model,
    resolve_precision,
)
from brasyn.common.measure import environment, time_ms
from brasyn.model.unet import PRESETS, Denoiser

__all__ = ["CPU_FLAGS", "ConvShape", "count_operations", "cpu_features", "measure_floor"]

log = logging.getLogger("brasyn.bench")

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")
"""The instruction sets of /proc/cpuinfo that decide the speed of fp32 and bf16 convolutions."""


@dataclass(frozen=True)
class ConvShape:
    """One 3-D convolution call: what it reads and its kernel."""

    in_channels: int
    out_channels: int
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]
    input_size: tuple[int, int, int]
    output_size: tuple[int, int, int]

    @property
    def operations(self) -> float:
        """Multiply-adds times 2 (one batch element)."""
        taps = self.kernel[0] * self.kernel[1] * self.kernel[2]
        voxels = self.output_size[0] * self.output_size[1] * self.output_size[2]
        return 2.0 * self.in_channels * self.out_channels * taps * voxels

    def describe(self) -> str:
        k = "x".join(map(str, self.kernel))
        size = "x".join(map(str, self.input_size))
        step = "" if self.stride == (1, 1, 1) else f" stride {self.stride[0]}"
        return f"{self.in_channels}->{self.out_channels} {k}{step} at {size}"


def count_operations(
    model: nn.Module, inputs: torch.Tensor, t: torch.Tensor
) -> tuple[float, list[ConvShape]]:
    """The operations of one forward (convolutions and linear layers, 2 per multiply-add) and every
    convolution call's shape, from one forward with hooks."""
    calls: list[ConvShape] = []
    linear = [0.0]

    def on_conv(module: nn.Conv3d, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        x = args[0]
        calls.append(
            ConvShape(
                module.in_channels,
                module.out_channels,
                tuple(module.kernel_size),  # type: ignore[arg-type]
                tuple(module.stride),  # type: ignore[arg-type]
                tuple(module.padding),  # type: ignore[arg-type]
                tuple(x.shape[2:]),  # type: ignore[arg-type]
                tuple(out.shape[2:]),  # type: ignore[arg-type]
            )
        )

    def on_linear(module: nn.Linear, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        linear[0] += 2.0 * module.in_features * module.out_features * (args[0].numel() // module.in_features)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
    try:
        with torch.inference_mode():
            model(inputs, t)
    finally:
        for handle in handles:
            handle.remove()
    return inputs.shape[0] * sum(c.operations for c in calls) + linear[0], calls


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The CPU's model name, its :data:`CPU_FLAGS` and what torch and oneDNN make of it."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:  # not Linux: the model name alone
        pass
    return {
        "model": model,
        "flags": {flag: flag in flags for flag in CPU_FLAGS},
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16": cpu_has_fast_bf16(),
    }


def _largest(calls: list[ConvShape], top: int) -> list[tuple[ConvShape, int]]:
    """The ``top`` distinct shapes with the most operations in all (each with how often it runs)."""
    counts: dict[ConvShape, int] = {}
    for call in calls:
        counts[call] = counts.get(call, 0) + 1
    return sorted(counts.items(), key=lambda item: item[0].operations * item[1], reverse=True)[:top]


def _conv_timer(shape: ConvShape, bf16: bool) -> Callable[[], Any]:
    dtype = torch.bfloat16 if bf16 else torch.float32
    conv = nn.Conv3d(shape.in_channels, shape.out_channels, shape.kernel, shape.stride, shape.padding)
    conv = conv.to(dtype=dtype, memory_format=torch.channels_last_3d).eval()
    x = torch.randn(1, shape.in_channels, *shape.input_size, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last_3d)

    def run() -> Any:
        with torch.inference_mode():
            return conv(x)

    return run


def measure_floor(
    config: str = "official",
    shape: tuple[int, int, int] = (224, 224, 160),
    speed: SpeedSettings | None = None,
    repeats: int = 3,
    warmup: int = 1,
    top: int = 3,
) -> dict[str, Any]:
    """The floor figures of the module text, as one JSON-ready dict (CPU)."""
    device = torch.device("cpu")
    speed = speed or SpeedSettings(precision="auto")
    precision = resolve_precision(speed.precision, device)
    model = Denoiser.from_config(PRESETS[config]).eval()
    bands = tuple(n // 2 for n in shape)
    inputs = torch.randn(1, model.config.in_channels, *bands)
    t = torch.tensor([500])
    operations, calls = count_operations(model, inputs, t)
    convolutions = []
    best = {"fp32": 0.0, "bf16": 0.0}
    for conv, count in _largest(calls, top):
        row: dict[str, Any] = {
            "shape": conv.describe(),
            "calls_per_forward": count,
            "tflop": round(conv.operations / 1e12, 6),
        }
        for name, bf16 in (("fp32", False), ("bf16", True)):
            log.info("convolution %s in %s", conv.describe(), name)
            timing = time_ms(_conv_timer(conv, bf16), device, repeats, warmup)
            rate = conv.operations / (timing["median"] / 1e3) / 1e12
            row[f"{name}_ms"] = round(timing["median"], 2)
            row[f"{name}_tflops"] = round(rate, 4)
            best[name] = max(best[name], rate)
        convolutions.append(row)
    model = optimise_model(model, device, speed)  # the memory format (and compilation) of a run
    if speed.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last_3d)

    def forward() -> Any:
        with torch.inference_mode(), network_precision(device, precision):
            return model(inputs, t)

    log.info("whole forward in %s", precision.value)
    timing = time_ms(forward, device, repeats, warmup)
    rate = operations / (timing["median"] / 1e3) / 1e12
    kind = "bf16" if precision.value == "bf16" else "fp32"
    return {
        "config": config,
        "shape": list(shape),
        "bands": list(bands),
        "forward_tflop": round(operations / 1e12, 6),
        "convolutions": convolutions,
        "floor_tflops": {name: round(value, 4) for name, value in best.items()},
        "forward": {
            "precision": precision.value,
            "channels_last": speed.channels_last,
            "compiled": speed.compile,
            "ms": round(timing["median"], 1),
            "runs_ms": [round(r, 1) for r in timing["runs"]],
            "tflops": round(rate, 4),
            "share_of_floor": round(rate / best[kind], 4) if best[kind] else None,
        },
        "cpu": cpu_features(),
        **environment(device),
    }
