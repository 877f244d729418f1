"""A GPU the driver sees but torch cannot use stops the run with the reason; a CPU fall-back says what it
will cost."""

from __future__ import annotations

import pytest
import torch

import brasyn.common.runtime
from brasyn.commands.cli import main
from brasyn.common.runtime import NvmlView, unusable_gpu_problem
from brasyn.weights.store import init_random
from tests.helpers import make_case


@pytest.fixture()
def case_and_weights(tmp_path):
    make_case(tmp_path / "in", "BraTS-GLI-00001-000", seed=1)
    init_random(tmp_path / "w", "tiny", targets=["t2f"])
    return tmp_path


def _run(root, *extra: str) -> int:
    args = ["--input", str(root / "in"), "--output", str(root / "out"), "--weights", str(root / "w")]
    return main([*args, "--sampler", "x0", "--no-progress", *extra])


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:0"])
def test_gpus_the_driver_sees_but_torch_cannot_use_stop_the_run(
    case_and_weights, monkeypatch, capsys, device
):
    monkeypatch.setattr(brasyn.common.runtime, "nvml_view", lambda: NvmlView(2, "535.104.05", (12, 2)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert _run(case_and_weights, "--device", device) == 2
    err = capsys.readouterr().err
    assert "the NVIDIA driver 535.104.05 sees 2 GPU(s) (it supports CUDA up to 12.2)" in err
    assert "needs CUDA 13.0" in err and "580 series or newer" in err
    assert "--build-arg TORCH_CUDA=cu128" in err and "--device cpu" in err
    assert not (case_and_weights / "out").exists() or not any((case_and_weights / "out").iterdir())


def test_an_explicit_cpu_still_runs_where_the_driver_sees_gpus(case_and_weights, monkeypatch):
    monkeypatch.setattr(brasyn.common.runtime, "nvml_view", lambda: NvmlView(2, "535.104.05", (12, 2)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert _run(case_and_weights, "--device", "cpu") == 0


def test_a_cpu_build_of_torch_and_a_driver_too_old_for_any_build_are_named():
    assert "this torch is a CPU build" in _problem(NvmlView(1, "550.54.15", (12, 4)), None)
    old = _problem(NvmlView(1, "470.82.01", (11, 4)), "12.8")
    assert "no build of brasyn runs on this driver" in old and "525 series" in old
    assert unusable_gpu_problem(NvmlView(0, "550.54.15", (12, 4))) is None  # no GPU: nothing to say
    assert unusable_gpu_problem(None) is None


def _problem(view: NvmlView, cuda: str | None) -> str:
    real = torch.version.cuda
    torch.version.cuda = cuda
    try:
        return unusable_gpu_problem(view) or ""
    finally:
        torch.version.cuda = real


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fall-back happens only without a GPU")
def test_the_cpu_fallback_warning_states_the_time_per_case(case_and_weights, monkeypatch, capsys):
    monkeypatch.setattr(brasyn.common.runtime, "nvml_view", lambda: None)
    assert _run(case_and_weights, "--device", "auto") == 0
    err = capsys.readouterr().err
    assert "on this CPU one BraTS-size case with x0, 1 steps takes about" in err
    assert "--sampler dpm++2m --steps 10" not in err  # x0 is quicker still: no advice to slow down
    assert _run(case_and_weights, "--device", "cpu", "--overwrite") == 0
    assert "takes about" not in capsys.readouterr().err  # asked for the CPU: no warning


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fall-back happens only without a GPU")
@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        (
            ("--sampler", "x0"),
            "on this CPU one BraTS-size case with x0, 1 steps takes about 2.6 h, the 4 cases to synthesise "
            "about 10.4 h (timed from one forward); run where a GPU is visible (docker run --gpus all)",
        ),
        pytest.param(
            ("--sampler", "dpm++2m", "--steps", "10"),
            "on this CPU one BraTS-size case with dpm++2m, 10 steps takes about 2.6 h, the 4 cases to "
            "synthesise about 10.4 h (timed from one forward); run where a GPU is visible (docker run --gpus all)",
            marks=pytest.mark.slow,  # ten model calls a case
        ),
        pytest.param(
            ("--sampler", "ddim", "--steps", "12"),
            "on this CPU one BraTS-size case with ddim, 12 steps takes about 2.6 h, the 4 cases to synthesise "
            "about 10.4 h (timed from one forward); for a quick result use --sampler dpm++2m --steps 10, or "
            "run where a GPU is visible (docker run --gpus all)",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_the_cpu_fallback_warning_adds_up_the_batch_and_advises_only_a_quicker_sampler(
    tmp_path, monkeypatch, capsys, sampler, expected
):
    from brasyn.inference.predictors import DiffusionPredictor

    for i in range(4):
        make_case(tmp_path / "in", f"c{i}", seed=i, shape=(32, 32, 32))
    init_random(tmp_path / "w", "tiny", targets=["t2f"])
    monkeypatch.setattr(brasyn.common.runtime, "nvml_view", lambda: None)
    # 2.6 h a case, as one timed forward of the official model says on a small CPU
    monkeypatch.setattr(DiffusionPredictor, "estimate_case_seconds", lambda self, target: 2.6 * 3600)
    args = [
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--weights",
        str(tmp_path / "w"),
    ]
    assert main([*args, *sampler, "--no-progress", "--device", "auto"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "on this CPU" in line]
    assert len(warnings) == 1 and warnings[0].endswith(expected), warnings
