"""The engine of the denoiser's forward: what ``--backend`` resolves to on each device, its refusals, the
fall-back where the optional OpenVINO runtime is missing, and OpenVINO's forward against torch's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brasyn.commands.cli import main
from brasyn.common import cpu_backends
from brasyn.common.acceleration import SpeedSettings, network_precision, optimise_model
from brasyn.common.cpu_backends import (
    ADOPTED_CPU_BACKEND,
    Backend,
    OpenVinoDenoiser,
    as_backend,
    openvino_available,
    resolve_backend,
)
from brasyn.model.unet import PRESETS
from tests.helpers import make_case, random_denoiser

CPU, GPU = torch.device("cpu"), torch.device("cuda")
ERROR_BOUND = 5e-3
"""The error a backend may have against the float32 reference, as a share of the output's largest
magnitude (brasyn.bench.backends.ERROR_BOUND, the bound the adoption is measured against)."""


@pytest.fixture()
def without_openvino(monkeypatch):
    """This process as where ``pip install 'brasyn[cpu]'`` was not run."""
    monkeypatch.setattr(cpu_backends, "openvino_available", lambda: False)


@pytest.fixture()
def openvino_adopted(monkeypatch):
    """``auto`` as it would be had the measurement adopted OpenVINO."""
    monkeypatch.setattr(cpu_backends, "ADOPTED_CPU_BACKEND", Backend.OPENVINO)
    monkeypatch.setattr(cpu_backends, "openvino_available", lambda: True)


def test_auto_is_the_adopted_backend_on_the_cpu_and_torch_on_a_gpu():
    assert resolve_backend("auto", GPU) is Backend.TORCH
    expected = ADOPTED_CPU_BACKEND if openvino_available() else Backend.TORCH
    assert resolve_backend("auto", CPU) is expected
    assert resolve_backend("torch", CPU) is Backend.TORCH


def test_auto_takes_an_adopted_openvino_on_the_cpu_only_and_not_under_compile(openvino_adopted):
    assert resolve_backend("auto", CPU) is Backend.OPENVINO
    assert resolve_backend("auto", GPU) is Backend.TORCH
    assert resolve_backend("auto", CPU, compile=True) is Backend.TORCH


def test_auto_falls_back_to_torch_where_openvino_is_not_installed(openvino_adopted, monkeypatch, caplog):
    monkeypatch.setattr(cpu_backends, "openvino_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="brasyn.common.cpu_backends"):
        assert resolve_backend("auto", CPU) is Backend.TORCH
    assert "pip install 'brasyn[cpu]'" in caplog.text


def test_an_explicit_openvino_that_cannot_run_here_is_refused_saying_what_to_do(without_openvino):
    with pytest.raises(ValueError, match=r"needs the OpenVINO runtime: pip install 'brasyn\[cpu\]'"):
        resolve_backend("openvino", CPU)
    with pytest.raises(ValueError, match="runs on the CPU; this run is on cuda"):
        resolve_backend("openvino", GPU)
    with pytest.raises(ValueError, match="unknown backend 'onnx'; choose one of auto, torch, openvino"):
        as_backend("onnx")


def test_openvino_with_compile_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_backends, "openvino_available", lambda: True)
    with pytest.raises(ValueError, match="--compile compiles the torch backend"):
        resolve_backend("openvino", CPU, compile=True)


def _cpu_run(tmp_path: Path, weights: Path, output: Path, *extra: str) -> list[str]:
    """The main command's arguments for the cases in ``tmp_path / "in"``, on the CPU."""
    return [
        *("--input", str(tmp_path / "in"), "--output", str(output), "--weights", str(weights)),
        *("--device", "cpu", *extra),
    ]


def test_a_run_asking_for_openvino_without_it_stops_with_exit_2_before_any_case(
    tmp_path, tiny_weights, without_openvino, capsys
):
    make_case(tmp_path / "in", "c0", shape=(32, 32, 32))
    assert main(_cpu_run(tmp_path, tiny_weights, tmp_path / "out", "--backend", "openvino")) == 2
    err = capsys.readouterr().err
    assert "pip install 'brasyn[cpu]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_torch_run_records_its_backend_in_the_report(tmp_path, tiny_weights):
    make_case(tmp_path / "in", "c0", shape=(32, 32, 32))
    report = tmp_path / "report.json"
    extra = ["--backend", "torch", "--sampler", "ddim", "--steps", "2", "--report", str(report)]
    assert main(_cpu_run(tmp_path, tiny_weights, tmp_path / "out", *extra)) == 0
    assert json.loads(report.read_text())["settings"]["speed"]["backend"] == "torch"


# --- OpenVINO itself, where it is installed -----------------------------------------------------------


@pytest.mark.parametrize(("precision", "bound"), [("fp32", 1e-5), ("bf16", ERROR_BOUND)])
def test_the_openvino_forward_gives_torchs_float32_result_within_its_bound(precision, bound):
    pytest.importorskip("openvino", reason="the optional OpenVINO runtime (pip install 'brasyn[cpu]')")
    model = random_denoiser(PRESETS["tiny"])
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 32, 32, 32, 16, generator=gen), torch.tensor([417])
    second = torch.randn(2, 32, 16, 16, 32, generator=gen), torch.tensor([3, 900])
    with torch.inference_mode():
        reference, second_reference = model(x, t), model(*second)
    prepared = optimise_model(model, CPU, SpeedSettings(precision=precision, backend="openvino"))
    assert isinstance(prepared, OpenVinoDenoiser)
    with torch.inference_mode(), network_precision(CPU, precision):  # as a run calls it
        out = prepared(x.contiguous(memory_format=torch.channels_last_3d), t)
        other_shape = prepared(*second)
    assert out.dtype == torch.float32 and out.shape == reference.shape
    error = float((out - reference).abs().max() / reference.abs().max())
    assert error <= bound, error
    # one conversion serves every shape and batch size
    assert other_shape.shape == second_reference.shape
    assert float((other_shape - second_reference).abs().max() / second_reference.abs().max()) <= bound


@pytest.mark.slow
def test_a_run_with_openvino_writes_torchs_image_and_records_its_backend(tmp_path, tiny_weights):
    pytest.importorskip("openvino", reason="the optional OpenVINO runtime (pip install 'brasyn[cpu]')")
    make_case(tmp_path / "in", "c0", shape=(32, 32, 32))
    images = {}
    for backend in ("torch", "openvino"):
        out, report = tmp_path / backend, tmp_path / f"{backend}.json"
        extra = ["--backend", backend, "--sampler", "ddim", "--steps", "2", "--report", str(report)]
        assert main(_cpu_run(tmp_path, tiny_weights, out, *extra)) == 0
        assert json.loads(report.read_text())["settings"]["speed"]["backend"] == backend
        images[backend] = nib.load(out / "c0-t2f.nii.gz").get_fdata()
    reference = images["torch"]
    rms = np.sqrt(np.mean((images["openvino"] - reference) ** 2)) / np.sqrt(np.mean(reference**2))
    assert rms < 1e-3, rms  # fp32 in both: only the kernels' rounding differs
