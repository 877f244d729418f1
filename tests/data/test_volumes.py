import gzip

import nibabel as nib
import numpy as np
import pytest

from brasyn.common.errors import CaseError
from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.data.volumes import (
    TEMP_PREFIX,
    check_same_grid,
    load_volume,
    remove_stale_temporaries,
    write_volume,
)
from tests.helpers import save_nifti


def test_load_reads_float32_with_the_scale_slope_applied(tmp_path):
    data = phantom((8, 8, 8))
    path = save_nifti(tmp_path / "a.nii.gz", data, dtype=np.int16)
    volume = load_volume(path, "c")
    assert volume.data.dtype == np.float32
    assert volume.shape == (8, 8, 8)
    np.testing.assert_allclose(volume.data, np.asanyarray(nib.load(path).dataobj), rtol=1e-6)
    np.testing.assert_array_equal(volume.affine, BRATS_AFFINE)


def test_singleton_fourth_axis_is_squeezed(tmp_path):
    path = save_nifti(tmp_path / "a.nii.gz", phantom((8, 8, 8))[..., None])
    assert load_volume(path, "c").shape == (8, 8, 8)


@pytest.mark.parametrize(
    "data,expected",
    [
        (np.ones((8, 8, 8, 2), np.float32), "single 3-D volume"),
        (np.ones((8, 8), np.float32), "single 3-D volume"),
        (np.zeros((8, 8, 8), np.float32), "empty"),
    ],
)
def test_wrong_dimensionality_or_empty_volume_is_a_case_error(tmp_path, data, expected):
    path = save_nifti(tmp_path / "bad.nii.gz", data)
    with pytest.raises(CaseError, match=expected) as info:
        load_volume(path, "case7")
    assert info.value.case == "case7"
    assert "bad.nii.gz" in info.value.message
    assert info.value.files == (path,)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_are_counted_in_the_error(tmp_path, value):
    data = phantom((8, 8, 8))
    data[0, 0, :3] = value
    path = save_nifti(tmp_path / "nan.nii.gz", data)
    with pytest.raises(CaseError, match="3 NaN or infinite voxels"):
        load_volume(path, "c")


def test_truncated_gzip_is_a_case_error(tmp_path):
    path = save_nifti(tmp_path / "t.nii.gz", phantom((16, 16, 16)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CaseError, match=r"truncated or corrupt|cannot be read") as info:
        load_volume(path, "c")
    assert "t.nii.gz" in info.value.message


def test_garbage_file_is_a_case_error(tmp_path):
    path = tmp_path / "g.nii.gz"
    path.write_bytes(gzip.compress(b"not an image at all" * 10))
    with pytest.raises(CaseError, match=r"g\.nii\.gz"):
        load_volume(path, "c")
    plain = tmp_path / "p.nii"
    plain.write_bytes(b"\x00" * 10)
    with pytest.raises(CaseError, match=r"p\.nii"):
        load_volume(plain, "c")


def test_grids_must_match_in_shape_and_affine(tmp_path):
    a = load_volume(save_nifti(tmp_path / "a.nii.gz", phantom((8, 8, 8))), "c")
    b = load_volume(save_nifti(tmp_path / "b.nii.gz", phantom((8, 8, 10))), "c")
    shifted = BRATS_AFFINE.copy()
    shifted[0, 3] += 0.5
    c = load_volume(save_nifti(tmp_path / "c.nii.gz", phantom((8, 8, 8)), shifted), "c")
    close = BRATS_AFFINE.copy()
    close[0, 3] += 1e-4
    d = load_volume(save_nifti(tmp_path / "d.nii.gz", phantom((8, 8, 8)), close), "c")
    check_same_grid({"a": a, "d": d}, "c")
    with pytest.raises(CaseError, match="shape") as info:
        check_same_grid({"a": a, "b": b}, "c")
    assert "a.nii.gz" in info.value.message and "b.nii.gz" in info.value.message
    with pytest.raises(CaseError, match="affines"):
        check_same_grid({"a": a, "c": c}, "c")


def test_written_volume_is_float32_without_scaling_on_the_input_header(tmp_path):
    source = save_nifti(tmp_path / "in.nii.gz", phantom((8, 8, 8)), dtype=np.int16)
    reference = load_volume(source, "c")
    out = tmp_path / "out" / "case-t2f.nii.gz"
    out.parent.mkdir()
    data = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32) * 1234.5
    write_volume(data, reference, out, description="brasyn synthetic t2f")
    image = nib.load(out)
    assert image.get_data_dtype() == np.float32
    assert image.dataobj.slope == 1.0 and image.dataobj.inter == 0.0
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), data)
    np.testing.assert_array_equal(image.affine, reference.affine)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    assert image.header["descrip"].tobytes().startswith(b"brasyn synthetic t2f")
    assert sorted(p.name for p in out.parent.iterdir()) == ["case-t2f.nii.gz"]


def test_write_refuses_a_grid_mismatch_and_leaves_nothing(tmp_path):
    reference = load_volume(save_nifti(tmp_path / "in.nii.gz", phantom((8, 8, 8))), "c")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ValueError):
        write_volume(np.ones((8, 8, 9), np.float32), reference, out_dir / "x.nii.gz")
    assert list(out_dir.iterdir()) == []


def test_only_temporaries_of_dead_runs_are_removed(tmp_path):
    """A killed run's temporary (its process gone, or too old to be a live write) goes; a live run's
    temporary, and a user's own file that merely looks like ours, stay."""
    import os
    import subprocess
    import sys
    import time

    from brasyn.data.volumes import HOST, STALE_AFTER_S, temporary_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed = tmp_path / f"{TEMP_PREFIX}{dead.pid}.{HOST}.abc.tmp"
        running = tmp_path / f"{TEMP_PREFIX}{live.pid}.{HOST}.def.tmp"
        mine = tmp_path / f"{temporary_prefix()}ghi.tmp"
        elsewhere = tmp_path / f"{TEMP_PREFIX}{live.pid}.0000abcd.jkl.tmp"
        old = tmp_path / f"{TEMP_PREFIX}{live.pid}.0000abcd.mno.tmp"
        users = tmp_path / f"{TEMP_PREFIX}abc.tmp"
        other = tmp_path / ".hidden-user-file"
        for path in (killed, running, mine, elsewhere, old, users, other):
            path.write_bytes(b"x")
        long_ago = time.time() - STALE_AFTER_S - 60
        os.utime(old, (long_ago, long_ago))
        assert sorted(remove_stale_temporaries(tmp_path)) == sorted([killed, old])
        assert all(p.exists() for p in (running, mine, elsewhere, users, other))
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("extension", [".nii.gz", ".nii", ".mha", ".mhd", ".nrrd"])
def test_the_settings_record_is_written_into_the_output_and_read_back(tmp_path, extension):
    from brasyn.data.provenance import read_record

    reference = load_volume(save_nifti(tmp_path / "ref.nii.gz", phantom((8, 8, 8))), "c")
    record = {"method": "diffusion", "sampler": "x0", "steps": 1, "eta": 0.0, "weights": "ab" * 32, "seed": 3}
    path = tmp_path / f"out{extension}"
    write_volume(reference.data, reference, path, description="brasyn test", record=record)
    assert read_record(path) == record
    first = path.read_bytes()
    write_volume(
        reference.data, reference, path, description="brasyn test", record=dict(reversed(record.items()))
    )
    assert path.read_bytes() == first  # key order does not matter: the same settings, the same bytes
    np.testing.assert_array_equal(load_volume(path, "c").data, reference.data)
    if extension.startswith(".nii"):
        assert nib.load(path).header["descrip"].item() == b"brasyn test"


def test_an_input_that_is_an_output_passes_its_other_extensions_on_but_not_its_record(tmp_path):
    from brasyn.data.provenance import read_record

    source = save_nifti(tmp_path / "src.nii.gz", phantom((8, 8, 8)))
    image = nib.load(source)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a note of the scanner"))
    nib.save(image, tmp_path / "in.nii.gz")
    reference = load_volume(tmp_path / "in.nii.gz", "c")
    write_volume(reference.data, reference, tmp_path / "first.nii.gz", record={"method": "linear"})
    again = load_volume(tmp_path / "first.nii.gz", "c")
    write_volume(again.data, again, tmp_path / "second.nii.gz", record={"method": "nearest"})
    assert read_record(tmp_path / "second.nii.gz") == {"method": "nearest"}
    contents = [bytes(e.get_content()) for e in nib.load(tmp_path / "second.nii.gz").header.extensions]
    assert contents == [b"a note of the scanner", b'{"brasyn":{"method":"nearest"}}']
    write_volume(again.data, again, tmp_path / "third.nii.gz")
    assert read_record(tmp_path / "third.nii.gz") is None
