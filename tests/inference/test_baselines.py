"""The linear and nearest-contrast baselines: fitting, baselines.json, and the pipeline's --method."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brasyn.commands.baselines import main
from brasyn.commands.cli import main as brasyn_main
from brasyn.common.errors import WeightsError
from brasyn.data.modalities import MODALITIES, Modality, conditions_for
from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.data.volumes import Volume
from brasyn.inference.baselines import (
    BASELINES_NAME,
    Baselines,
    LinearFit,
    fit_baselines,
    predict_linear,
    predict_nearest,
)
from brasyn.inference.predictors import LinearPredictor, NearestPredictor
from brasyn.transform.intensity import OUTPUT_THRESHOLD, high_percentile
from brasyn.transform.preprocess import normalise
from brasyn.weights.manifest import DEFAULT_INTENSITY_RATIOS
from brasyn.weights.store import WeightStore, init_random
from tests.helpers import make_case, save_nifti

T1N, T1C, T2W, T2F = MODALITIES
SHAPE = (32, 32, 24)
FAST = ["--device", "cpu", "--no-progress"]


def _linear_cases(root: Path, count: int = 3) -> dict[str, dict[Modality, np.ndarray]]:
    """Complete cases whose t2f is exactly 0.1 + 0.5 t1n + 0.2 t1c + 0.1 t2w in the brain (normalised
    inputs), on a scale of its own."""
    cases = {}
    for i in range(count):
        case_id = f"BraTS-GLI-0000{i}-000"
        volumes = {
            m: phantom(SHAPE, seed=10 * i + k, scale=300.0 * (k + 1)) for k, m in enumerate((T1N, T1C, T2W))
        }
        brain = volumes[T1N] > 0
        unit = {m: normalise(v) for m, v in volumes.items()}
        volumes[T2F] = np.where(brain, 900.0 * (0.1 + 0.5 * unit[T1N] + 0.2 * unit[T1C] + 0.1 * unit[T2W]), 0)
        volumes[T2F] = volumes[T2F].astype(np.float32)
        for m, v in volumes.items():
            save_nifti(root / case_id / f"{case_id}-{m.value}.nii.gz", v)
        cases[case_id] = volumes
    return cases


def test_nearest_copies_the_paired_condition():
    images = np.stack([np.full((2, 2, 2), v, np.float32) for v in (0.1, 0.2, 0.3)])
    for target, partner in ((T1N, T1C), (T1C, T1N), (T2W, T2F), (T2F, T2W)):
        value = (0.1, 0.2, 0.3)[conditions_for(target).index(partner)]
        np.testing.assert_allclose(predict_nearest(images, target), value)


def test_linear_prediction_is_the_weighted_sum_clipped_to_unit_range():
    images = np.stack([np.full((2, 2, 2), v, np.float32) for v in (0.2, 0.4, 1.0)])
    fit = LinearFit({T1N: 1.0, T1C: 0.5, T2W: 0.25}, bias=0.05)
    np.testing.assert_allclose(predict_linear(images, T2F, fit), 0.05 + 0.2 + 0.2 + 0.25)
    assert predict_linear(images, T2F, LinearFit({T1N: 5.0, T1C: 0, T2W: 0}, 0.0)).max() == 1.0
    assert predict_linear(images, T2F, LinearFit({T1N: -5.0, T1C: 0, T2W: 0}, 0.0)).min() == 0.0


def _volumes(case_id: str, arrays: dict[Modality, np.ndarray]) -> dict[Modality, Volume]:
    return {m: Volume(Path(f"{case_id}-{m.value}.nii.gz"), a, BRATS_AFFINE, None) for m, a in arrays.items()}


def test_fit_recovers_linear_coefficients_and_median_intensity_ratios(tmp_path):
    cases = _linear_cases(tmp_path)
    baselines = fit_baselines((c, _volumes(c, arrays)) for c, arrays in cases.items())
    fit = baselines.linear[T2F]
    got = np.array([fit.weights[T1N], fit.weights[T1C], fit.weights[T2W], fit.bias])
    # the normal equations summed case by case solve the least-squares problem of all voxels at once
    design, values = [], []
    for volumes in cases.values():
        brain = volumes[T1N] > 0
        columns = [normalise(volumes[m])[brain] for m in (T1N, T1C, T2W)]
        design.append(np.stack([*columns, np.ones(brain.sum())], axis=1))
        values.append(normalise(volumes[T2F])[brain])
    exact = np.linalg.lstsq(np.concatenate(design), np.concatenate(values), rcond=None)[0]
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-9)
    # and come close to the coefficients the target was made with (normalise divides it by its 99.9th
    # percentile and clips the brightest 0.1 % of voxels, which moves the fit a little)
    scale = np.mean([np.quantile(v[T2F], 0.999) for v in cases.values()]) / 900.0
    np.testing.assert_allclose(got, np.array([0.5, 0.2, 0.1, 0.1]) / scale, atol=0.03)
    brain = sum(v[T1N] > 0 for v in cases.values())
    assert fit.voxels == int(np.sum(brain))
    ratios = [high_percentile(v[T2F]) / high_percentile(v[T1C]) for v in cases.values()]
    assert baselines.ratios(T2F)[T1C] == pytest.approx(float(np.median(ratios)))
    assert baselines.training_cases == tuple(cases)
    assert set(baselines.linear) == set(MODALITIES)


def test_fit_command_writes_baselines_beside_the_manifest_without_touching_it(tmp_path, capsys):
    _linear_cases(tmp_path / "a", 2)
    make_case(tmp_path / "b", "incomplete", ("t1n", "t1c", "t2w"), shape=SHAPE)
    weights = tmp_path / "weights"
    init_random(weights, "tiny", targets=["t2f"])
    manifest = (weights / "manifest.json").read_bytes()
    args = ["fit", "--data", str(tmp_path / "a"), "--data", str(tmp_path / "b"), "--out", str(weights)]
    assert main(args) == 0
    assert "2 cases" in capsys.readouterr().out
    assert (weights / "manifest.json").read_bytes() == manifest
    assert WeightStore(weights).targets() == [T2F]
    data = json.loads((weights / BASELINES_NAME).read_text())
    assert data["training_cases"] == ["BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    assert set(data["linear"]["t1n"]["weights"]) == {"t1c", "t2w", "t2f"}
    assert data["provenance"]["data"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    loaded = Baselines.load(weights)
    assert loaded.linear[T2F].weights.keys() == {T1N, T1C, T2W}
    assert Baselines.from_dict(loaded.to_dict(), "copy").to_dict() == loaded.to_dict()


def test_fit_command_without_complete_cases_says_so(tmp_path, capsys):
    make_case(tmp_path / "data", "x", ("t1n", "t1c", "t2w"), shape=SHAPE)
    assert main(["fit", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "w")]) == 2
    assert "no complete case" in capsys.readouterr().err
    assert not (tmp_path / "w" / BASELINES_NAME).exists()


def test_fit_command_reads_hospital_names_through_map(tmp_path, capsys):
    paths = make_case(tmp_path / "data", "h0", ("t1n", "t1c", "t2w", "t2f"), shape=SHAPE)
    paths["t1c"].rename(paths["t1c"].with_name("h0_T1_MPRAGE_post.nii.gz"))
    args = ["fit", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "w")]
    assert main(args) == 2  # read by name, the sequence looks like a second t1n and the case is incomplete
    assert main([*args, "--map", "t1c=*MPRAGE_post*"]) == 0
    assert json.loads((tmp_path / "w" / BASELINES_NAME).read_text())["training_cases"] == ["h0"]


def test_linear_needs_its_file_and_nearest_falls_back_to_the_default_ratios(tmp_path):
    with pytest.raises(WeightsError, match=r"python -m brasyn\.baselines fit"):
        LinearPredictor.from_folder(tmp_path)
    assert NearestPredictor.from_folder(tmp_path).intensity_ratios(T1C) == DEFAULT_INTENSITY_RATIOS[T1C]
    (tmp_path / BASELINES_NAME).write_text('{"format_version": 1, "linear": {"t2f": {"weights": {}}}}')
    with pytest.raises(WeightsError, match="needs 'weights' for t1n, t1c, t2w"):
        NearestPredictor.from_folder(tmp_path)
    (tmp_path / BASELINES_NAME).write_text("{not json")
    with pytest.raises(WeightsError, match="cannot be used"):
        LinearPredictor.from_folder(tmp_path)


# --- through the pipeline ----------------------------------------------------------------------------


def _run(inputs: Path, output: Path, weights: Path, *extra: str) -> int:
    return brasyn_main(
        ["--input", str(inputs), "--output", str(output), "--weights", str(weights), *FAST, *extra]
    )


def test_nearest_runs_without_weights_and_restores_like_the_diffusion_path(tmp_path):
    inputs, output, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    files = make_case(
        inputs, "BraTS2021_00001", ("t1", "t1ce", "flair"), shape=SHAPE, pattern="{case}_{m}.nii.gz"
    )
    assert _run(inputs, output, tmp_path / "no-weights", "--method", "nearest", "--report", str(report)) == 0
    assert [p.name for p in output.iterdir()] == ["BraTS2021_00001_t2.nii.gz"]
    # t2w is filled with t2f (flair): normalised, thresholded, rescaled with the default ratios
    flair = np.asanyarray(nib.load(files["flair"]).dataobj, dtype=np.float32)
    expected = normalise(flair)
    expected[expected <= OUTPUT_THRESHOLD] = 0
    percentiles = {
        m: high_percentile(np.asanyarray(nib.load(files[a]).dataobj))
        for m, a in zip((T1N, T1C, T2F), ("t1", "t1ce", "flair"), strict=True)
    }
    scale = np.median([DEFAULT_INTENSITY_RATIOS[T2W][m] * p for m, p in percentiles.items()])
    out = nib.load(output / "BraTS2021_00001_t2.nii.gz")
    np.testing.assert_allclose(np.asanyarray(out.dataobj), expected * scale, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(out.affine, nib.load(files["flair"]).affine)
    settings = json.loads(report.read_text())["settings"]
    assert settings["method"] == "nearest"


def test_linear_uses_the_fitted_file_and_refuses_to_start_without_it(tmp_path, capsys):
    cases = _linear_cases(tmp_path / "train", 2)
    weights = tmp_path / "weights"
    assert main(["fit", "--data", str(tmp_path / "train"), "--out", str(weights)]) == 0
    inputs = tmp_path / "in"
    case_id = next(iter(cases))
    for m in (T1N, T1C, T2W):
        (inputs / case_id).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "train" / case_id / f"{case_id}-{m.value}.nii.gz", inputs / case_id)
    assert _run(inputs, tmp_path / "out", weights, "--method", "linear") == 0
    out = np.asanyarray(nib.load(tmp_path / "out" / f"{case_id}-t2f.nii.gz").dataobj)
    truth = cases[case_id][T2F]
    brain = truth > 0
    # an exact linear relation comes back close to the truth, on its scale (in-sample)
    assert np.median(np.abs(out[brain] - truth[brain]) / truth[brain]) < 0.05
    assert _run(inputs, tmp_path / "out2", tmp_path / "empty", "--method", "linear") == 2
    assert f"--method linear: there is no {BASELINES_NAME}" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_mlcube_parameters_choose_the_method(tmp_path):
    make_case(tmp_path / "in", "BraTS-GLI-00001-000", shape=SHAPE)
    params = tmp_path / "parameters.yaml"
    params.write_text("method: nearest\n")
    args = ["infer", "--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")]
    assert brasyn_main([*args, "--weights", str(tmp_path / "none"), "--parameters_file", str(params)]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["BraTS-GLI-00001-000-t2f.nii.gz"]


@pytest.mark.slow
def test_baselines_on_real_cases_leave_one_out(shared_dir, tmp_path):
    """Fit on three real cases, fill in the fourth's t2f with each baseline: same file name, grid and
    header as the diffusion path writes, and a scale near the real contrast's."""
    real = shared_dir / "data" / "real"
    train, held_out = tmp_path / "train", "BraTS-GLI-00001-000"
    for case in ("BraTS-MET-00110-000", "TCGA-DU-7294", "preprocessed_case"):
        shutil.copytree(real / case, train / case)
    weights = tmp_path / "weights"
    assert main(["fit", "--data", str(train), "--out", str(weights)]) == 0
    inputs = tmp_path / "in" / held_out
    inputs.mkdir(parents=True)
    for m in ("t1n", "t1c", "t2w"):
        shutil.copy(real / held_out / f"{held_out}-{m}.nii.gz", inputs)
    truth = nib.load(real / held_out / f"{held_out}-t2f.nii.gz")
    for method in ("linear", "nearest"):
        output = tmp_path / method
        assert _run(tmp_path / "in", output, weights, "--method", method) == 0
        out = nib.load(output / f"{held_out}-t2f.nii.gz")
        assert out.shape == truth.shape and out.get_data_dtype() == np.float32
        np.testing.assert_allclose(out.affine, truth.affine, atol=1e-6)
        ratio = high_percentile(np.asanyarray(out.dataobj)) / high_percentile(truth.get_fdata())
        assert 0.2 < ratio < 5, (method, ratio)
