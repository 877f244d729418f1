"""The quality comparisons: sampler table and bf16-versus-seeds check, on a small complete case."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from brasyn.bench.quality import parse_variant, row_text
from brasyn.commands import quality
from brasyn.commands.cli import main as cli_main
from brasyn.evaluate.metrics import score
from brasyn.weights.store import init_random
from tests.helpers import make_case


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    make_case(root / "data", "BraTS-GLI-00009-000", ("t1n", "t1c", "t2w", "t2f"), shape=(64, 64, 64))
    init_random(root / "weights", "tiny", seed=0, targets=["t2f"])
    return root


def _scores_of_a_run(complete, tmp_path, *settings: str) -> dict:
    """The scores of what the main job writes, with ``settings``, for the case without its FLAIR."""
    inputs = tmp_path / "without-t2f" / "BraTS-GLI-00009-000"
    inputs.mkdir(parents=True)
    for m in ("t1n", "t1c", "t2w"):
        (inputs / f"BraTS-GLI-00009-000-{m}.nii.gz").symlink_to(
            complete / "data" / "BraTS-GLI-00009-000" / f"BraTS-GLI-00009-000-{m}.nii.gz"
        )
    run = [
        "--input",
        str(inputs.parent),
        "--output",
        str(tmp_path / "out"),
        "--weights",
        str(complete / "weights"),
    ]
    assert cli_main([*run, *settings, "--device", "cpu"]) == 0
    written = nib.load(tmp_path / "out" / "BraTS-GLI-00009-000-t2f.nii.gz").get_fdata(dtype=np.float32)
    truth = nib.load(complete / "data" / "BraTS-GLI-00009-000" / "BraTS-GLI-00009-000-t2f.nii.gz")
    return score(written, truth.get_fdata(dtype=np.float32))


def test_sampler_table_scores_each_variant_against_the_real_contrast(complete, tmp_path, capsys):
    out = tmp_path / "samplers.json"
    args = ["samplers", "--data", str(complete / "data"), "--weights", str(complete / "weights")]
    args += ["--target", "t2f", "--device", "cpu", "--variant", "x0:1", "--variant", "dpm++2m:3"]
    assert quality.main([*args, "--json", str(out)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows == json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["steps"]) for r in rows] == [("x0:1:fp32", 1), ("dpm++2m:3:fp32", 3)]
    for row in rows:
        assert row["case"] == "BraTS-GLI-00009-000" and row["target"] == "t2f"
        assert -1 <= row["ssim"] <= 1 and row["psnr"] > 0 and "ssim_brain" in row
    # the second variant is also scored against the first one's image (what a setting moves)
    assert "ssim_vs_first" not in rows[0] and -1 <= rows[1]["ssim_vs_first"] < 1
    assert rows[1]["psnr_vs_first"] > 0
    # the x0 row scores what the main job writes for the case without its FLAIR, with the same seed
    expected = _scores_of_a_run(complete, tmp_path, "--sampler", "x0", "--steps", "1", "--no-progress")
    assert rows[0]["ssim"] == pytest.approx(expected["ssim"], abs=1e-6)
    assert rows[0]["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)


def test_precision_check_compares_bf16_with_the_seed_to_seed_spread(complete, capsys):
    args = ["precision", "--data", str(complete / "data"), "--weights", str(complete / "weights")]
    args += ["--target", "t2f", "--device", "cpu", "--steps", "3", "--crop", "32", "32", "32"]
    assert quality.main(args) == 0
    (row,) = json.loads(capsys.readouterr().out)["rows"]
    assert row["shape"] == [32, 32, 32] and row["steps"] == 3
    # what the check exists to show: bf16's rounding moves the result far less than another seed does
    assert 0 < row["ssim_fp32_seed_vs_seed"] < 0.9 < row["ssim_bf16_vs_fp32"] <= 1
    assert row["bf16_closer_than_seeds"] is True
    assert 0 < row["max_abs_bf16_vs_fp32"] < 0.5
    assert set(row["seconds"]) == {"fp32", "fp32_other_seed", "bf16"}


def test_bad_variants_and_folders_without_complete_cases_exit_2(complete, tmp_path):
    with pytest.raises(ValueError, match="sampler:steps"):
        parse_variant("ddim")
    with pytest.raises(ValueError, match="precision"):
        parse_variant("ddim:5:fp16")
    with pytest.raises(ValueError, match="backend must be one of auto, torch, openvino"):
        parse_variant("ddim:5:bf16:onnx")
    assert parse_variant("dpm++2m:10:bf16:openvino").name == "dpm++2m:10:bf16:openvino"
    assert parse_variant("dpm++2m:10:bf16:torch").name == "dpm++2m:10:bf16"  # the names of older tables
    assert quality.main(["samplers", "--data", str(tmp_path), "--weights", str(complete / "weights")]) == 2


def test_a_result_row_is_logged_as_words_not_a_python_dict():
    row = {"case": "A", "target": "t2f", "shape": [112, 112, 80], "ssim": 0.912345, "seconds": {"fp32": 1.5}}
    assert row_text(row) == "case=A target=t2f shape=112x112x80 ssim=0.9123 seconds=fp32:1.5"


@pytest.mark.slow
def test_draws_table_scores_what_a_run_with_that_many_draws_writes(complete, tmp_path, capsys):
    args = ["draws", "--data", str(complete / "data"), "--weights", str(complete / "weights")]
    args += ["--target", "t2f", "--device", "cpu", "--variant", "ddim:2", "--counts", "1", "3", "2"]
    assert quality.main(args) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["rows"]
    assert [(r["variant"], r["draws"]) for r in rows] == [
        ("ddim:2:fp32", 1),
        ("ddim:2:fp32", 2),
        ("ddim:2:fp32", 3),
    ]
    assert "spread_error_r" not in rows[0]  # one draw has no spread
    for row in rows[1:]:
        assert -1 <= row["spread_error_r"] <= 1 and row["error_top_spread"] >= 0 and row["error_rest"] >= 0
    assert rows[0]["sample_seconds"] <= rows[1]["sample_seconds"] <= rows[2]["sample_seconds"]
    assert "| r(std, error) |" in captured.err
    # the two-draw row scores the file a --draws 2 run writes (the first two draws of the chain of three)
    expected = _scores_of_a_run(complete, tmp_path, "--sampler", "ddim", "--steps", "2", "--draws", "2")
    assert rows[1]["ssim"] == pytest.approx(expected["ssim"], abs=1e-6)
    assert rows[1]["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)


def test_the_spread_against_error_follows_the_error():
    from brasyn.bench.draws import spread_against_error

    rng = np.random.default_rng(0)
    truth = np.zeros((20, 20, 20))
    truth[:10] = rng.random((10, 20, 20)) + 1.0  # a brain in half the volume, background 0
    error = np.zeros_like(truth)
    error[:1] = 0.5  # a tenth of the brain is too dark (the percentiles stay those of the truth)
    prediction = truth - error
    spread = error + 0.01 * rng.random(truth.shape)
    following = spread_against_error(spread, prediction, truth)
    assert following["spread_error_r"] > 0.9 and following["error_top_spread"] > 5 * following["error_rest"]
    brain = truth != 0
    assert following["spread_relative"] == pytest.approx(spread[brain].mean() / prediction[brain].mean())
    elsewhere = spread_against_error(rng.random(truth.shape), prediction, truth)
    assert abs(elsewhere["spread_error_r"]) < 0.1
