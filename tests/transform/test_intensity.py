import numpy as np
import pytest

from brasyn.transform.intensity import OUTPUT_THRESHOLD, estimate_scale, high_percentile, restore_intensity


def test_scale_is_the_median_of_the_three_ratio_estimates():
    percentiles = {"t1n": 1000.0, "t1c": 2000.0, "t2w": 500.0}
    ratios = {"t1n": 0.9, "t1c": 0.2, "t2w": 3.0}
    assert estimate_scale(percentiles, ratios) == pytest.approx(900.0)  # median of 900, 400, 1500


def test_scale_ignores_conditions_without_signal_and_refuses_when_none_is_left():
    assert estimate_scale({"a": 0.0, "b": 10.0}, {"a": 5.0, "b": 2.0}) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        estimate_scale({"a": 0.0}, {"a": 1.0})


def test_restored_image_is_scaled_zero_outside_the_brain_and_never_negative():
    image = np.array([0.5, OUTPUT_THRESHOLD, 0.03, 1.0, 0.8], np.float32)
    brain = np.array([True, True, True, True, False])
    out = restore_intensity(image, 200.0, brain)
    np.testing.assert_allclose(out, [100.0, 0.0, 0.0, 200.0, 0.0])
    assert out.dtype == np.float32 and out.min() >= 0


def test_high_percentile_is_the_99_9th():
    data = np.arange(100001, dtype=np.float32)
    assert high_percentile(data) == pytest.approx(99900.0)
