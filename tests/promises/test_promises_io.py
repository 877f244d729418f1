"""What the README promises about files and grids, each checked where breaking it would show: the header
codes kept, the `.mhd` header renamed last, a case mixing formats, the Otsu foreground of heads that are
not skull-stripped, and the warning for contrasts that overlap less than co-registered ones do."""

from __future__ import annotations

import logging
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import brasyn.data.volumes
from brasyn.commands.cli import DEFAULT_WEIGHTS, main
from brasyn.common.errors import CaseError
from brasyn.data.modalities import Modality
from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.data.volumes import load_volume, write_volume
from brasyn.transform.resample import foreground, plan_grid
from tests.helpers import make_case, save_nifti

LINEAR = ["--method", "linear", "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu", "--no-progress"]


def test_qform_and_sform_codes_other_than_1_are_kept_in_the_output(tmp_path):
    """The real TCGA-DU-7294 inputs have qform_code 2; the output must say the same of its space."""
    case = tmp_path / "in" / "P1"
    for i, m in enumerate(("t1n", "t1c", "t2w")):
        image = nib.Nifti1Image(phantom(seed=i, scale=200.0 * (i + 1)), BRATS_AFFINE)
        image.header.set_qform(BRATS_AFFINE, code=2)  # aligned to another scan
        image.header.set_sform(BRATS_AFFINE, code=4)  # MNI space
        case.mkdir(parents=True, exist_ok=True)
        nib.save(image, case / f"P1-{m}.nii.gz")
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *LINEAR]) == 0
    out = nib.load(tmp_path / "out" / "P1-t2f.nii.gz")
    assert int(out.header["qform_code"]) == 2 and int(out.header["sform_code"]) == 4
    np.testing.assert_allclose(out.affine, BRATS_AFFINE)


def test_an_mhd_output_exists_only_once_its_header_is_renamed_last(tmp_path, monkeypatch):
    reference = load_volume(save_nifti(tmp_path / "a-t1n.nii.gz", phantom((16, 20, 12))), "a")
    out = tmp_path / "out"
    out.mkdir()
    renamed: list[str] = []
    real_replace = os.replace

    def stop_after_the_first_rename(src, dst):
        renamed.append(os.path.basename(dst))
        if len(renamed) == 2:
            raise KeyboardInterrupt  # the run is stopped between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(brasyn.data.volumes.os, "replace", stop_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        write_volume(reference.data, reference, out / "a-t2f.mhd")
    assert renamed == ["a-t2f.zraw", "a-t2f.mhd"]
    # what an interrupted write leaves: at most the pixel file, never a header naming missing pixels
    assert sorted(p.name for p in out.iterdir()) == ["a-t2f.zraw"]

    monkeypatch.setattr(brasyn.data.volumes.os, "replace", real_replace)
    write_volume(reference.data * 2, reference, out / "a-t2f.mhd")  # the next run overwrites it
    assert sorted(p.name for p in out.iterdir()) == ["a-t2f.mhd", "a-t2f.zraw"]
    assert "ElementDataFile = a-t2f.zraw" in (out / "a-t2f.mhd").read_text()
    np.testing.assert_allclose(load_volume(out / "a-t2f.mhd", "a").data, reference.data * 2, rtol=1e-6)


def test_a_case_mixing_formats_is_read_and_answered_in_its_most_common_format(tmp_path):
    paths = make_case(tmp_path / "in", "M1", seed=3)
    for m in ("t1c", "t2w"):  # two MetaImages and one NIfTI on the same grid
        nifti = paths[m]
        sitk.WriteImage(sitk.ReadImage(str(nifti)), str(nifti.with_name(f"M1-{m}.mha")))
        nifti.unlink()
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *LINEAR]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["M1-t2f.mha"]
    written = load_volume(tmp_path / "out" / "M1-t2f.mha", "M1")
    np.testing.assert_allclose(written.affine, BRATS_AFFINE, atol=1e-4)
    assert written.shape == nib.load(paths["t1n"]).shape and written.data.max() > 0


def _unstripped(seed: int, shape=(48, 56, 40)) -> np.ndarray:
    """A head as a scanner writes it: dim noise everywhere (no voxel exactly 0) around a bright head."""
    rng = np.random.default_rng(100 + seed)
    return phantom(shape, seed=seed, scale=1000.0) + rng.uniform(5.0, 30.0, shape).astype(np.float32)


def test_the_foreground_of_a_head_that_is_not_skull_stripped_is_the_head_not_the_field_of_view():
    data = _unstripped(1)
    head = phantom((48, 56, 40), seed=1) > 0
    mask = foreground(data)
    assert (data != 0).all()
    assert (mask == head).mean() > 0.99


def test_unstripped_contrasts_that_do_not_overlap_are_refused_and_aligned_ones_pass(tmp_path):
    """Without the Otsu threshold every voxel of an unstripped image is foreground, so two shifted heads
    would overlap wherever their fields of view do."""
    thick = BRATS_AFFINE.copy()
    thick[:3, 2] *= 2.0  # 2 mm slices: the case must be resampled, so the overlap is checked
    volumes = {
        Modality.T1N: load_volume(save_nifti(tmp_path / "a.nii.gz", _unstripped(1)), "c"),
        Modality.T1C: load_volume(save_nifti(tmp_path / "b.nii.gz", _unstripped(2)), "c"),
        Modality.T2W: load_volume(save_nifti(tmp_path / "d.nii.gz", _unstripped(3)[:, :, ::2], thick), "c"),
    }
    assert plan_grid(volumes, "c").overlap > 0.85
    shifted = thick.copy()
    shifted[:3, 3] += (24.0, 0.0, 0.0)  # a whole head 24 mm sideways, within the others' field of view
    volumes[Modality.T2W] = load_volume(
        save_nifti(tmp_path / "e.nii.gz", _unstripped(3)[:, :, ::2], shifted), "c"
    )
    with pytest.raises(CaseError, match="not co-registered"):
        plan_grid(volumes, "c")


def test_contrasts_overlapping_below_085_run_with_a_warning_naming_them(tmp_path, caplog):
    volumes = {
        Modality.T1N: load_volume(save_nifti(tmp_path / "a.nii.gz", phantom(seed=1)), "c"),
        Modality.T1C: load_volume(save_nifti(tmp_path / "b.nii.gz", phantom(seed=2)), "c"),
    }
    near = BRATS_AFFINE.copy()
    near[:3, 3] += (6.0, 0.0, 0.0)
    volumes[Modality.T2W] = load_volume(save_nifti(tmp_path / "near.nii.gz", phantom(seed=3), near), "c")
    with caplog.at_level(logging.WARNING, logger="brasyn"):
        plan = plan_grid(volumes, "c")
    assert 0.5 <= plan.overlap < 0.85
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "near.nii.gz" in warnings[0] and "alignment" in warnings[0]

    caplog.clear()
    aligned = BRATS_AFFINE.copy()
    aligned[:3, 2] *= 2.0
    volumes[Modality.T2W] = load_volume(
        save_nifti(tmp_path / "thick.nii.gz", phantom(seed=3)[:, :, ::2], aligned), "c"
    )
    with caplog.at_level(logging.WARNING, logger="brasyn"):
        assert plan_grid(volumes, "c").overlap >= 0.85
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
