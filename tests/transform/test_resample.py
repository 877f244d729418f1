"""Hospital inputs: MetaImage and NRRD files, anisotropic and non-1 mm grids resampled in world space, and
the refusals (not co-registered, no orientation, degenerate axes, 2-D images)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import brasyn.transform.model_space
from brasyn import __version__
from brasyn.commands.cli import DEFAULT_WEIGHTS, main
from brasyn.common.errors import CaseError
from brasyn.data.modalities import Modality
from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.data.provenance import short_description
from brasyn.data.volumes import Volume, load_volume, write_volume
from brasyn.inference.predictors import LinearPredictor
from brasyn.inference.synthesize import Synthesizer
from brasyn.transform.model_space import from_model_space
from brasyn.transform.resample import GridPlan, on_model_grid, plan_grid, to_reference_grid
from tests.helpers import save_nifti

SOURCE_CASE = "BraTS-GLI-00001-000"
README_CORRELATIONS = {"orig": 0.41, "thick": 0.53, "shifted": 0.58, "mixed": 0.45}
"""The figures docs/hospital-inputs.md states for these cases."""
LINEAR = ["--method", "linear", "--weights", str(DEFAULT_WEIGHTS), "--no-progress"]
ROTATED = sitk.VersorTransform((0.0, 0.0, 1.0), np.deg2rad(10.0)).GetMatrix()
# case -> per contrast (spacing, origin shift in mm, direction or None for the source's, extension)
THICK = ((0.9, 0.9, 3.0), (0.0, 0.0, 0.0), None, ".nii.gz")
SHIFTED = ((1.2, 1.2, 1.2), (0.37, -0.51, 0.23), None, ".nii.gz")
LAYOUTS = {
    "thick": dict.fromkeys(("t1n", "t1c", "t2w", "t2f"), THICK),
    "shifted": dict.fromkeys(("t1n", "t1c", "t2w", "t2f"), SHIFTED),
    "mixed": {"t1n": THICK, "t1c": None, "t2w": SHIFTED, "t2f": None},
    "mha": dict.fromkeys(("t1n", "t1c", "t2w", "t2f"), (*THICK[:3], ".mha")),
    "nrrd": dict.fromkeys(
        ("t1n", "t1c", "t2w", "t2f"), ((1.1, 1.1, 1.1), (2.0, -3.0, 1.5), ROTATED, ".nrrd")
    ),
}


def _resampled(image: sitk.Image, spacing, shift, direction) -> sitk.Image:
    """``image`` in world space on a grid of ``spacing`` whose origin is moved by ``shift`` (linear)."""
    size = [
        int(np.ceil(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing, strict=True)
    ]
    origin = [o + d for o, d in zip(image.GetOrigin(), shift, strict=True)]
    direction = direction or image.GetDirection()
    if direction != image.GetDirection():
        # keep the rotated grid over the brain: turn it about the source grid's centre
        centre = np.array(
            image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
        )
        half = np.array(direction).reshape(3, 3) @ (np.array(spacing) * (np.array(size) - 1) / 2)
        origin = list(centre - half + np.array(shift))
    return sitk.Resample(
        image, size, sitk.Transform(), sitk.sitkLinear, origin, spacing, direction, 0.0, sitk.sitkFloat32
    )


@pytest.fixture(scope="module")
def hospital(shared_dir, tmp_path_factory) -> dict:
    """The real case on hospital-like grids and formats (FLAIR withheld as the truth), the original case,
    a non-co-registered copy, and one run of the linear baseline over all of them."""
    source = shared_dir / "data" / "real" / SOURCE_CASE
    root = tmp_path_factory.mktemp("hospital")
    inputs, truth, output, extras = root / "in", root / "truth", root / "out", root / "extras"
    truth.mkdir()
    originals = {m: source / f"{SOURCE_CASE}-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")}
    (inputs / "orig").mkdir(parents=True)
    for m in ("t1n", "t1c", "t2w"):
        shutil.copy(originals[m], inputs / "orig" / f"orig-{m}.nii.gz")
    shutil.copy(originals["t2f"], truth / "orig-t2f.nii.gz")
    for case, layout in LAYOUTS.items():
        (inputs / case).mkdir()
        for m, grid in layout.items():
            folder = truth if m == "t2f" else inputs / case
            if grid is None:
                shutil.copy(originals[m], folder / f"{case}-{m}.nii.gz")
                continue
            spacing, shift, direction, extension = grid
            image = _resampled(sitk.ReadImage(str(originals[m])), spacing, shift, direction)
            sitk.WriteImage(image, str(folder / f"{case}-{m}{extension}"), useCompression=True)
    # t2w 60 mm away from the other two in every direction: the brains barely overlap
    (inputs / "apart").mkdir()
    for m in ("t1n", "t1c", "t2w"):
        image = nib.load(originals[m])
        affine = image.affine.copy()
        if m == "t2w":
            affine[:3, 3] += 60.0
        save_nifti(inputs / "apart" / f"apart-{m}.nii.gz", np.asanyarray(image.dataobj), affine)
    report = root / "report.json"
    code = main(
        [
            "--input",
            str(inputs),
            "--output",
            str(output),
            *LINEAR,
            "--report",
            str(report),
            "--extras",
            str(extras),
        ]
    )
    return {
        "inputs": inputs,
        "truth": truth,
        "output": output,
        "extras": extras,
        "code": code,
        "report": {c["case"]: c for c in json.loads(report.read_text())["cases"]},
    }


def _brain_correlation(prediction: Path, truth: Path) -> float:
    """Pearson correlation of the synthetic and the true contrast over the true contrast's brain voxels."""
    x, y = load_volume(prediction, "p").data, load_volume(truth, "t").data
    brain = y != 0
    return float(np.corrcoef(x[brain], y[brain])[0, 1])


def _geometry(path: Path) -> tuple:
    image = sitk.ReadImage(str(path))
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_resampled_cases_come_back_on_the_finest_input_grid_and_correlate_as_well_as_the_original(hospital):
    output, truth = hospital["output"], hospital["truth"]
    assert hospital["code"] == 1  # the non-co-registered case failed; every other case was written
    assert sorted(p.name for p in output.iterdir()) == sorted(
        [
            f"{case}-t2f{'.mha' if case == 'mha' else '.nrrd' if case == 'nrrd' else '.nii.gz'}"
            for case in LAYOUTS
        ]
        + ["orig-t2f.nii.gz"]
    )
    correlations = {}
    for case in ("orig", "thick", "shifted", "mixed"):
        written, expected = output / f"{case}-t2f.nii.gz", truth / f"{case}-t2f.nii.gz"
        out, reference = nib.load(written), nib.load(expected)
        assert out.shape == reference.shape, case
        np.testing.assert_allclose(out.affine, reference.affine, atol=1e-4, err_msg=case)
        assert out.get_data_dtype() == np.float32 and np.asanyarray(out.dataobj).min() >= 0
        correlations[case] = _brain_correlation(written, expected)
        assert hospital["report"][case]["resampled"] is (case != "orig")
    # the mixed case: t1c is on the original 1 mm grid, the finest of the three, so the output is there too
    assert hospital["report"]["mixed"]["grid_of"] == "t1c"
    assert nib.load(output / "mixed-t2f.nii.gz").shape == (240, 240, 155)
    print("brain correlation with the true FLAIR (linear baseline):", correlations)
    assert correlations == pytest.approx(README_CORRELATIONS, abs=0.02)


def test_a_thick_slice_output_holds_the_average_over_its_thickness():
    """A 3 mm reference slice covers three 1 mm model slices: its value is close to their mean, not to
    the one sample at its centre (the synthetic image varies only along S here, randomly per slice)."""
    values = np.random.default_rng(0).normal(size=30).astype(np.float32) + 5.0
    model = np.broadcast_to(values, (20, 20, 30)).copy()
    # model voxel (a, b, c) lies at LPS (-19 + a, -19 + b, -1 + c); reference voxel k at RAS S = 3 k
    plan = GridPlan(Modality.T2F, (-19.0, -19.0, -1.0), (20, 20, 30), overlap=1.0)
    reference = Volume(
        Path("ref.nii.gz"), np.ones((20, 20, 10), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]), None
    )
    out = to_reference_grid(model, np.ones(model.shape, bool), plan, reference)[10, 10, 1:-1]
    thickness_mean = values[3:27].reshape(8, 3).mean(axis=1)
    centre_sample = values[4:28:3]
    error = np.sqrt(np.mean((out - thickness_mean) ** 2))
    sampled_error = np.sqrt(np.mean((centre_sample - thickness_mean) ** 2))
    # a Gaussian as wide as the box leaves about 0.4 of the sampling error here; no averaging leaves all
    assert error < 0.5 * sampled_error, (error, sampled_error)


@pytest.mark.parametrize("case", ["mha", "nrrd"])
def test_metaimage_and_nrrd_cases_keep_their_format_spacing_origin_and_direction(hospital, case):
    extension = ".mha" if case == "mha" else ".nrrd"
    written = hospital["output"] / f"{case}-t2f{extension}"
    reference = hospital["inputs"] / case / f"{case}-t1n{extension}"
    size, spacing, origin, direction = _geometry(written)
    r_size, r_spacing, r_origin, r_direction = _geometry(reference)
    assert size == r_size
    np.testing.assert_allclose(spacing, r_spacing, atol=1e-6)
    np.testing.assert_allclose(origin, r_origin, atol=1e-4)
    np.testing.assert_allclose(direction, r_direction, atol=1e-6)
    assert sitk.ReadImage(str(written)).GetPixelID() == sitk.sitkFloat32
    truth = hospital["truth"] / f"{case}-t2f{extension}"
    assert _brain_correlation(written, truth) > 0.3


def test_a_case_whose_contrasts_are_not_co_registered_is_refused_with_the_files_and_a_registration_tool(
    hospital,
):
    entry = hospital["report"]["apart"]
    assert entry["status"] == "failed"
    assert "not co-registered" in entry["message"] and "apart-t2w.nii.gz" in entry["message"]
    assert "ANTs" in entry["message"] and "elastix" in entry["message"]
    assert any(f.endswith("apart-t2w.nii.gz") for f in entry["files"])


def test_previews_show_the_inputs_on_the_model_grid(hospital):
    # the preview's text names the grid its panels were cut from: the model grid (multiples of 32)
    text = (hospital["extras"] / "thick-t2f.png").read_bytes()
    match = re.search(rb"model grid (\d+)x(\d+)x(\d+)", text)
    assert match is not None
    assert all(int(n) % 32 == 0 for n in match.groups())
    assert b"267x267x52" not in text  # not the thick-slice input grid


def test_a_1mm_nifti_case_takes_the_plain_path_byte_for_byte(hospital, monkeypatch, tmp_path):
    """The case on one 1 mm grid gives the same bytes as the plain composition of load, synthesize and
    write (the path before resampling existed), and never reaches the resampling code."""
    inputs = hospital["inputs"] / "orig"
    files = {Modality(m): inputs / f"orig-{m}.nii.gz" for m in ("t1n", "t1c", "t2w")}
    volumes = {m: load_volume(p, "orig") for m, p in files.items()}
    assert on_model_grid(volumes) and plan_grid(volumes, "orig") is None
    predictor = LinearPredictor.from_folder(DEFAULT_WEIGHTS)
    synthesizer = Synthesizer(predictor, progress=False)
    images, record = synthesizer.to_model_space(volumes, Modality.T2F, "orig")
    model_space = synthesizer.predict(images, Modality.T2F, "orig")
    data = from_model_space(model_space, record, predictor.intensity_ratios(Modality.T2F))
    plain = tmp_path / "plain" / "orig-t2f.nii.gz"
    plain.parent.mkdir()
    # the settings record the batch adds (brasyn.data.provenance); the case is not resampled
    settings = {
        **synthesizer.output_settings(Modality.T2F),
        "version": __version__,
        "target": "t2f",
        "resampled": False,
    }
    write_volume(data, record.reference, plain, description=short_description(settings), record=settings)
    assert (hospital["output"] / "orig-t2f.nii.gz").read_bytes() == plain.read_bytes()

    def refuse(*args, **kwargs):
        raise AssertionError("a 1 mm case must not be resampled")

    monkeypatch.setattr(brasyn.transform.model_space, "to_model_grid", refuse)
    monkeypatch.setattr(brasyn.transform.model_space, "to_reference_grid", refuse)
    only = tmp_path / "in"
    shutil.copytree(inputs, only / "orig")
    assert main(["--input", str(only), "--output", str(tmp_path / "out"), *LINEAR]) == 0
    assert (tmp_path / "out" / "orig-t2f.nii.gz").read_bytes() == plain.read_bytes()


def test_grid_of_puts_the_output_on_the_named_contrast_grid_and_refuses_a_missing_one(hospital, tmp_path):
    only = tmp_path / "in"
    shutil.copytree(hospital["inputs"] / "mixed", only / "mixed")
    report = tmp_path / "r.json"
    args = ["--input", str(only), "--output", str(tmp_path / "out"), *LINEAR, "--report", str(report)]
    assert main([*args, "--grid-of", "t2w"]) == 0
    out, t2w = nib.load(tmp_path / "out" / "mixed-t2f.nii.gz"), nib.load(only / "mixed" / "mixed-t2w.nii.gz")
    assert out.shape == t2w.shape
    np.testing.assert_allclose(out.affine, t2w.affine, atol=1e-4)
    assert json.loads(report.read_text())["cases"][0]["grid_of"] == "t2w"
    # the missing contrast has no grid: the case fails, with the flag named
    assert main([*args, "--grid-of", "t2f", "--overwrite"]) == 1
    failed = json.loads(report.read_text())["cases"][0]
    assert failed["status"] == "failed"
    assert "--grid-of t2f" in failed["message"] and "does not have" in failed["message"]
    # nor has the contrast a run is told to synthesise
    assert main([*args, "--grid-of", "t1n", "--target", "t1n"]) == 2


# --- small volumes, no shared data --------------------------------------------------------------------


def _oblique_affine() -> np.ndarray:
    rotation = sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix()
    affine = np.eye(4)
    affine[:3, :3] = np.array(rotation).reshape(3, 3) @ np.diag([0.9, 1.1, 3.0])
    affine[:3, 3] = (-80.0, 120.0, -40.0)
    return affine


@pytest.mark.parametrize("extension", [".mha", ".mhd", ".nrrd"])
def test_itk_formats_load_as_nibabel_loads_the_same_image_and_write_back_atomically(tmp_path, extension):
    data = phantom((20, 24, 12))
    nifti = save_nifti(tmp_path / "in" / "a-t1n.nii.gz", data, _oblique_affine())
    other = tmp_path / "in" / f"a-t1n{extension}"
    sitk.WriteImage(sitk.ReadImage(str(nifti)), str(other))
    by_nibabel, by_itk = load_volume(nifti, "a"), load_volume(other, "a")
    np.testing.assert_array_equal(by_itk.data, by_nibabel.data)
    np.testing.assert_allclose(by_itk.affine, by_nibabel.affine, atol=1e-4)
    out = tmp_path / "out"
    out.mkdir()
    write_volume(data * 2, by_itk, out / f"a-t2f{extension}")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"a-t2f{extension}"] + (["a-t2f.zraw"] if extension == ".mhd" else []))
    again = load_volume(out / f"a-t2f{extension}", "a")
    np.testing.assert_allclose(again.data, data * 2, rtol=1e-6)
    np.testing.assert_allclose(again.affine, by_nibabel.affine, atol=1e-4)


def test_two_d_images_and_degenerate_orientations_are_refused(tmp_path):
    flat = tmp_path / "flat-t1n.mha"
    sitk.WriteImage(sitk.GetImageFromArray(phantom((1, 30, 30))[0]), str(flat))
    with pytest.raises(CaseError, match="2-D image"):
        load_volume(flat, "c")
    singular = BRATS_AFFINE.copy()
    singular[:3, 2] = singular[:3, 0]  # two axes pointing the same way
    image = nib.Nifti1Image(phantom((8, 8, 8)), singular)
    image.header.set_sform(singular, code=1)
    nib.save(image, tmp_path / "bad-t1n.nii.gz")
    with pytest.raises(CaseError, match="not orthonormal") as info:
        load_volume(tmp_path / "bad-t1n.nii.gz", "c")
    assert "bad-t1n.nii.gz" in info.value.message


def test_a_file_without_orientation_is_refused_only_when_it_must_be_resampled(tmp_path):
    paths = {
        Modality.T1N: save_nifti(tmp_path / "c-t1n.nii.gz", phantom(seed=1)),
        Modality.T1C: save_nifti(tmp_path / "c-t1c.nii.gz", phantom(seed=2)),
    }
    unplaced = nib.Nifti1Image(phantom(seed=3), None)
    unplaced.header.set_qform(None, code=0)
    unplaced.header.set_sform(None, code=0)
    nib.save(unplaced, tmp_path / "c-t2w.nii.gz")
    paths[Modality.T2W] = tmp_path / "c-t2w.nii.gz"
    volumes = {m: load_volume(p, "c") for m, p in paths.items()}
    # nibabel's fallback affine differs from the others', so the case would need resampling
    with pytest.raises(CaseError, match="no orientation record") as info:
        plan_grid(volumes, "c")
    assert info.value.files == (paths[Modality.T2W],)


def test_the_model_grid_covers_every_brain_at_1mm_on_the_reference_lattice(tmp_path):
    affine = BRATS_AFFINE.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1.0, 1.0, 2.5])
    volumes = {
        Modality.T1N: load_volume(save_nifti(tmp_path / "a.nii.gz", phantom(seed=1)), "c"),
        Modality.T1C: load_volume(
            save_nifti(tmp_path / "b.nii.gz", phantom((48, 56, 16), seed=2), affine), "c"
        ),
        Modality.T2W: load_volume(save_nifti(tmp_path / "d.nii.gz", phantom(seed=3)), "c"),
    }
    plan = plan_grid(volumes, "c")
    assert isinstance(plan, GridPlan) and plan.reference is Modality.T1N and plan.overlap > 0.8
    np.testing.assert_allclose(np.abs(np.diag(plan.affine)[:3]), 1.0)
    # voxel centres of the 1 mm reference fall on model voxel centres
    offset = np.linalg.solve(plan.affine, BRATS_AFFINE @ [0, 0, 0, 1])[:3]
    np.testing.assert_allclose(offset, np.round(offset), atol=1e-6)


def test_a_slab_covering_part_of_the_brain_is_not_taken_for_a_misregistered_one(tmp_path):
    """Overlap is judged where both fields of view have data: a co-registered FLAIR slab over the upper
    half of the head passes, the same slab moved 40 mm sideways does not."""
    full = phantom(seed=3)
    slab_affine = BRATS_AFFINE.copy()
    slab_affine[:3, 3] += BRATS_AFFINE[:3, 2] * 20  # starts at slice 20 of the others
    volumes = {
        Modality.T1N: load_volume(save_nifti(tmp_path / "a.nii.gz", phantom(seed=1)), "c"),
        Modality.T1C: load_volume(save_nifti(tmp_path / "b.nii.gz", phantom(seed=2)), "c"),
        Modality.T2F: load_volume(save_nifti(tmp_path / "f.nii.gz", full[:, :, 20:], slab_affine), "c"),
    }
    assert plan_grid(volumes, "c").overlap > 0.9
    slab_affine[:3, 3] += (40.0, 0.0, 0.0)
    volumes[Modality.T2F] = load_volume(save_nifti(tmp_path / "g.nii.gz", full[:, :, 20:], slab_affine), "c")
    with pytest.raises(CaseError, match="not co-registered"):
        plan_grid(volumes, "c")
