"""The speed switches: each gives the plain path's result within its tolerance."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import pytest
import torch

from brasyn.common import acceleration
from brasyn.common.acceleration import (
    SpeedSettings,
    configure_backends,
    cpu_has_fast_bf16,
    cudnn_bf16_conv3d_problem,
    network_precision,
    optimise_model,
    resolve_precision,
)
from brasyn.model.diffusion import Diffusion
from brasyn.model.unet import PRESETS, DenoiserConfig
from tests.helpers import random_denoiser

SMALLEST = DenoiserConfig(model_channels=4, channel_mult=(1, 2), num_res_blocks=1, num_groups=2)


def _inputs(size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 32, size, size, size, generator=gen), torch.tensor([417])


def _relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt())


@torch.inference_mode()
def test_bf16_autocast_forward_stays_within_two_percent_of_fp32():
    model = random_denoiser(PRESETS["tiny"])
    x, t = _inputs()
    reference = model(x, t)
    with network_precision(torch.device("cpu"), "bf16"):
        low = model(x, t)
    assert low.dtype == torch.float32  # the output head stays float32
    error = _relative_rms(low, reference)
    assert 0 < error < 0.02, error


@torch.inference_mode()
def test_under_bf16_the_first_convolution_and_the_output_head_stay_float32():
    model = random_denoiser(PRESETS["tiny"])
    x, t = _inputs()
    seen = {}
    for name, conv in {
        "stem": model.input_blocks[0][0],
        "inner": model.input_blocks[1][0].in_layers[2],
        "head": model.out[2],
    }.items():
        conv.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, (i[0].dtype, o.dtype)))
    with network_precision(torch.device("cpu"), "bf16"):
        model(x, t)
    assert seen["stem"] == seen["head"] == (torch.float32, torch.float32)
    assert seen["inner"][1] == torch.bfloat16


@torch.inference_mode()
def test_sampler_state_stays_float32_under_bf16():
    model = random_denoiser(PRESETS["tiny"])
    cond = torch.rand(1, 24, 16, 16, 16)
    seen = []
    with network_precision(torch.device("cpu"), "bf16"):
        out = Diffusion().sample(
            model, cond, (1, 8, 16, 16, 16), "ddim", steps=3, progress=lambda info: seen.append(info)
        )
    assert out.dtype == torch.float32
    assert all(
        info["x"].dtype == torch.float32 and info["pred_xstart"].dtype == torch.float32 for info in seen
    )


@torch.inference_mode()
def test_channels_last_gives_the_contiguous_result():
    model = random_denoiser(PRESETS["tiny"])
    x, t = _inputs()
    reference = model(x, t)
    fast = optimise_model(model, torch.device("cpu"), SpeedSettings(channels_last=True))
    assert fast.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(fast(x, t), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@torch.inference_mode()
def test_compiled_denoiser_gives_the_eager_result():
    # the smallest U-Net keeps the compilation of a CPU test to tens of seconds
    model = random_denoiser(SMALLEST)
    x, t = _inputs(16)
    reference = model(x, t)
    compiled = optimise_model(model, torch.device("cpu"), SpeedSettings(channels_last=False, compile=True))
    assert compiled is not model
    torch.testing.assert_close(compiled(x, t), reference, rtol=1e-4, atol=1e-5)


@pytest.fixture
def restore_backends():
    saved = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.backends.cuda.matmul.fp32_precision = saved[0]
    torch.backends.cudnn.conv.fp32_precision = saved[1]
    torch.backends.cudnn.benchmark = saved[2]


def test_backend_switches_apply_to_cuda_only(restore_backends):
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.benchmark)
    configure_backends(torch.device("cpu"), SpeedSettings(tf32=False, cudnn_benchmark=False))
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.benchmark) == before
    configure_backends(torch.device("cuda"), SpeedSettings(tf32=True, cudnn_benchmark=True))
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.cudnn.conv.fp32_precision == "tf32" and torch.backends.cudnn.benchmark
    configure_backends(torch.device("cuda"), SpeedSettings(tf32=False, cudnn_benchmark=False))
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.cudnn.conv.fp32_precision == "ieee" and not torch.backends.cudnn.benchmark


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.split(":")[0].strip() in ("flags", "Features"):
            return set(line.split(":", 1)[1].split())
    return None


def test_the_real_cpu_bf16_detector_agrees_with_the_cpu_flags_and_bf16_runs():
    flags = _cpu_flags()
    if flags is None or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("no /proc/cpuinfo flags to compare with on this machine")
    if platform.machine() == "x86_64":
        expected = {"avx512bw", "avx512vl", "avx512dq"} <= flags
    else:
        expected = "bf16" in flags
    assert cpu_has_fast_bf16() is expected, sorted(f for f in flags if "avx512" in f or "bf16" in f)
    # and what it promises works: a bf16 convolution on this CPU close to the float32 one
    x = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    conv = torch.nn.Conv3d(4, 4, 3, padding=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = conv(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), conv(x).detach(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_on_cpu_follows_native_bf16_and_explicit_choices_stand(monkeypatch, native):
    monkeypatch.setattr(acceleration, "cpu_has_fast_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"
    assert SpeedSettings().precision == "fp32"  # bf16 is opt-in
    with pytest.raises(ValueError, match="unknown precision"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        SpeedSettings(precision="half")


@pytest.mark.parametrize(("version", "slow"), [(90800, False), (91002, True), (91400, True), (91500, False)])
def test_cudnn_with_slow_bf16_conv3d_is_named_and_auto_falls_back_to_fp32(monkeypatch, caplog, version, slow):
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: version)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    cuda = torch.device("cuda")
    problem = cudnn_bf16_conv3d_problem(cuda)
    assert (problem is not None) == slow
    assert cudnn_bf16_conv3d_problem(torch.device("cpu")) is None
    with caplog.at_level(logging.WARNING, logger=acceleration.__name__):
        chosen = resolve_precision("auto", cuda)
    assert chosen == ("fp32" if slow else "bf16")
    if slow:
        assert "9.15" in problem and "--precision fp32" in problem
        assert "float32 instead of bfloat16" in caplog.text
