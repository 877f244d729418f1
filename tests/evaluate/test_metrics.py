import math

import numpy as np
import pytest
import torch
from torchmetrics.image import StructuralSimilarityIndexMeasure

from brasyn.data.phantom import phantom
from brasyn.evaluate.metrics import mse, percentile_normalise, psnr, score, ssim, ssim_inside, ssim_regions


def test_normalisation_clips_each_image_to_its_own_percentiles_and_scales_to_unit_range():
    volume = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    lo, hi = np.percentile(volume, [0.5, 99.5])
    out = percentile_normalise(volume)
    assert out.dtype == np.float32
    assert out.min() == 0 and out.max() == 1
    np.testing.assert_allclose(out, (np.clip(volume, lo, hi) - lo) / (hi - lo), rtol=1e-6)
    # scaling the image does not change its normalised form
    np.testing.assert_allclose(percentile_normalise(volume * 37.0), out, atol=1e-6)


def test_normalisation_lower_bound_is_never_below_zero():
    volume = phantom((24, 24, 24), seed=1)
    volume[volume == 0] = -50.0  # interpolation undershoot in the background
    out = percentile_normalise(volume)
    hi = np.percentile(volume, 99.5)
    np.testing.assert_allclose(out, np.clip(volume, 0, hi) / hi, rtol=1e-6)


def test_a_constant_image_normalises_to_zeros_not_nan():
    assert not percentile_normalise(np.full((8, 8, 8), 3.0)).any()


def test_ssim_is_torchmetrics_default_on_the_volume_as_a_batch_of_one():
    rng = np.random.default_rng(0)
    truth = percentile_normalise(phantom((24, 24, 24), seed=2))
    prediction = np.clip(truth + 0.1 * rng.standard_normal(truth.shape), 0, 1).astype(np.float32)
    expected = StructuralSimilarityIndexMeasure()(
        torch.from_numpy(prediction)[None, None], torch.from_numpy(truth)[None, None]
    )
    assert ssim(prediction, truth) == pytest.approx(float(expected), abs=1e-6)
    assert ssim(truth, truth) == pytest.approx(1.0, abs=1e-6)
    assert ssim(prediction, truth) < 0.99


def test_regional_ssim_averages_the_masked_ssim_map_over_each_region():
    truth = percentile_normalise(phantom((24, 24, 24), seed=3))
    prediction = truth.copy()
    mask = np.zeros(truth.shape, dtype=bool)
    mask[4:10, 4:10, 4:10] = True
    prediction[mask] = 1.0 - prediction[mask]  # wrong inside the tumour only
    inside, outside = ssim_regions(prediction, truth, mask)
    weight = torch.from_numpy(mask.astype(np.float32))[None, None]
    _, full = StructuralSimilarityIndexMeasure(return_full_image=True)(
        torch.from_numpy(prediction)[None, None] * weight, torch.from_numpy(truth)[None, None] * weight
    )
    assert inside == pytest.approx(float(full[0, 0][torch.from_numpy(mask)].mean()), abs=1e-6)
    assert inside < 0.9 < outside
    assert ssim_regions(truth, truth, np.zeros(truth.shape)) == (None, pytest.approx(1.0, abs=1e-6))
    assert ssim_inside(prediction, truth, mask) == inside
    assert ssim_inside(truth, truth, np.zeros(truth.shape)) is None


def test_mse_and_psnr_on_unit_range_images():
    a, b = np.zeros((4, 4, 4)), np.full((4, 4, 4), 0.1)
    assert mse(a, b) == pytest.approx(0.01)
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == math.inf


def test_score_normalises_each_image_independently():
    truth = phantom((24, 24, 24), seed=4, scale=1000.0)
    result = score(truth * 0.01, truth, tumour=truth > 1400)
    assert result["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result["mse"] == pytest.approx(0.0, abs=1e-10)
    assert set(result) == {
        "ssim",
        "mse",
        "psnr",
        "ssim_tumor",
        "ssim_non_tumor",
        "ssim_brain",
        "mse_brain",
        "psnr_brain",
    }
    assert set(score(truth, truth)) == {"ssim", "mse", "psnr", "ssim_brain", "mse_brain", "psnr_brain"}


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differs from truth shape"):
        score(np.zeros((16, 16, 16)), np.zeros((16, 16, 12)))
