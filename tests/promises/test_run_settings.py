"""The no-argument form (``docker run ... IMAGE``) is set up by BRASYN_* variables and a config file, and
each output's settings record shows what it ran with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from brasyn.commands.cli import main
from brasyn.commands.sources import SETTING_VARIABLES
from brasyn.data.provenance import read_record
from tests.helpers import make_case

OUTPUT = "BraTS-GLI-00007-000-t2f.nii.gz"


def _no_argument_run(monkeypatch, inputs: Path, output: Path, weights: Path, **variables: str) -> dict:
    """``main([])`` as the container runs it, its folders and weights from the environment; the record of
    the one output."""
    for name in (*SETTING_VARIABLES, "BRASYN_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BRASYN_INPUT", str(inputs))
    monkeypatch.setenv("BRASYN_OUTPUT", str(output))
    monkeypatch.setenv("BRASYN_WEIGHTS", str(weights))
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert main([]) == 0
    assert [p.name for p in output.iterdir()] == [OUTPUT]
    record = read_record(output / OUTPUT)
    assert record is not None
    return record


def _short_chain(tiny_weights: Path, folder: Path) -> Path:
    """The tiny weights with a 25-step chain for t2f: a run that missed its settings and fell back to the
    1000-step default fails this test in seconds instead of minutes."""
    shutil.copytree(tiny_weights, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["checkpoints"]["t2f"]["diffusion"]["steps"] = 25
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_the_no_argument_form_takes_its_sampler_from_variables_and_a_config_file(
    tmp_path, tiny_weights, monkeypatch, capsys
):
    tiny_weights = _short_chain(tiny_weights, tmp_path / "weights")
    inputs = tmp_path / "in"
    make_case(inputs, "BraTS-GLI-00007-000", shape=(30, 30, 30), seed=5)

    record = _no_argument_run(
        monkeypatch,
        inputs,
        tmp_path / "variables",
        tiny_weights,
        BRASYN_SAMPLER="ddim",
        BRASYN_STEPS="2",
        BRASYN_DEVICE="cpu",
    )
    assert (record["sampler"], record["steps"]) == ("ddim", 2)
    default_seed = record["seed"]
    assert "settings not given as flags: device from BRASYN_DEVICE" in capsys.readouterr().err

    config = tmp_path / "config" / "brasyn.yaml"
    config.parent.mkdir()
    config.write_text("sampler: dpm++2m\nsteps: 3\nseed: 9\ndevice: cpu\nhotfix: {}\n")
    record = _no_argument_run(
        monkeypatch, inputs, tmp_path / "config-only", tiny_weights, BRASYN_CONFIG=str(config)
    )
    assert (record["sampler"], record["steps"]) == ("dpm++2m", 3)
    assert record["seed"] != default_seed  # the file's seed: 9
    seed_from_file = record["seed"]

    # the variable beats the file for steps; the file still gives the sampler and the seed
    record = _no_argument_run(
        monkeypatch, inputs, tmp_path / "both", tiny_weights, BRASYN_CONFIG=str(config), BRASYN_STEPS="2"
    )
    assert (record["sampler"], record["steps"], record["seed"]) == ("dpm++2m", 2, seed_from_file)


def test_mlcube_infer_reads_its_parameters_file_alone(tmp_path, tiny_weights, monkeypatch):
    """MedPerf sets a run up by the parameters file: BRASYN_* variables in the image's environment, even
    bad ones, change nothing there."""
    inputs = tmp_path / "in"
    make_case(inputs, "BraTS-GLI-00007-000", shape=(30, 30, 30), seed=5)
    params = tmp_path / "parameters.yaml"
    params.write_text("sampler: ddim\nsteps: 2\ndevice: cpu\n")
    monkeypatch.setenv("BRASYN_STEPS", "not a number")
    monkeypatch.setenv("BRASYN_SAMPLER", "x0")
    monkeypatch.setenv("BRASYN_CONFIG", str(tmp_path / "missing.yaml"))
    argv = ["infer", f"--data_path={inputs}", f"--output_path={tmp_path / 'out'}"]
    assert main([*argv, f"--weights={tiny_weights}", f"--parameters_file={params}"]) == 0
    record = read_record(tmp_path / "out" / OUTPUT)
    assert record is not None and (record["sampler"], record["steps"]) == ("ddim", 2)
