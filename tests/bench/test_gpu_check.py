"""The GPU check runs end to end at tiny sizes on the CPU, so it cannot rot between GPU slots."""

from __future__ import annotations

import json

import pytest

from brasyn.bench.gpu_parts import Budget, Sizes
from brasyn.bench.gpu_runs import fastest_passing
from brasyn.commands import bench

PARTS = ("environment", "correctness", "denoiser", "case", "batch", "training")


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu")
    assert bench.main(["gpu", "--out", str(out), "--quick", "--device", "cpu"]) == 0
    report = json.loads((out / "gpu.json").read_text())
    report["_markdown"] = (out / "gpu.md").read_text()
    return report


@pytest.mark.slow
def test_quick_writes_every_part_with_figures_or_a_reason(quick):
    assert quick["quick"] is True and quick["elapsed_s"] <= quick["budget_s"] + 30
    for part in PARTS:
        assert part in quick and "failed" not in str(quick[part].get("skipped", "")), part
    assert quick["environment"]["torch"] and quick["environment"]["device_name"] == "cpu"


@pytest.mark.slow
def test_quick_checks_the_golden_numbers_on_the_device(quick):
    correct = quick["correctness"]
    assert correct["fp32"]["passed"] and correct["fp32"]["error"] <= 1e-4
    assert correct["bf16"]["tolerance"] == 5e-2 and "relative" in correct["bf16"]["error_kind"]
    assert correct["tf32"]["skipped"]  # CUDA only
    assert correct["dpmpp_cpu_vs_device"]["passed"]


@pytest.mark.slow
def test_quick_times_the_denoiser_variants_and_counts_their_flops(quick):
    forward = quick["denoiser"]
    assert forward["tflop_per_forward"] > 0
    for name in ("fp32", "bf16", "bf16_channels_last"):
        assert forward[name]["forward_ms"] > 0 and forward[name]["tflops"] > 0, name
    for name in ("tf32", "bf16_compile"):  # CUDA only; a minutes-long compilation on a CPU
        assert forward[name]["forward_ms"] is None and forward[name]["skipped"], name


@pytest.mark.slow
def test_quick_runs_a_case_a_batch_and_training_through_the_real_code(quick):
    case = quick["case"]
    for key, steps in (("ddpm", 5), ("dpmpp_2m", 3)):
        assert case[key]["steps"] == steps
        assert set(case[key]["phases_s"]) == {"load", "prepare", "sample", "restore", "write"}
    batch = quick["batch"]
    assert batch["read_ahead"]["written"] == batch["one_by_one"]["written"] == 4
    training = quick["training"]
    assert training["steps_per_s"] > 0 and training["loader_samples_per_s"] > 0
    assert "| fp32 |" in quick["_markdown"] and "One case through the batch runner" in quick["_markdown"]


def test_a_part_that_does_not_fit_the_budget_is_skipped_with_the_reason():
    budget = Budget(10.0)
    assert budget.refuse(5.0, "x") is None
    reason = budget.refuse(60.0, "1000 ddpm steps of one case")
    assert "1000 ddpm steps of one case would take about 60 s" in reason
    assert Sizes.for_run(False).ddpm_steps == 1000 and Sizes.for_run(False).case == (240, 240, 155)


def test_the_case_runs_in_the_fastest_variant_whose_numbers_passed():
    correct = {"tf32": {"passed": True}, "bf16": {"passed": False}}
    forward = {"fp32": {"forward_ms": 10.0}, "tf32": {"forward_ms": 6.0}, "bf16": {"forward_ms": 3.0}}
    assert fastest_passing(correct, forward)[0] == "tf32"
    correct["bf16"]["passed"] = True
    assert fastest_passing(correct, forward)[0] == "bf16"
