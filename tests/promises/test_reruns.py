"""Reruns into a folder that already holds outputs: each output records the settings it was written with,
and a rerun keeps it only when they are this run's (or unknown, or with --resume-any)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest

from brasyn.commands.cli import main
from brasyn.data.phantom import phantom
from brasyn.data.provenance import differences, read_record
from brasyn.weights.store import WeightStore
from tests.helpers import make_case, save_nifti

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())
PREVIEW = ["--sampler", "x0"]
REAL = ["--sampler", "ddim", "--steps", "2"]
NAME = "c1-t2f.nii.gz"
LINEAR_WEIGHTS = ["--weights", str(ROOT / "weights")]
"""The bundled folder holds the linear fits (``baselines.json``)."""


@pytest.fixture
def job(tmp_path, tiny_weights):
    """One case; ``run(*flags, report=...)`` runs the main job into ``out`` and returns the report."""
    make_case(tmp_path / "in", "c1", shape=(32, 32, 32), seed=1)
    output = tmp_path / "out"

    def run(*flags: str, code: int = 0) -> dict:
        report = tmp_path / "report.json"
        base = ["--input", str(tmp_path / "in"), "--output", str(output), "--weights", str(tiny_weights)]
        assert main([*base, "--device", "cpu", "--no-progress", "--report", str(report), *flags]) == code
        data = json.loads(report.read_text())
        jsonschema.validate(data, SCHEMA)
        return data

    return output, run


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_preview_then_the_real_run_synthesises_again_and_a_third_run_keeps_it(job, tiny_weights, capsys):
    output, run = job
    run(*PREVIEW)
    preview = _sha(output / NAME)
    record = read_record(output / NAME)
    sha = WeightStore(tiny_weights).info("t2f").sha256
    assert record == {
        "method": "diffusion",
        "sampler": "x0",
        "steps": 1,
        "precision": "fp32",
        "weights": sha,
        "seed": 42,
        "draws": 1,
        "grid_of": None,
        "version": record["version"],
        "target": "t2f",
        "resampled": False,
    }
    assert (
        nib.load(output / NAME).header["descrip"].item().decode().endswith("t2f diffusion x0 1 steps seed 42")
    )

    capsys.readouterr()
    report = run(*REAL)
    err = capsys.readouterr().err
    (case,) = report["cases"]
    assert case["status"] == "written" and case["note"] == "replaced: settings differed"
    assert "replaced" in case["message"]
    assert "c1-t2f.nii.gz was written with sampler x0, steps 1; this run uses sampler ddim, steps 2: " in (
        err
    )
    assert "synthesising it again (--resume-any keeps it)" in err
    real = _sha(output / NAME)
    assert real != preview and read_record(output / NAME)["sampler"] == "ddim"

    report = run(*REAL, "--no-prefetch", "--precision", "fp32", "--seed", "42")  # same settings
    assert [(c["status"], c["note"]) for c in report["cases"]] == [("skipped", None)]
    assert "already exists with this run's settings" in report["cases"][0]["message"]
    assert _sha(output / NAME) == real

    report = run("--seed", "7", *REAL)
    assert report["cases"][0]["status"] == "written" and _sha(output / NAME) != real

    report = run(*PREVIEW, "--resume-any")
    assert [(c["status"], c["note"]) for c in report["cases"]] == [("skipped", "kept: --resume-any")]
    assert read_record(output / NAME)["seed"] == 7


def test_same_settings_write_the_same_bytes_with_no_time_or_machine_in_the_record(job, tmp_path):
    output, run = job
    run(*REAL)
    first = (output / NAME).read_bytes()
    os.rename(output / NAME, tmp_path / "first.nii.gz")
    run(*REAL)
    assert (output / NAME).read_bytes() == first
    record = read_record(output / NAME)
    assert set(record) == {
        "method",
        "sampler",
        "steps",
        "eta",
        "precision",
        "weights",
        "seed",
        "draws",
        "grid_of",
    } | {
        "version",
        "target",
        "resampled",
    }
    text = json.dumps(record)
    assert socket.gethostname() not in text and str(os.getpid()) not in text
    assert not re.search(r"20\d\d-\d\d-\d\d", text)  # no date


def test_an_output_without_a_record_is_kept_with_a_warning_and_overwrite_replaces_it(job, capsys):
    output, run = job
    output.mkdir()
    foreign = save_nifti(output / NAME, phantom((32, 32, 32), seed=5))
    before = _sha(foreign)
    capsys.readouterr()
    report = run(*REAL)
    err = capsys.readouterr().err
    assert [(c["status"], c["note"]) for c in report["cases"]] == [("skipped", "kept: settings unknown")]
    assert "records no brasyn settings" in err and "use --overwrite to replace it" in err
    assert _sha(foreign) == before and read_record(foreign) is None
    report = run(*REAL, "--overwrite")
    assert report["cases"][0]["status"] == "written" and read_record(foreign)["sampler"] == "ddim"


def test_a_failed_replacement_leaves_the_old_output_as_it_was(job, monkeypatch):
    output, run = job
    run(*PREVIEW)
    preview = _sha(output / NAME)
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):
        if str(dst).endswith(NAME):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    report = run(*REAL, code=1)
    assert (
        report["cases"][0]["status"] == "failed" and "free space and rerun" in report["cases"][0]["message"]
    )
    assert sorted(p.name for p in output.iterdir()) == [NAME]  # no temporary left, the preview kept
    assert _sha(output / NAME) == preview


def test_the_linear_baseline_records_its_own_settings_and_claims_no_sampler(job, capsys):
    output, run = job
    run(*PREVIEW)
    capsys.readouterr()
    report = run("--method", "linear", *LINEAR_WEIGHTS)
    err = capsys.readouterr().err
    assert report["settings"]["method"] == "linear"
    assert not {"sampler", "steps", "eta", "precision", "speed"} & set(report["settings"])
    assert report["cases"][0]["note"] == "replaced: settings differed"
    assert "c1-t2f.nii.gz was written with method diffusion; this run uses method linear: " in err
    record = read_record(output / NAME)
    assert record["method"] == "linear" and "seed" not in record and "sampler" not in record
    assert len(record["weights"]) == 64
    assert (
        run("--method", "linear", *LINEAR_WEIGHTS, "--seed", "3")["cases"][0]["status"] == "skipped"
    )  # no random draws


def test_overwrite_and_resume_any_together_are_refused(tmp_path, capsys):
    make_case(tmp_path / "in", "c1", shape=(32, 32, 32), seed=1)
    base = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]
    assert main([*base, "--overwrite", "--resume-any"]) == 2
    assert "--overwrite replaces every output and --resume-any keeps every one" in capsys.readouterr().err


def test_grid_of_counts_only_for_a_resampled_case():
    old = {"method": "linear", "weights": "a", "grid_of": None, "resampled": True}
    assert differences(old, {"method": "linear", "weights": "a", "grid_of": "t1n"}) == ["grid_of"]
    assert (
        differences({**old, "resampled": False}, {"method": "linear", "weights": "a", "grid_of": "t1n"}) == []
    )
    assert differences(old, {"method": "linear", "weights": "b", "grid_of": None}) == ["weights"]


def test_an_unreadable_output_has_no_record(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(b"not an image")
    assert read_record(path) is None
    assert read_record(save_nifti(tmp_path / "y.nii.gz", np.ones((4, 4, 4), np.float32))) is None
