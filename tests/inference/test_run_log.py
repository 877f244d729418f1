"""What a run's log says about its weights and its sampling: one line each, in words, without repeating
itself per target."""

from __future__ import annotations

from brasyn.commands.cli import main
from brasyn.model.diffusion import Sampling
from tests.helpers import make_case


def test_sampling_is_described_as_it_runs():
    assert Sampling("x0", 10).describe() == "x0 (one prediction)"
    assert Sampling("ddim", 20).describe() == "20 ddim steps"
    assert Sampling("dpm++2m", 1).describe() == "1 dpm++2m step"


def test_a_run_names_its_weights_in_one_line_and_its_sampling_in_words(tmp_path, tiny_weights, capsys):
    make_case(tmp_path / "in", "BraTS-GLI-00001-000")  # lacks t2f
    make_case(tmp_path / "in", "BraTS-GLI-00002-000", contrasts=("t1c", "t2w", "t2f"))  # lacks t1n
    args = [
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--weights",
        str(tiny_weights),
    ]
    assert main([*args, "--sampler", "x0", "--steps", "10", "--device", "cpu", "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    weights_lines = [line for line in err if f"INFO weights {tiny_weights}:" in line]
    assert len(weights_lines) == 1
    assert "t1n t1n.pt (random initialisation" in weights_lines[0] and "t2f t2f.pt" in weights_lines[0]
    assert not any("sha256" in line for line in err)  # the digests are in the report, and at -v
    assert any("x0 (one prediction), on cpu in fp32" in line for line in err)
    assert sum("are RANDOM" in line for line in err) == 1  # once for the run, not once per target
