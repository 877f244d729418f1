"""The pipeline on real tumour cases (shared/data/real), each with one contrast withheld."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brasyn.commands.cli import main
from brasyn.data.cases import discover
from brasyn.inference.batch import run_batch
from brasyn.inference.synthesize import Synthesizer
from brasyn.transform.preprocess import normalise
from brasyn.weights.store import WeightStore
from tests.helpers import FirstCondition

# case folder -> (files kept as the three inputs, the withheld file, expected output name)
CASES = {
    "BraTS-GLI-00001-000": ("-t2f.nii.gz", "BraTS-GLI-00001-000-t2f.nii.gz"),
    "BraTS-MET-00110-000": ("-t1c.nii.gz", "BraTS-MET-00110-000-t1c.nii.gz"),
    "TCGA-DU-7294": ("_t1c_bet.nii.gz", "TCGA-DU-7294_t1c_bet.nii.gz"),
    "preprocessed_case": ("t1n.nii.gz", "preprocessed_case-t1n.nii.gz"),
}


@pytest.fixture(scope="module")
def real_inputs(shared_dir, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Copies of the real cases with one contrast each left out; returns the root and the withheld files."""
    root = tmp_path_factory.mktemp("real")
    withheld = {}
    for case, (ending, _) in CASES.items():
        source = shared_dir / "data" / "real" / case
        (root / case).mkdir()
        for path in sorted(source.iterdir()):
            if path.name.endswith(ending):
                withheld[case] = path
            else:
                shutil.copy(path, root / case / path.name)
    return root, withheld


@pytest.mark.slow
def test_real_cases_come_back_on_their_own_grid_orientation_and_scale(real_inputs, tiny_weights, tmp_path):
    root, withheld = real_inputs
    output = tmp_path / "out"
    args = ["--input", str(root), "--output", str(output), "--weights", str(tiny_weights)]
    assert main([*args, "--sampler", "ddim", "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in output.iterdir()) == sorted(name for _, name in CASES.values())
    for case, (_, name) in CASES.items():
        truth = nib.load(withheld[case])
        inputs = [nib.load(p) for p in sorted((root / case).iterdir())]
        out = nib.load(output / name)
        assert out.shape == truth.shape == (240, 240, 155)
        np.testing.assert_allclose(out.affine, inputs[0].affine, atol=1e-6)
        assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(inputs[0].affine)
        assert out.get_data_dtype() == np.float32 and out.dataobj.slope == 1.0
        data = np.asanyarray(out.dataobj)
        background = np.all([np.asanyarray(i.dataobj) == 0 for i in inputs], axis=0)
        assert data.min() >= 0 and not data[background].any()
        # the estimated scale is that of the real contrast within a factor of a few, not [0, 1]
        ratio = np.percentile(data, 99.9) / np.percentile(truth.get_fdata(), 99.9)
        assert 0.1 < ratio < 10, (case, ratio)
    assert nib.aff2axcodes(nib.load(output / CASES["BraTS-MET-00110-000"][1]).affine) == ("R", "A", "S")


@pytest.mark.slow
def test_geometry_and_intensity_are_undone_exactly_on_real_files(real_inputs, tiny_weights, tmp_path):
    """With a 'model' that returns its first condition, the written file must be that input, normalised,
    thresholded and rescaled, voxel for voxel in the input's own orientation (RAS case included)."""
    root, _ = real_inputs
    store = WeightStore(tiny_weights)
    output = tmp_path / "out"
    synthesizer = Synthesizer(FirstCondition(lambda t: store.info(t).intensity_ratios), progress=False)
    batch = run_batch(discover(root), synthesizer, output)
    assert batch.counts == {"written": len(CASES), "skipped": 0, "failed": 0}
    from brasyn.data.modalities import conditions_for, modality_from_alias, parse_contrast_name

    for case, (_, name) in CASES.items():
        files = {parse_contrast_name(p.name, case).modality: p for p in (root / case).iterdir()}
        target = modality_from_alias(
            name.removesuffix(".nii.gz").replace("_bet", "").replace("_", "-").rsplit("-", 1)[-1]
        )
        first = conditions_for(target)[0]
        source = np.asanyarray(nib.load(files[first]).dataobj, dtype=np.float32)
        data = np.asanyarray(nib.load(output / name).dataobj)
        expected_unit = normalise(source)
        expected_unit[expected_unit <= 0.04] = 0
        brain = np.any([np.asanyarray(nib.load(p).dataobj) != 0 for p in files.values()], axis=0)
        expected_unit[~brain] = 0
        inside = data > 0
        scale = np.median(data[inside] / expected_unit[inside])
        ratios = store.info(target).intensity_ratios
        estimates = [
            ratios[m] * np.percentile(np.asanyarray(nib.load(files[m]).dataobj, dtype=np.float64), 99.9)
            for m in conditions_for(target)
        ]
        assert scale == pytest.approx(np.median(estimates), rel=1e-4)
        np.testing.assert_allclose(data, expected_unit * scale, rtol=1e-5, atol=1e-3 * scale)
