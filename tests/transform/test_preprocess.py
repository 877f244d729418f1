import numpy as np
import pytest

from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.transform.preprocess import (
    BRATS_SHAPE,
    normalise,
    plan_geometry,
    prepare,
    restore_geometry,
    to_model,
)

RAS_AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _reference_clip_and_normalise(img):
    # the official preprocessing, written out from its description
    clipped = np.clip(img, np.quantile(img, 0.001), np.quantile(img, 0.999))
    return (clipped - clipped.min()) / (clipped.max() - clipped.min())


def test_normalise_matches_the_official_clip_and_min_max():
    data = phantom((20, 24, 16), seed=3, scale=500.0).astype(np.float64)
    data[0, 0, 0] = -40.0  # interpolation undershoot, as in real files
    out = normalise(data)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _reference_clip_and_normalise(data), atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0


def test_normalise_of_a_constant_volume_is_zero_not_nan():
    assert not normalise(np.full((4, 4, 4), 7.0)).any()


def test_brats_volume_gets_exactly_the_official_window():
    vol = np.zeros(BRATS_SHAPE, np.float32)
    vol[30:200, 40:210, 10:150] = phantom((170, 170, 140), seed=1)
    geometry = plan_geometry(BRATS_AFFINE, vol.shape, vol != 0)
    assert geometry.model_shape == (224, 224, 160)
    model = to_model(vol, geometry)
    official = np.zeros((240, 240, 160), np.float32)
    official[:, :, :155] = vol
    np.testing.assert_array_equal(model, official[8:-8, 8:-8, :])
    # the official inverse: pad 8 in-plane, keep the first 155 slices
    np.testing.assert_array_equal(
        restore_geometry(model, geometry), np.pad(model, ((8, 8), (8, 8), (0, 0)))[:, :, :155]
    )
    np.testing.assert_array_equal(restore_geometry(model, geometry), vol)


def test_brats_volume_with_brain_at_the_border_keeps_every_brain_voxel():
    vol = np.zeros(BRATS_SHAPE, np.float32)
    vol[2:200, 40:210, 10:150] = 1.0  # brain reaches into the 8 voxels the official crop drops
    geometry = plan_geometry(BRATS_AFFINE, vol.shape, vol != 0)
    assert all(s % 32 == 0 for s in geometry.model_shape)
    assert to_model(vol, geometry).sum() == vol.sum()
    np.testing.assert_array_equal(restore_geometry(to_model(vol, geometry), geometry), vol)


@pytest.mark.parametrize(
    "shape,box",
    [
        (
            (200, 230, 170),
            ((20, 180), (30, 200), (10, 160)),
        ),  # larger than the window: cropped around the brain
        ((100, 90, 70), ((5, 95), (5, 85), (3, 67))),  # smaller: padded
        ((256, 256, 256), ((40, 220), (30, 230), (60, 200))),
        ((33, 250, 31), ((0, 33), (0, 250), (0, 31))),  # brain touching every border
    ],
)
def test_other_sizes_fit_multiples_of_32_without_losing_a_brain_voxel(shape, box):
    vol = np.zeros(shape, np.float32)
    slices = tuple(slice(lo, hi) for lo, hi in box)
    vol[slices] = np.random.default_rng(0).random(tuple(hi - lo for lo, hi in box)) + 0.5
    geometry = plan_geometry(BRATS_AFFINE, shape, vol != 0)
    assert all(s % 32 == 0 for s in geometry.model_shape), geometry.model_shape
    model = to_model(vol, geometry)
    assert np.count_nonzero(model) == np.count_nonzero(vol)
    np.testing.assert_array_equal(restore_geometry(model, geometry), vol)


def test_ras_stored_volume_is_reoriented_to_lps_and_back():
    lps = phantom((48, 56, 40), seed=2)
    ras = lps[::-1, ::-1, :].copy()  # the same head stored the other way round
    ras_affine = RAS_AFFINE.copy()
    g_lps = plan_geometry(BRATS_AFFINE, lps.shape, lps != 0)
    g_ras = plan_geometry(ras_affine, ras.shape, ras != 0)
    np.testing.assert_array_equal(to_model(ras, g_ras), to_model(lps, g_lps))
    np.testing.assert_array_equal(restore_geometry(to_model(ras, g_ras), g_ras), ras)


def test_permuted_axes_are_reoriented_and_restored():
    lps = phantom((48, 56, 40), seed=4)
    stored = np.transpose(lps, (2, 0, 1)).copy()  # axes stored as S, L, P
    affine = np.zeros((4, 4))
    affine[0, 1] = -1.0  # stored axis 1 runs to the left ...
    affine[1, 2] = -1.0
    affine[2, 0] = 1.0
    affine[3, 3] = 1.0
    geometry = plan_geometry(affine, stored.shape, stored != 0)
    np.testing.assert_array_equal(
        to_model(stored, geometry), to_model(lps, plan_geometry(BRATS_AFFINE, lps.shape, lps != 0))
    )
    np.testing.assert_array_equal(restore_geometry(to_model(stored, geometry), geometry), stored)


def test_prepare_stacks_normalised_contrasts_and_returns_the_brain():
    vols = [phantom((48, 56, 40), seed=s, scale=100.0 * (s + 1)) for s in range(3)]
    stack, geometry, brain = prepare(vols, BRATS_AFFINE)
    assert stack.shape == (3, *geometry.model_shape) and stack.dtype == np.float32
    assert stack.min() >= 0 and stack.max() <= 1
    np.testing.assert_array_equal(brain, (vols[0] != 0) | (vols[1] != 0) | (vols[2] != 0))
    np.testing.assert_allclose(restore_geometry(stack[1], geometry), normalise(vols[1]), atol=0)


def test_real_cases_round_trip_in_their_own_orientation(shared_dir):
    import nibabel as nib

    for case, name in [
        ("BraTS-GLI-00001-000", "BraTS-GLI-00001-000-t1c.nii.gz"),
        ("BraTS-MET-00110-000", "BraTS-MET-00110-000-t1c.nii.gz"),
    ]:
        image = nib.load(shared_dir / "data" / "real" / case / name)
        data = image.get_fdata(dtype=np.float32)
        geometry = plan_geometry(image.affine, data.shape, data != 0)
        assert geometry.model_shape == (224, 224, 160), case
        np.testing.assert_array_equal(restore_geometry(to_model(data, geometry), geometry), data)
    # the RAS-stored MET case lands in model space like a BraTS-stored (LPS) one: flipped in i and j
    met = nib.load(shared_dir / "data" / "real" / "BraTS-MET-00110-000" / "BraTS-MET-00110-000-t1c.nii.gz")
    assert nib.aff2axcodes(met.affine) == ("R", "A", "S")
    data = met.get_fdata(dtype=np.float32)
    g = plan_geometry(met.affine, data.shape, data != 0)
    lps_stored = data[::-1, ::-1, :]
    np.testing.assert_array_equal(
        to_model(data, g), to_model(lps_stored, plan_geometry(BRATS_AFFINE, data.shape, lps_stored != 0))
    )
