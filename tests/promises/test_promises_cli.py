"""What the README promises about the command line, each checked where breaking it would show: flags that
reach the run (`--naming`, `--eta`, `-v`, `--version`), every MLCube parameters key, the `/weights`
default, `--device auto` choosing the GPU with the most free memory, the report for every sampler and
method, SIGTERM forwarded to `--devices` workers, and the demo's printed scores."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import nibabel as nib
import pytest
import torch

import brasyn.commands.cli
import brasyn.common.runtime
from brasyn import __version__
from brasyn.commands.cli import DEFAULT_WEIGHTS, _mlcube_arguments, build_parser, main
from brasyn.commands.example import EXAMPLE_CASE
from brasyn.common.runtime import select_device
from brasyn.evaluate.metrics import score
from brasyn.weights.store import init_random
from tests.helpers import make_case

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())
LINEAR = ["--method", "linear", "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu", "--no-progress"]


def _inputs(tmp_path: Path, **kwargs) -> Path:
    make_case(tmp_path / "in", "BraTS-GLI-00001-000", shape=(32, 32, 32), seed=1, **kwargs)
    return tmp_path / "in"


# --- flags that must reach the run ------------------------------------------------------------------


def test_naming_brats2023_names_the_output_by_the_folder_whatever_the_inputs_say(tmp_path):
    names = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2"}
    case = tmp_path / "in" / "BraTS2021_00000"
    for m, token in names.items():
        make_case(tmp_path / "tmp", "x", contrasts=(m,), shape=(32, 32, 32))
        case.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tmp" / "x" / f"x-{m}.nii.gz").rename(case / f"BraTS2021_00000_{token}.nii.gz")
    args = ["--input", str(tmp_path / "in"), *LINEAR]
    assert main([*args, "--output", str(tmp_path / "as-input")]) == 0
    assert main([*args, "--output", str(tmp_path / "brats"), "--naming", "brats2023"]) == 0
    assert [p.name for p in (tmp_path / "as-input").iterdir()] == ["BraTS2021_00000_flair.nii.gz"]
    assert [p.name for p in (tmp_path / "brats").iterdir()] == ["BraTS2021_00000-t2f.nii.gz"]


def test_eta_reaches_the_sampler_and_the_report(tmp_path, tiny_weights):
    inputs = _inputs(tmp_path)
    outputs = {}
    for eta in ("0", "1"):
        report = tmp_path / f"report-{eta}.json"
        args = ["--input", str(inputs), "--output", str(tmp_path / eta), "--weights", str(tiny_weights)]
        fast = ["--sampler", "ddim", "--steps", "3", "--device", "cpu", "--no-progress"]
        assert main([*args, *fast, "--eta", eta, "--report", str(report)]) == 0
        assert json.loads(report.read_text())["settings"]["eta"] == float(eta)
        outputs[eta] = nib.load(tmp_path / eta / "BraTS-GLI-00001-000-t2f.nii.gz").get_fdata()
    # eta 1 adds the ancestral noise back: the same seed gives another image
    assert abs(outputs["0"] - outputs["1"]).max() > 1e-3


def test_v_shows_the_debug_log_and_its_absence_hides_it(tmp_path, capsys):
    inputs = _inputs(tmp_path)
    (inputs / "notes.txt").write_text("not a case")  # skipped with a debug line
    assert main(["--input", str(inputs), "--output", str(tmp_path / "a"), *LINEAR]) == 0
    quiet = capsys.readouterr().err
    assert main(["--input", str(inputs), "--output", str(tmp_path / "b"), *LINEAR, "-v"]) == 0
    loud = capsys.readouterr().err
    assert " INFO " in quiet and " DEBUG " not in quiet
    assert " DEBUG " in loud and "notes.txt" in loud


def test_version_prints_the_package_version_and_exits_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"brasyn {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)


# --- the MLCube parameters file ---------------------------------------------------------------------

PARAMETERS = {
    "sampler": ("ddim", "--sampler"),
    "steps": ("7", "--steps"),
    "seed": ("5", "--seed"),
    "draws": ("3", "--draws"),
    "device": ("cpu", "--device"),
    "eta": ("0.5", "--eta"),
    "naming": ("brats2023", "--naming"),
    "target": ("flair", "--target"),
    "method": ("linear", "--method"),
    "precision": ("bf16", "--precision"),
    "backend": ("torch", "--backend"),
    "grid_of": ("t1ce", "--grid-of"),
    "map": ("t1c=T1_MPRAGE_post", "--map"),
}


def test_every_mlcube_parameters_key_sets_what_its_flag_sets(tmp_path):
    from brasyn.commands.options import MLCUBE_PARAMETERS, contrast_mapping

    assert set(PARAMETERS) == set(MLCUBE_PARAMETERS)
    path = tmp_path / "parameters.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, (value, _) in PARAMETERS.items()))
    common = ["--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")]
    by_file = vars(_mlcube_arguments([*common, "--parameters_file", str(path)]))
    by_flags = vars(
        build_parser().parse_args([a for value, flag in PARAMETERS.values() for a in (flag, value)])
    )
    defaults = vars(build_parser().parse_args([]))
    # --map may be given several times (a list), the file's map is one: compare the rules they make
    for given in (by_file, by_flags, defaults):
        given["map"] = contrast_mapping(argparse.Namespace(map=given["map"]))
    for key in PARAMETERS:
        assert by_file[key] == by_flags[key] != defaults[key], key
    for key in set(defaults) - set(PARAMETERS) - {"input", "output", "verbose"}:
        assert by_file[key] == defaults[key], key  # nothing else is changed by the file


def test_mlcube_parameters_reach_the_run(tmp_path):
    """A complete case, target and naming from the file: the output says both were applied."""
    make_case(tmp_path / "in", "Px", contrasts=("t1n", "t1c", "t2w", "t2f"), shape=(32, 32, 32))
    path = tmp_path / "parameters.yaml"
    path.write_text("method: linear\ndevice: cpu\ntarget: t1ce\nnaming: brats2023\n")
    args = ["--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")]
    assert main(["infer", *args, "--weights", str(DEFAULT_WEIGHTS), "--parameters_file", str(path)]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["Px-t1c.nii.gz"]


# --- the weights default ----------------------------------------------------------------------------


def test_weights_mounted_at_slash_weights_are_the_default_and_an_empty_mount_is_not(tmp_path, monkeypatch):
    mounted = tmp_path / "weights"
    monkeypatch.setattr(brasyn.commands.cli, "MOUNTED_WEIGHTS", mounted)
    monkeypatch.delenv("BRASYN_WEIGHTS", raising=False)
    inputs = _inputs(tmp_path)
    base = ["--input", str(inputs), "--sampler", "x0", "--device", "cpu", "--no-progress"]

    mounted.mkdir()
    report = tmp_path / "empty.json"
    assert main([*base, "--output", str(tmp_path / "a"), "--report", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert Path(saved["weights"]) == DEFAULT_WEIGHTS and saved["weights_quality"] == "demo"

    init_random(mounted, "tiny", seed=0)
    report = tmp_path / "mounted.json"
    assert main([*base, "--output", str(tmp_path / "b"), "--report", str(report)]) == 0
    saved = json.loads(report.read_text())
    assert Path(saved["weights"]) == mounted and saved["weights_quality"] == "random"


# --- --device auto ----------------------------------------------------------------------------------


def _fake_gpus(monkeypatch, free_gib: list[float]) -> None:
    """Torch sees len(free_gib) GPUs; NVML reports their free memory by UUID."""
    uuids = [f"GPU-{i:08d}-0000-0000-0000-000000000000" for i in range(len(free_gib))]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_gib))
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: types.SimpleNamespace(uuid=uuids[i][4:], name=f"Fake GPU {i}"),
    )
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetHandleByUUID = lambda uuid: uuids.index(uuid)
    nvml.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(free=int(free_gib[handle] * 2**30))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("free_gib", "expected"), [([10.0, 70.0, 40.0], 1), ([5.0, 5.0, 120.0], 2), ([30.0, 30.0], 0)]
)
def test_device_auto_takes_the_visible_gpu_with_the_most_free_memory(monkeypatch, free_gib, expected):
    _fake_gpus(monkeypatch, free_gib)
    assert select_device("auto") == torch.device("cuda", expected)
    assert brasyn.common.runtime.pick_gpu(brasyn.common.runtime._gpus_by_free_memory()).index == expected


# --- the report -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "sampler", "steps", "method"),
    [
        (["--sampler", "ddpm", "--steps", "2"], "ddpm", 2, "diffusion"),
        (["--sampler", "ddim", "--steps", "2"], "ddim", 2, "diffusion"),
        (["--sampler", "dpm++2m", "--steps", "2"], "dpm++2m", 2, "diffusion"),
        (["--sampler", "x0"], "x0", 1, "diffusion"),  # one prediction, whatever the default --steps
        (["--method", "nearest"], None, None, "nearest"),  # a baseline has no sampler or steps to claim
        (["--method", "linear", "--weights", str(DEFAULT_WEIGHTS)], None, None, "linear"),
    ],
)
def test_the_report_of_every_sampler_and_method_says_what_ran(
    tmp_path, tiny_weights, extra, sampler, steps, method
):
    import jsonschema

    inputs = _inputs(tmp_path)
    report = tmp_path / "report.json"
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--weights", str(tiny_weights)]
    assert main([*args, "--device", "cpu", "--no-progress", "--report", str(report), *extra]) == 0
    saved = json.loads(report.read_text())
    jsonschema.validate(saved, SCHEMA, format_checker=jsonschema.FormatChecker())
    settings = saved["settings"]
    assert (settings.get("sampler"), settings.get("steps"), settings["method"]) == (sampler, steps, method)
    (case,) = saved["cases"]
    assert case["status"] == "written" and Path(case["output"]).name == "BraTS-GLI-00001-000-t2f.nii.gz"
    assert set(case["phases"]) == {"load", "prepare", "sample", "restore", "write"}
    assert case["model_shape"] and all(n > 0 for n in case["model_shape"])
    assert saved["weights_quality"] == (None if method != "diffusion" else "random")


# --- --devices and SIGTERM --------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


@pytest.mark.slow
def test_sigterm_to_a_devices_run_stops_its_workers_keeps_finished_cases_and_exits_143(
    tmp_path, tiny_weights
):
    inputs = tmp_path / "in"
    for i in range(6):
        make_case(inputs, f"c{i}", shape=(32, 32, 32), seed=i)
    output = tmp_path / "out"
    cmd = [sys.executable, "-m", "brasyn", "--input", str(inputs), "--output", str(output)]
    cmd += ["--weights", str(tiny_weights), "--sampler", "ddim", "--steps", "60", "--no-progress"]
    cmd += ["--devices", "2", "--device", "cpu", "--threads", "1"]
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    workers: list[int] = []
    try:
        # wait (no time limit asserted: the machine may be slow) for the first finished case
        while parent.poll() is None and not any(p.name.endswith("-t2f.nii.gz") for p in output.glob("c*")):
            workers = _children(parent.pid) or workers
            time.sleep(0.05)
        workers = _children(parent.pid) or workers
        assert parent.poll() is None, parent.communicate()[0]
        assert len(workers) == 2
        parent.send_signal(signal.SIGTERM)
        log, _ = parent.communicate(timeout=300)
    finally:
        for pid in [parent.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert parent.returncode == 143, log
    assert not [pid for pid in workers if _alive(pid)]
    written = sorted(p.name for p in output.iterdir())
    # the finished cases are kept, the ones in progress discarded, and nothing partial is left
    assert written and len(written) < 6 and all(re.fullmatch(r"c\d-t2f\.nii\.gz", n) for n in written)
    for name in written:
        assert nib.load(output / name).get_fdata().max() > 0


# --- the demo ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_prints_the_scores_of_its_output_against_the_real_flair(shared_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--method", "linear", "--weights", str(DEFAULT_WEIGHTS)]) == 0
    err = capsys.readouterr().err
    found = re.search(rf"{EXAMPLE_CASE} t2f: SSIM ([0-9.]+), PSNR ([0-9.]+) dB against the real image", err)
    assert found, err
    prediction = nib.load(out / "output" / f"{EXAMPLE_CASE}-t2f.nii.gz").get_fdata()
    truth = nib.load(shared_dir / "data" / "real" / EXAMPLE_CASE / f"{EXAMPLE_CASE}-t2f.nii.gz").get_fdata()
    expected = score(prediction, truth)
    assert float(found.group(1)) == pytest.approx(expected["ssim"], abs=1e-4)
    assert float(found.group(2)) == pytest.approx(expected["psnr"], abs=1e-2)


# --- bench --official -------------------------------------------------------------------------------

STAND_IN = '''"""A stand-in for guided_diffusion/unet.py of a cwdm checkout: UNetModel takes the official keyword
arguments, accepts only the BraTS settings (REFERENCE.md), and computes the official architecture through
brasyn's Denoiser, which the golden fixture checks key for key and output for output."""
import torch
from brasyn.model.unet import Denoiser

BRATS = dict(image_size=224, attention_resolutions=(), dims=3, bottleneck_attention=False,
             resample_2d=False, additive_skips=False, resblock_updown=True, use_scale_shift_norm=False)
BUILT = []


class UNetModel(Denoiser):
    def __init__(self, *, in_channels, model_channels, out_channels, num_res_blocks, channel_mult,
                 num_groups, **settings):
        assert settings == BRATS, settings
        super().__init__(in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
                         channel_mult=tuple(channel_mult), num_res_blocks=num_res_blocks,
                         num_groups=num_groups)
        BUILT.append(self)

    def forward(self, x, timesteps):
        assert x.is_contiguous()  # the official code runs on contiguous tensors
        return super().forward(x, timesteps)

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)  # the official UNetModel.to returns None
'''


def test_bench_official_times_the_official_network_on_the_same_weights_and_input(
    tmp_path, monkeypatch, capsys
):
    import brasyn.commands.bench as bench

    checkout = tmp_path / "cwdm"
    (checkout / "guided_diffusion").mkdir(parents=True)
    (checkout / "guided_diffusion" / "__init__.py").write_text("")
    (checkout / "guided_diffusion" / "unet.py").write_text(STAND_IN)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("guided_diffusion", "guided_diffusion.unet"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    tiny_bench = ["--config", "tiny", "--shape", "32", "32", "32", "--device", "cpu", "--repeats", "1"]
    assert bench.main([*tiny_bench, "--warmup", "0", "--no-case", "--official", str(checkout)]) == 0
    printed = json.loads(capsys.readouterr().out)
    (built,) = sys.modules["guided_diffusion.unet"].BUILT
    assert sum(p.numel() for p in built.parameters()) == printed["parameters"]
    official = printed["official"]
    # the same weights and input: the outputs agree, and the network did not output zeros
    assert official["output_max_abs"] > 1e-3
    assert official["max_abs_difference"] <= 1e-5 * official["output_max_abs"]
    assert official["speedup"] == pytest.approx(
        official["forward_ms"]["median"] / printed["forward_ms"]["median"], rel=1e-9
    )
