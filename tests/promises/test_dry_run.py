"""``--dry-run``: the cases, the contrast each lacks, the output names, the checkpoints and an estimate of
the batch's time, with nothing written (the output folder is not even created) and no input volume
loaded into the model; a setup a run would refuse is refused the same way (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from brasyn.commands.cli import DEFAULT_WEIGHTS, main
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import Synthesizer
from tests.helpers import make_case

CPU = ["--device", "cpu", "--no-progress"]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    make_case(tmp_path / "in", "caseA", shape=(32, 32, 32), seed=1)  # lacks t2f
    make_case(tmp_path / "in", "caseB", contrasts=("t1n", "t2w", "t2f"), shape=(32, 32, 32), seed=2)
    return tmp_path / "in"


@pytest.fixture()
def no_model_input(monkeypatch):
    """Any attempt to load a case or run the sampler fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run loaded an input or sampled")

    monkeypatch.setattr(Synthesizer, "load", refuse)
    monkeypatch.setattr(Synthesizer, "process", refuse)
    monkeypatch.setattr(DiffusionPredictor, "predict", refuse)


def test_dry_run_prints_the_plan_and_writes_nothing(inputs, tmp_path, tiny_weights, capsys, no_model_input):
    before = _tree(inputs)
    out, report = tmp_path / "out", tmp_path / "reports" / "report.json"
    argv = ["--input", str(inputs), "--output", str(out), "--weights", str(tiny_weights), *CPU]
    code = main([*argv, "--report", str(report), "--sampler", "ddim", "--steps", "7", "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0
    assert not out.exists() and not report.parent.exists()  # the output folder is not even created
    assert _tree(inputs) == before
    assert (
        f"caseA: lacks t2f, write -> {out / 'caseA-t2f.nii.gz'}; checkpoint {tiny_weights / 't2f.pt'}"
        in printed
    )
    assert (
        f"caseB: lacks t1c, write -> {out / 'caseB-t1c.nii.gz'}; checkpoint {tiny_weights / 't1c.pt'}"
        in printed
    )
    assert f"weights: {tiny_weights}" in printed
    (estimate,) = [line for line in printed.splitlines() if line.startswith("estimated time:")]
    assert "for 2 case(s)" in estimate and "an estimate" in estimate and "7 ddim steps" in estimate


def test_dry_run_leaves_an_existing_output_folder_as_it_was(inputs, tmp_path, tiny_weights, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "caseA-t2f.nii.gz.tmp-stale").write_bytes(b"half")  # a run would clean this up
    before = _tree(out)
    argv = ["--input", str(inputs), "--output", str(out), "--weights", str(tiny_weights), *CPU, "--dry-run"]
    assert main([*argv, "--target", "t2f"]) == 0
    assert _tree(out) == before
    printed = capsys.readouterr().out
    assert "caseA: lacks t2f, write" in printed
    assert "caseB: fail; it lacks t1c and already holds t2f" in printed  # as the run would say
    assert "for 1 case(s)" in printed


def test_dry_run_tells_a_kept_output_from_one_to_write(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    folders = ["--input", str(inputs), "--output", str(out)]
    linear = [*folders, "--method", "linear", "--weights", str(DEFAULT_WEIGHTS)]
    assert main([*linear, *CPU]) == 0
    (out / "caseB-t1c.nii.gz").unlink()
    capsys.readouterr()
    assert main([*linear, *CPU, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "caseA: lacks t2f, keep" in printed
    assert "caseB: lacks t1c, write" in printed
    assert "no estimate for 1 case(s)" in printed  # a baseline: no forward to time
    assert not (out / "caseB-t1c.nii.gz").exists()


def test_dry_run_refuses_an_output_under_a_file_like_a_run(inputs, tmp_path, tiny_weights, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = ["--input", str(inputs), "--output", str(blocker / "out"), "--weights", str(tiny_weights), *CPU]
    assert main([*argv, "--dry-run"]) == 2
    assert main(argv) == 2  # the run refuses it too
    assert blocker.read_text() == "x"


def test_dry_run_refuses_a_missing_input_and_creates_no_output(tmp_path, tiny_weights):
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "nowhere"), "--output", str(out), "--weights", str(tiny_weights)]
    assert main([*argv, *CPU, "--dry-run"]) == 2
    assert not out.exists()


def test_dry_run_names_the_missing_checkpoint_of_a_case(inputs, tmp_path, tiny_weights, capsys):
    argv = ["--input", str(inputs), "--output", str(tmp_path / "out"), *CPU, "--dry-run"]
    assert main([*argv, "--weights", str(tiny_weights / "t2f.pt")]) == 0
    printed = capsys.readouterr().out
    assert "caseA: lacks t2f, write" in printed
    (line,) = [line for line in printed.splitlines() if "caseB" in line]
    assert "lacks t1c, fail" in line and "give the weights folder" in line
    assert "for 1 case(s)" in printed
