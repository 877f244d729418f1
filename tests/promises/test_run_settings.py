"""The no-argument form (``docker run ... IMAGE``) is set up by BRASYN_* variables and a config file, and
each output's settings record shows what it ran with."""

from __future__ import annotations

from pathlib import Path

from brasyn.commands.cli import main
from brasyn.data.provenance import read_record
from tests.helpers import make_case

OUTPUT = "BraTS-GLI-00007-000-t2f.nii.gz"


def _no_argument_run(monkeypatch, inputs: Path, output: Path, weights: Path, **variables: str) -> dict:
    """``main([])`` as the container runs it, its folders and weights from the environment; the record of
    the one output."""
    for name in ("BRASYN_SAMPLER", "BRASYN_STEPS", "BRASYN_PRECISION", "BRASYN_DEVICE", "BRASYN_CONFIG"):
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


def test_the_no_argument_form_takes_its_sampler_from_variables_and_a_config_file(
    tmp_path, tiny_weights, monkeypatch, capsys
):
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
