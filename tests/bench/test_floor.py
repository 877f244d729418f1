"""The processor's floor: operations counted from the network's own calls, the CPU described, the share
of the floor the forward reaches."""

from __future__ import annotations

import json

import pytest
import torch

from brasyn.bench.floor import CPU_FLAGS, count_operations, cpu_features
from brasyn.commands.bench import main
from brasyn.model.unet import PRESETS, Denoiser


def test_operations_are_counted_from_every_convolution_call():
    model = Denoiser.from_config(PRESETS["tiny"]).eval()
    inputs = torch.randn(2, 32, 16, 16, 16)
    total, calls = count_operations(model, inputs, torch.tensor([5, 5]))
    first = calls[0]  # the input convolution: 32 channels to 8, 3x3x3, same size
    assert (first.in_channels, first.out_channels, first.kernel) == (32, 8, (3, 3, 3))
    assert first.input_size == first.output_size == (16, 16, 16)
    assert first.operations == 2 * 32 * 8 * 27 * 16**3
    conv = 2 * sum(c.operations for c in calls)  # a batch of two
    assert conv < total < 1.01 * conv  # the time embedding's linear layers are the rest, and small
    assert {c.input_size for c in calls} >= {(16, 16, 16), (8, 8, 8), (1, 1, 1)}  # every level is seen
    assert len(calls) == sum(isinstance(m, torch.nn.Conv3d) for m in model.modules())


def test_the_cpu_is_described_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    described = cpu_features(info)
    assert described["model"] == "Test CPU 9000"
    assert described["flags"] == {f: f in ("avx2", "avx512f", "amx_bf16", "amx_tile") for f in CPU_FLAGS}
    assert set(cpu_features(tmp_path / "absent")["flags"].values()) == {False}


def test_the_floor_command_prints_the_share_of_the_floor(capsys):
    args = ["floor", "--config", "tiny", "--shape", "32", "32", "32", "--repeats", "1", "--warmup", "0"]
    assert main([*args, "--top", "2", "--threads", "1"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert len(figures["convolutions"]) == 2 and figures["threads"] == 1
    for precision in ("fp32", "bf16"):
        rates = [c[f"{precision}_tflops"] for c in figures["convolutions"]]
        assert figures["floor_tflops"][precision] == pytest.approx(max(rates), rel=1e-3, abs=1e-4)
    forward = figures["forward"]
    kind = "bf16" if forward["precision"] == "bf16" else "fp32"
    assert forward["share_of_floor"] == pytest.approx(
        forward["tflops"] / figures["floor_tflops"][kind], rel=1e-2, abs=1e-4
    )
    assert forward["tflops"] == pytest.approx(figures["forward_tflop"] / (forward["ms"] / 1e3), rel=1e-2)
    assert set(figures["cpu"]) == {"model", "flags", "torch_capability", "onednn_bf16"}


def test_the_floor_refuses_a_shape_the_network_cannot_take(capsys):
    assert main(["floor", "--config", "tiny", "--shape", "30", "32", "32"]) == 2
    assert "--shape must be multiples of 32" in capsys.readouterr().err
