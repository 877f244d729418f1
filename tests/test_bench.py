import json

import torch

from brasyn import bench

TINY = ["--config", "tiny", "--shape", "32", "32", "32", "--device", "cpu", "--repeats", "1", "--warmup", "0"]


def test_bench_prints_timings_as_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main([*TINY, "--json", str(out), "--no-case"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["denoiser_input_shape"] == [1, 32, 16, 16, 16]
    for key in ("forward_ms", "ddim_step_ms", "dwt3_ms", "idwt3_ms"):
        assert printed[key]["median"] > 0
    assert printed["peak_rss_mib"] > 0
    assert "case" not in printed


def test_bench_times_a_whole_case_by_phase_with_the_chosen_sampler_and_precision(capsys):
    assert bench.main([*TINY, "--precision", "bf16", "--sampler", "ddpm", "--steps", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["precision"] == "bf16" and printed["sampler"] == "ddpm"
    assert printed["ddpm_step_ms"]["median"] > 0 and "ddim_step_ms" not in printed
    assert printed["torch"] == torch.__version__ and printed["threads"] == torch.get_num_threads()
    assert "cudnn" in printed and "cuda" in printed
    case = printed["case"]
    assert case["stored_shape"] == case["model_shape"] == [32, 32, 32]
    assert case["steps"] == 2 and case["model_load_ms"] > 0
    assert list(case["phases_ms"]) == ["load", "prepare", "sample", "restore", "write"]
    assert all(ms > 0 for ms in case["phases_ms"].values())
    assert case["total_ms"] == sum(case["phases_ms"].values())
    assert case["sample_ms_per_step"] == case["phases_ms"]["sample"] / 2


def test_bench_refuses_steps_outside_the_chain(capsys):
    assert bench.main(["--config", "tiny", "--shape", "32", "32", "32", "--steps", "0"]) == 2
    assert "--steps must be between 1 and 1000" in capsys.readouterr().err


def test_bench_refuses_a_shape_the_network_cannot_take(capsys):
    assert bench.main(["--config", "tiny", "--shape", "32", "32", "30"]) == 2
    assert "multiples of 32" in capsys.readouterr().err


def test_bench_refuses_an_official_folder_that_is_not_a_checkout(tmp_path, capsys):
    args = ["--config", "tiny", "--shape", "32", "32", "32", "--official", str(tmp_path)]
    assert bench.main(args) == 2
    assert "not a checkout of github.com/pfriedri/cwdm" in capsys.readouterr().err


def test_bench_times_the_fast_samplers(capsys):
    assert bench.main([*TINY, "--sampler", "dpm++2m", "--steps", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dpm++2m_step_ms"]["median"] > 0
    assert printed["case"]["steps"] == 3 and printed["case"]["precision"] == "fp32"
