import json
import time

import torch

from brasyn.bench import speed
from brasyn.commands import bench
from tests.helpers import fill, mounted_tmpfs

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
    started = time.perf_counter()
    assert bench.main([*TINY, "--precision", "bf16", "--sampler", "ddpm", "--steps", "2"]) == 0
    wall_ms = (time.perf_counter() - started) * 1000
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
    # measured, not made up: the case's phases and the forwards timed before them fit in the command's
    # own wall time
    timed_before = sum(printed[key]["runs"][0] for key in ("forward_ms", "ddpm_step_ms"))
    assert timed_before + sum(case["phases_ms"].values()) < wall_ms
    assert case["total_ms"] < wall_ms


def test_bench_refuses_steps_outside_the_chain(capsys):
    assert bench.main(["--config", "tiny", "--shape", "32", "32", "32", "--steps", "0"]) == 2
    assert "--steps: expected a whole number from 1 to 1000" in capsys.readouterr().err


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


def test_the_end_to_end_case_runs_through_the_batch_runner_and_reports_its_timings(monkeypatch, capsys):
    """The case is timed as users run it: one call of the batch runner, whose own phase timings are
    the ones printed (in milliseconds)."""
    from brasyn.inference import batch

    seen = []
    real = batch.run_batch

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(speed, "run_batch", spy)
    assert bench.main([*TINY, "--sampler", "x0"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    # the log says what runs, and keeps quiet about the benchmark's own throwaway weights
    assert "end to end, x0 (one prediction)" in captured.err and "RANDOM" not in captured.err
    (result,) = seen[0].results
    assert result.status == "written"
    assert printed["case"]["phases_ms"] == {k: v * 1e3 for k, v in result.phases.items()}
    assert printed["case"]["model_shape"] == result.model_shape == [32, 32, 32]


def test_bench_and_the_main_command_share_the_speed_flags_and_defaults():
    from brasyn.commands.cli import build_parser

    ours, theirs = bench.build_parser().parse_args([]), build_parser().parse_args([])
    for key in ("precision", "channels_last", "tf32", "cudnn_benchmark", "compile"):
        assert getattr(ours, key) == getattr(theirs, key), key
    assert bench.build_parser().parse_args(["--no-channels-last"]).channels_last is False


def test_bench_refuses_a_json_file_it_cannot_write_before_measuring(tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr(bench, "run", lambda *args: ran.append(args) or {"measured": 1})
    with mounted_tmpfs(tmp_path / "ro", read_only=True) as read_only:
        code = bench.main([*TINY, "--no-case", "--json", str(read_only / "bench.json")])
    assert code == 2 and not ran
    err = capsys.readouterr().err
    assert f"argument --json: cannot write {read_only / 'bench.json'}: Read-only file system" in err
    assert "Traceback" not in err


def test_bench_json_on_a_full_disk_is_a_sentence_and_no_part_of_a_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "run", lambda *args: {"measured": list(range(20000))})
    with mounted_tmpfs(tmp_path / "small", size="64k") as small:
        fill(small)
        code = bench.main([*TINY, "--no-case", "--json", str(small / "bench.json")])
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
    assert code == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["measured"][-1] == 19999
    assert "No space left on device; the JSON printed above is the whole result" in captured.err
