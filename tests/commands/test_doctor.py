"""``brasyn doctor``: one line per check (ok / warning / problem and what to do), exit 1 on a problem.
GPU cases are checked with torch.cuda mocked: no figure here is a measured GPU's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import brasyn.common.health as health
from brasyn.commands.cli import main
from brasyn.common.health import Check, Status, driver_check, gpu_checks, shm_check, user_check
from brasyn.common.runtime import NvmlView
from brasyn.weights.bundled import BUNDLED_WEIGHTS
from tests.helpers import CONTAINER_UID, container_prefix


def _doctor(capsys, *argv: str) -> tuple[int, list[str]]:
    code = main(["doctor", "--device", "cpu", *argv])
    return code, capsys.readouterr().out.splitlines()


def _lines(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line.split(" ", 1)[1].lstrip().startswith(f"{name}:")]


def test_doctor_on_the_bundled_weights_says_demo_weights(tmp_path, capsys):
    code, lines = _doctor(capsys, "--weights", str(BUNDLED_WEIGHTS), "--output", str(tmp_path / "out"))
    for target in ("t1n", "t1c", "t2w", "t2f"):
        (line,) = _lines(lines, f"weights {target}")
        assert line.startswith("warning ") and "verified; demo weights" in line
        assert "fetch-official" in line  # what to do
    assert _lines(lines, "output")[0].startswith("ok ")
    assert not (tmp_path / "out").exists()  # the doctor writes nothing
    problems = [line for line in lines if line.startswith("problem")]
    assert code == (1 if problems else 0)
    assert lines[-1].endswith(f"{len(problems)} problem(s)")


def test_an_output_that_cannot_be_created_is_a_problem_and_exit_1(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, lines = _doctor(capsys, "--weights", str(BUNDLED_WEIGHTS), "--output", str(blocker / "out"))
    (line,) = _lines(lines, "output")
    assert line.startswith("problem ")
    assert f"{blocker} is a file, not a folder" in line and "-> " in line
    assert code == 1
    assert blocker.read_text() == "not a folder"


def test_random_weights_are_a_problem(tiny_weights, tmp_path, capsys):
    code, lines = _doctor(capsys, "--weights", str(tiny_weights), "--output", str(tmp_path))
    assert all(
        "RANDOM weights" in line and line.startswith("problem") for line in _lines(lines, "weights t1n")
    )
    assert _lines(lines, "baselines")[0].startswith("warning")  # init writes no baselines.json
    assert code == 1


def test_a_replaced_checkpoint_is_a_problem_naming_its_hash(tiny_weights, tmp_path, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    with open(weights / "t2w.pt", "ab") as f:
        f.write(b"\0")
    code, lines = _doctor(capsys, "--weights", str(weights), "--output", str(tmp_path / "out"))
    (line,) = _lines(lines, "weights t2w")
    assert line.startswith("problem ") and "MISMATCH" in line and "copy the original file back" in line
    assert code == 1


def test_a_folder_without_weights_is_a_problem(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, lines = _doctor(capsys, "--weights", str(tmp_path / "empty"), "--output", str(tmp_path / "out"))
    (line,) = _lines(lines, "weights")
    assert line.startswith("problem ") and "manifest.json" in line
    assert code == 1


def test_without_a_gpu_the_gpu_line_warns_that_the_cpu_is_slow(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (check,) = gpu_checks()
    assert check.status is Status.WARNING and "no CUDA GPU visible" in check.detail
    assert "--gpus all" in check.advice


def test_each_gpu_gets_its_line_with_free_memory_and_native_bf16(monkeypatch):
    gib = 2**30
    gpus = [("Ampere-like", 8, 0, 30 * gib, 40 * gib), ("Volta-like", 7, 0, 1 * gib, 16 * gib)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(gpus))
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda i: types.SimpleNamespace(name=gpus[i][0], major=gpus[i][1], minor=gpus[i][2]),
    )
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (gpus[i][3], gpus[i][4]))
    first, second = gpu_checks()
    assert first.status is Status.OK
    assert "cuda:0 Ampere-like, 30.0 of 40.0 GiB free" in first.detail and "native bf16" in first.detail
    assert second.status is Status.WARNING  # 1 GiB free: others hold it
    assert "no native bf16" in second.detail and "1.0 of 16.0 GiB free" in second.detail


def test_a_driver_whose_gpus_this_torch_cannot_use_is_a_problem(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check = driver_check(NvmlView(gpus=1, driver="470.82", cuda=(11, 4)))
    assert check.status is Status.PROBLEM
    assert "470.82" in check.detail and "CUDA up to 11.4" in check.detail
    assert check.advice  # install a driver, rebuild, or --device cpu
    assert driver_check(None, read=False).status is Status.WARNING


def test_root_with_another_users_output_reports_the_switch_to_that_owner(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    if out.stat().st_uid == 0:
        os.chown(out, 4242, 4243)  # as root: an output folder another user owns
    monkeypatch.setattr(health.os, "getuid", lambda: 0)
    check = user_check(out)
    assert check.status is Status.OK
    assert f"the run switches to uid {out.stat().st_uid}, gid {out.stat().st_gid}, the owner of {out}" in (
        check.detail
    )
    if os.geteuid() == 0:  # (the real one: getuid is mocked) root's own folder: root writes it
        os.chown(out, 0, 0)
        check = user_check(out)
        assert check.status is Status.OK and "switches" not in check.detail


def test_a_small_dev_shm_is_a_warning(monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(health.shutil, "disk_usage", lambda path: usage(64 * 2**20, 0, 64 * 2**20))
    check = shm_check()
    assert check.status is Status.WARNING and "64 MiB" in check.detail and "--shm-size" in check.advice
    monkeypatch.setattr(health.shutil, "disk_usage", lambda path: usage(4 * 2**30, 0, 4 * 2**30))
    assert shm_check().status is Status.OK


def test_a_check_prints_as_one_line_with_what_to_do():
    line = Check("output", Status.PROBLEM, "cannot be created", "choose another").line()
    assert line == "problem output: cannot be created -> choose another"
    assert Check("torch", Status.OK, "torch 2").line() == "ok      torch: torch 2"


@pytest.mark.parametrize("spec", ["cuda:7"])
def test_a_device_that_cannot_be_had_is_a_problem(spec, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["doctor", "--device", spec, "--weights", str(BUNDLED_WEIGHTS), "--output", str(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    (line,) = _lines(lines, "device")
    assert line.startswith("problem ") and spec in line
    assert code == 1


def test_doctor_takes_the_runs_default_weights(monkeypatch, tmp_path, capsys, tiny_weights):
    monkeypatch.setenv("BRASYN_WEIGHTS", str(tiny_weights))
    monkeypatch.setenv("BRASYN_OUTPUT", str(tmp_path / "out"))
    code = main(["doctor", "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert str(tiny_weights) in _lines(lines, "weights")[0]
    assert str(tmp_path / "out") in _lines(lines, "output")[0]
    assert code == 1  # random weights
    assert not Path(tmp_path / "out").exists()


def test_as_the_container_uid_a_root_owned_output_is_a_problem(open_tmp):
    """The container's user (uid 4242, no passwd entry, no HOME) and an output folder root made with
    mode 755: the run could not write there, and the doctor says so."""
    prefix = container_prefix()
    if prefix is None:
        pytest.skip("switching to another uid (root with unshare and setpriv) is not possible here")
    out = open_tmp / "root-owned"
    out.mkdir(mode=0o755)
    out.chmod(0o755)
    command = [*prefix, sys.executable, "-m", "brasyn", "doctor", "--device", "cpu", "--output", str(out)]
    done = subprocess.run([*command, "--weights", str(BUNDLED_WEIGHTS)], capture_output=True, text=True)
    (line,) = _lines(done.stdout.splitlines(), "output")
    assert line.startswith("problem ") and f"not writable by this user (uid {CONTAINER_UID})" in line
    (user,) = _lines(done.stdout.splitlines(), "user")
    assert f"uid {CONTAINER_UID} (no passwd entry)" in user
    assert done.returncode == 1
