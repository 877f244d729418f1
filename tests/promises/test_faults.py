"""Faults and bad input in a batch beside a good case: each becomes a per-case error (or a refusal at
start-up) with a sentence that says what to do; the good case is written byte for byte as when it runs
alone, nothing partial or extra is left in the output folder, the input is untouched, the report is
written and valid, and the exit status is the documented one."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import brasyn.data.volumes
from brasyn.commands.cli import DEFAULT_WEIGHTS, main
from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.weights.store import init_random
from tests.helpers import STACKS_ON_ABORT, communicate_or_show_stacks, make_case, save_nifti

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())
GOOD = "BraTS-GLI-00001-000"
GOOD_OUT = f"{GOOD}-t2f.nii.gz"
LINEAR = ["--method", "linear", "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu", "--no-progress"]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _run(inputs: Path, output: Path, report: Path, *extra: str) -> tuple[int, dict]:
    code = main(["--input", str(inputs), "--output", str(output), "--report", str(report), *LINEAR, *extra])
    return code, json.loads(report.read_text()) if report.exists() else {}


@pytest.fixture(scope="module")
def good_alone(tmp_path_factory) -> bytes:
    root = tmp_path_factory.mktemp("good")
    make_case(root / "in", GOOD, seed=1)
    assert main(["--input", str(root / "in"), "--output", str(root / "out"), *LINEAR]) == 0
    return (root / "out" / GOOD_OUT).read_bytes()


def _batch(tmp_path: Path) -> Path:
    inputs = tmp_path / "in"
    make_case(inputs, GOOD, seed=1)
    return inputs


def _check(output: Path, report: dict, good_alone: bytes, expected: set[str]) -> None:
    import jsonschema

    assert {p.name for p in output.iterdir()} == expected  # nothing partial, nothing extra
    if GOOD_OUT in expected:
        assert (output / GOOD_OUT).read_bytes() == good_alone
    jsonschema.validate(report, SCHEMA)


def _failed(report: dict, case: str) -> str:
    (row,) = [r for r in report["cases"] if r["case"] == case]
    assert row["status"] == "failed"
    return row["message"]


# --- crashes -----------------------------------------------------------------------------------------


def test_an_os_error_while_writing_fails_that_case_and_the_batch_goes_on(tmp_path, good_alone, monkeypatch):
    inputs = _batch(tmp_path)
    make_case(inputs, "BraTS-GLI-00002-000", seed=2)
    before = _digest(inputs)
    real_replace = os.replace

    def disk_full(src, dst, *args, **kwargs):
        if "BraTS-GLI-00002-000" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(brasyn.data.volumes.os, "replace", disk_full)
    code, report = _run(inputs, tmp_path / "out", tmp_path / "report.json")
    assert code == 1
    message = _failed(report, "BraTS-GLI-00002-000")
    assert "cannot write BraTS-GLI-00002-000-t2f.nii.gz" in message
    assert "No space left on device" in message and "free space and rerun" in message
    _check(tmp_path / "out", report, good_alone, {GOOD_OUT})
    assert _digest(inputs) == before


def test_the_output_folder_removed_mid_run_fails_the_case_with_a_sentence(tmp_path, good_alone, monkeypatch):
    import brasyn.inference.synthesize

    inputs = _batch(tmp_path)
    output = tmp_path / "out"
    real_write = brasyn.inference.synthesize.write_volume

    def vanish(data, reference, path, description="", record=None):
        for p in path.parent.iterdir():
            p.unlink()
        path.parent.rmdir()
        return real_write(data, reference, path, description, record)

    monkeypatch.setattr(brasyn.inference.synthesize, "write_volume", vanish)
    code, report = _run(inputs, output, tmp_path / "report.json")
    assert code == 1
    assert "the output folder disappeared during the run" in _failed(report, GOOD)


def test_two_runs_into_one_output_folder_do_not_remove_each_others_files(tmp_path, good_alone):
    """Two real processes, each with its own cases, write into one folder at the same time."""
    runs = []
    for i in range(2):
        inputs = tmp_path / f"in{i}"
        for j in range(3):
            make_case(inputs, f"BraTS-GLI-0{i}{j}00-000", seed=10 * i + j, shape=(64, 64, 48))
        cmd = [sys.executable, str(ROOT / "entrypoint.py"), "--input", str(inputs)]
        cmd += ["--output", str(tmp_path / "out"), *LINEAR]
        runs.append(subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(f"BraTS-GLI-0{i}{j}00-000-t2f.nii.gz" for i in range(2) for j in range(3))


def test_a_live_runs_temporary_survives_another_run_and_a_dead_runs_does_not(tmp_path, good_alone):
    """A real second process holds a temporary file in the output folder, as a run does mid-write."""
    inputs, output = _batch(tmp_path), tmp_path / "out"
    output.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from brasyn.data.volumes import temporary_prefix; "
            f"p = Path({str(output)!r}) / (temporary_prefix() + 'x.tmp'); p.write_bytes(b'partial'); "
            "print(p, flush=True); time.sleep(120)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        temporary = Path(holder.stdout.readline().strip())
        assert temporary.exists()
        code, report = _run(inputs, output, tmp_path / "report.json")
        assert code == 0 and temporary.exists()  # another live run's file is not "left behind"
    finally:
        holder.kill()
        holder.wait()
    code, report = _run(inputs, output, tmp_path / "report.json", "--overwrite")
    assert code == 0 and not temporary.exists()  # its run is dead now: the rerun cleans up
    _check(output, report, good_alone, {GOOD_OUT})


def test_a_case_folder_whose_name_is_not_utf8_runs(tmp_path, good_alone):
    inputs = _batch(tmp_path)
    latin1 = Path(os.fsdecode(os.fsencode(inputs) + b"/caf\xe9"))
    for i, m in enumerate(("t1n", "t1c", "t2w")):
        save_nifti(latin1 / f"{m}.nii.gz", phantom(seed=i, scale=200.0 * (i + 1)))
    code, report = _run(inputs, tmp_path / "out", tmp_path / "report.json")
    assert code == 0, report
    written = {os.fsencode(p.name) for p in (tmp_path / "out").iterdir()}
    assert written == {GOOD_OUT.encode(), b"caf\xe9-t2f.nii.gz"}
    assert (tmp_path / "out" / GOOD_OUT).read_bytes() == good_alone
    assert report["summary"] == {"written": 2, "skipped": 0, "failed": 0}


@pytest.fixture(scope="module")
def slow_case(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("slow")
    make_case(root / "in", "slow", seed=1, shape=(96, 96, 64))
    init_random(root / "weights", "tiny", targets=["t2f"])
    return root / "in", root / "weights"


def _started(inputs: Path, weights: Path, output: Path, report: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "entrypoint.py"), "--input", str(inputs), "--output", str(output)]
    cmd += ["--weights", str(weights), "--sampler", "ddpm", "--steps", "1000", "--device", "cpu"]
    proc = subprocess.Popen(
        [*cmd, "--report", str(report)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **STACKS_ON_ABORT},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, seen = time.time() + 120, ""
    while time.time() < deadline and "loaded t2f denoiser" not in seen:  # sampling starts (no bar in a pipe)
        seen += proc.stderr.read(1)
    return proc


@pytest.mark.parametrize(("first", "second", "gap", "code"), [
    (signal.SIGTERM, signal.SIGTERM, 0.005, 143),
    (signal.SIGTERM, signal.SIGTERM, 0.05, 143),
    (signal.SIGTERM, signal.SIGINT, 0.2, 143),
    (signal.SIGINT, None, 0.0, 130),
])  # fmt: skip
def test_a_second_stop_signal_is_ignored_and_the_report_is_written(
    tmp_path, slow_case, first, second, gap, code
):
    inputs, weights = slow_case
    report = tmp_path / "report.json"
    proc = _started(inputs, weights, tmp_path / "out", report)
    proc.send_signal(first)
    if second is not None:
        time.sleep(gap)
        proc.send_signal(second)
    _, err = communicate_or_show_stacks(proc, 60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    written = json.loads(report.read_text())
    assert written["interrupted"] is True and written["summary"]["written"] == 0
    assert list((tmp_path / "out").iterdir()) == []


def test_mlcube_naming_outside_its_choices_exits_2_naming_the_file_and_key(tmp_path, capsys):
    make_case(tmp_path / "in", GOOD, seed=1)
    params = tmp_path / "parameters.yaml"
    params.write_text("naming: bids\n")
    args = ["infer", "--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")]
    assert main([*args, "--parameters_file", str(params)]) == 2
    err = capsys.readouterr().err
    assert f"{params}: naming: 'bids' is not valid" in err and "brats2023" in err and "Traceback" not in err


@pytest.mark.parametrize("where", ["under-a-file", "a-folder", "read-only-parent"])
def test_an_unusable_report_path_is_refused_before_any_case_runs(tmp_path, capsys, where):
    inputs = _batch(tmp_path)
    (tmp_path / "file").write_text("x")
    report = {
        "under-a-file": tmp_path / "file" / "report.json",
        "a-folder": tmp_path,
        "read-only-parent": tmp_path / "ro" / "report.json",
    }[where]
    if where == "read-only-parent":
        (tmp_path / "ro").mkdir()
        os.chmod(tmp_path / "ro", 0o555)
        if os.access(tmp_path / "ro", os.W_OK):
            pytest.skip("root writes into a read-only folder; the other two cases cover the check")
    code = main(["--input", str(inputs), "--output", str(tmp_path / "out"), "--report", str(report), *LINEAR])
    assert code == 2
    err = capsys.readouterr().err
    assert "report" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# --- wrong output, silently ----------------------------------------------------------------------------


def _bad_contrast(inputs: Path, case: str, data: np.ndarray, affine: np.ndarray = BRATS_AFFINE) -> None:
    make_case(inputs, case, ("t1n", "t1c"), seed=3)
    save_nifti(inputs / case / f"{case}-t2w.nii.gz", data, affine)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("constant", "is constant (every voxel is 100): no image information; check the export"),
        ("negative", "has no positive voxel"),
        ("mostly-negative", "is mostly negative"),
        ("nan-affine", "NaN or infinite value in its orientation record"),
    ],
)
def test_contrasts_that_carry_no_usable_image_fail_their_case(tmp_path, good_alone, kind, words):
    inputs = _batch(tmp_path)
    image = phantom(seed=5, scale=400.0)
    affine = BRATS_AFFINE.copy()
    data = {
        "constant": np.full(image.shape, 100.0, np.float32),
        "negative": -image,
        "mostly-negative": np.where(image > 0, -image, 5.0).astype(np.float32),
        "nan-affine": image,
    }[kind]
    if kind == "nan-affine":
        affine[0, 3] = np.nan
    _bad_contrast(inputs, "BraTS-GLI-00003-000", data, affine)
    code, report = _run(inputs, tmp_path / "out", tmp_path / "report.json")
    assert code == 1
    message = _failed(report, "BraTS-GLI-00003-000")
    assert "BraTS-GLI-00003-000-t2w.nii.gz" in message and words in message
    _check(tmp_path / "out", report, good_alone, {GOOD_OUT})


def test_isolated_negative_values_from_interpolation_stay_allowed(tmp_path):
    inputs = tmp_path / "in"
    make_case(inputs, "c", ("t1n", "t1c"), seed=3)
    image = phantom(seed=5, scale=400.0)
    image[::7, ::7, ::7] = -3.0
    save_nifti(inputs / "c" / "c-t2w.nii.gz", image)
    assert main(["--input", str(inputs), "--output", str(tmp_path / "out"), *LINEAR]) == 0


def test_a_nan_affine_is_never_the_same_grid():
    from brasyn.data.volumes import Volume, grid_difference

    nan = BRATS_AFFINE.copy()
    nan[1, 3] = np.nan
    a = Volume(Path("a.nii.gz"), np.zeros((2, 2, 2)), BRATS_AFFINE, None)
    b = Volume(Path("b.nii.gz"), np.zeros((2, 2, 2)), nan, None)
    assert grid_difference(a, b) is not None and grid_difference(b, b) is not None


# --- names at the file-system limit -------------------------------------------------------------------


LONG = "L" * 255
"""A case folder name at the limit of a file name: the folder can exist, no file named after it can."""


def test_a_case_folder_name_at_the_file_system_limit_fails_that_case_alone(tmp_path, good_alone, capsys):
    inputs = _batch(tmp_path)
    make_case(inputs, LONG, seed=2, pattern="{m}.nii.gz")
    code, report = _run(inputs, tmp_path / "out", tmp_path / "report.json")
    assert code == 1
    message = _failed(report, LONG)
    assert "the case name is 255 bytes long" in message and "to at most 235 bytes" in message
    _check(tmp_path / "out", report, good_alone, {GOOD_OUT})
    assert "Traceback" not in capsys.readouterr().err


def test_prepare_skips_a_case_whose_name_no_cache_entry_can_hold_and_prepares_the_rest(tmp_path, capsys):
    from brasyn.commands.train import main as train_main

    data = tmp_path / "data"
    make_case(data, "good", ("t1n", "t1c", "t2w", "t2f"), shape=(32, 32, 32), seed=1)
    make_case(data, LONG, ("t1n", "t1c", "t2w", "t2f"), shape=(32, 32, 32), seed=2, pattern="{m}.nii.gz")
    cache = tmp_path / "cache"
    assert train_main(["prepare", "--data", str(data), "--cache", str(cache), "--workers", "1"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["good.json", "good.npy"]
    err = capsys.readouterr().err
    assert f"skipping {LONG}: the case name is 255 bytes long" in err and "Traceback" not in err


def test_a_single_case_out_name_past_the_file_system_limit_exits_2_naming_it(tmp_path, capsys):
    inputs = make_case(tmp_path, GOOD, seed=1)
    out = tmp_path / ("O" * 252 + "-t2f.nii.gz")
    args = [f"--{m}={p}" for m, p in inputs.items()]
    assert main([*args, "--out", str(out), *LINEAR]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} holds a name of 263 bytes, more than the 255" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [GOOD]


# --- unclear messages --------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", ["nan", "inf", "-1", "1e6"])
def test_an_eta_outside_0_1_exits_2_at_start_up(tmp_path, capsys, eta):
    inputs = _batch(tmp_path)
    assert main(["--input", str(inputs), "--output", str(tmp_path / "out"), "--eta", eta]) == 2
    err = capsys.readouterr().err
    assert "--eta" in err and "from 0 to 1" in err


def test_unreadable_files_and_broken_links_are_named_as_such(tmp_path, good_alone, monkeypatch):
    inputs = _batch(tmp_path)
    make_case(inputs, "BraTS-GLI-00004-000", ("t1n", "t1c"), seed=4)
    os.symlink(tmp_path / "gone.nii.gz", inputs / "BraTS-GLI-00004-000" / "BraTS-GLI-00004-000-t2w.nii.gz")
    make_case(inputs, "BraTS-GLI-00005-000", ("t1n", "t1c"), seed=5)
    loop = inputs / "BraTS-GLI-00005-000" / "BraTS-GLI-00005-000-t2w.nii.gz"
    os.symlink(loop, loop)
    make_case(inputs, "BraTS-GLI-00006-000", seed=6)
    locked = inputs / "BraTS-GLI-00006-000" / "BraTS-GLI-00006-000-t2w.nii.gz"
    real_access = os.access
    # the suite runs as root, which reads everything: the permission check is what a uid 4242 would see
    monkeypatch.setattr(
        brasyn.data.volumes.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode)
    )
    code, report = _run(inputs, tmp_path / "out", tmp_path / "report.json")
    assert code == 1
    assert "is a symbolic link to" in _failed(report, "BraTS-GLI-00004-000")
    assert "which does not exist (or is a loop of links)" in _failed(report, "BraTS-GLI-00005-000")
    message = _failed(report, "BraTS-GLI-00006-000")
    assert f"cannot be read: permission denied (uid {os.getuid()}); make it readable" in message
    _check(tmp_path / "out", report, good_alone, {GOOD_OUT})


def test_an_input_that_is_a_file_is_named_as_a_file(tmp_path, capsys):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    assert main(["--input", str(tmp_path / "x.nii.gz"), "--output", str(tmp_path / "out"), *LINEAR]) == 2
    assert "is a file, not a folder; give the folder that holds the cases" in capsys.readouterr().err


# --- contract ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--report", "--extras"])
def test_report_and_previews_inside_the_input_are_refused(tmp_path, capsys, option):
    inputs = _batch(tmp_path)
    before = _digest(inputs)
    target = inputs / ("report.json" if option == "--report" else "previews")
    code = main(["--input", str(inputs), "--output", str(tmp_path / "out"), option, str(target), *LINEAR])
    assert code == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    assert _digest(inputs) == before and not target.exists()


@pytest.mark.parametrize(
    "extra",
    [
        ["--sampler", "ddpm", "--steps", "2"],
        ["--sampler", "ddim", "--steps", "2"],
        ["--sampler", "dpm++2m", "--steps", "2"],
        ["--sampler", "x0"],
        ["--method", "nearest"],
        ["--method", "linear", "--weights", str(DEFAULT_WEIGHTS)],
    ],
)
def test_reports_of_every_sampler_and_method_validate_against_the_schema(tmp_path, tiny_weights, extra):
    import jsonschema

    inputs = _batch(tmp_path)
    report = tmp_path / "report.json"
    args = ["--input", str(inputs), "--output", str(tmp_path / "out"), "--weights", str(tiny_weights)]
    assert main([*args, "--device", "cpu", "--no-progress", "--report", str(report), *extra]) == 0
    jsonschema.validate(json.loads(report.read_text()), SCHEMA)


def test_the_report_is_readable_by_others_as_the_umask_allows(tmp_path):
    inputs = _batch(tmp_path)
    previous = os.umask(0o022)
    try:
        code, _ = _run(inputs, tmp_path / "out", tmp_path / "report.json")
    finally:
        os.umask(previous)
    assert code == 0
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644


def test_written_files_keep_their_header_after_the_fault_checks(tmp_path, good_alone):
    """The new checks read the data only: a good case's header and bytes are as before."""
    inputs = _batch(tmp_path)
    code, report = _run(inputs, tmp_path / "out", tmp_path / "report.json")
    assert code == 0
    out = nib.load(tmp_path / "out" / GOOD_OUT)
    np.testing.assert_array_equal(out.affine, BRATS_AFFINE)
    _check(tmp_path / "out", report, good_alone, {GOOD_OUT})
