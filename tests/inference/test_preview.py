"""The --extras preview: a labelled figure through the lesion, the same layout whatever the target."""

from __future__ import annotations

import re

import numpy as np
import pytest

from brasyn.data.modalities import MODALITIES, Modality
from brasyn.inference.preview import MIN_LESION_MM3, panels, preview_figure, slice_centre, write_preview

pytest.importorskip("matplotlib")

SHAPE = (64, 72, 48)


def _head(blob_at: tuple[int, int, int] | None = (44, 20, 30), radius: int = 6):
    """A brain-like ellipsoid of moderate FLAIR signal with noise and, optionally, a bright ball off centre."""
    grid = np.indices(SHAPE).astype(np.float32)
    centre = np.array(SHAPE, dtype=np.float32)[:, None, None, None] / 2
    half = np.array(SHAPE, dtype=np.float32)[:, None, None, None] * 0.45
    brain = (((grid - centre) / half) ** 2).sum(axis=0) <= 1
    rng = np.random.default_rng(0)
    flair = np.where(brain, 0.4 + 0.02 * rng.standard_normal(SHAPE), 0.0).astype(np.float32)
    if blob_at is not None:
        ball = ((grid - np.array(blob_at)[:, None, None, None]) ** 2).sum(axis=0) <= radius**2
        flair[ball & brain] = 0.9
    return flair, brain


def _texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]


def test_slices_pass_through_an_off_centre_bright_blob():
    flair, brain = _head(blob_at=(44, 20, 30))
    centre, where = slice_centre(flair, brain)
    assert where == "lesion"
    assert np.abs(np.array(centre) - (44, 20, 30)).max() <= 1


def test_without_a_lesion_the_slices_pass_through_the_brain_centre():
    flair, brain = _head(blob_at=None)
    centre, where = slice_centre(flair, brain)
    assert where == "brain centre"
    assert np.abs(np.array(centre) - np.array(SHAPE) / 2).max() <= 1


def test_a_bright_speck_below_the_size_limit_is_not_a_lesion():
    flair, brain = _head(blob_at=(44, 20, 30), radius=2)  # about 33 voxels
    assert (flair > 0.8).sum() < MIN_LESION_MM3
    assert slice_centre(flair, brain)[1] == "brain centre"


def test_the_largest_of_two_bright_regions_is_chosen():
    flair, brain = _head(blob_at=(44, 20, 30), radius=6)
    small, _ = _head(blob_at=(20, 50, 20), radius=5)
    flair = np.maximum(flair, small)
    centre, _ = slice_centre(flair, brain)
    assert np.abs(np.array(centre) - (44, 20, 30)).max() <= 1


def test_edge_letters_follow_the_axis_codes():
    volume = np.zeros(SHAPE, dtype=np.float32)
    axial, coronal, sagittal = panels(volume, (1, 2, 3), ("L", "P", "S"))
    # radiological: patient right on the left, anterior and superior at the top
    assert (axial.left, axial.right, axial.top, axial.bottom) == ("R", "L", "A", "P")
    assert (coronal.left, coronal.right, coronal.top, coronal.bottom) == ("R", "L", "S", "I")
    assert (sagittal.left, sagittal.right, sagittal.top, sagittal.bottom) == ("A", "P", "S", "I")
    flipped = panels(volume, (1, 2, 3), ("R", "A", "S"))[0]
    assert (flipped.left, flipped.right, flipped.top, flipped.bottom) == ("L", "R", "P", "A")


def test_panels_are_the_slices_through_the_centre():
    volume = np.random.default_rng(1).random(SHAPE).astype(np.float32)
    axial, coronal, sagittal = panels(volume, (5, 6, 7), ("L", "P", "S"))
    np.testing.assert_array_equal(axial.image, volume[:, :, 7].T)
    np.testing.assert_array_equal(coronal.image[::-1], volume[:, 6, :].T)
    np.testing.assert_array_equal(sagittal.image[::-1], volume[5, :, :].T)


@pytest.mark.parametrize("target", ["t1n", "t2w", "t2f"])
def test_the_figure_names_case_target_contrasts_and_planes_in_a_fixed_order(target):
    rng = np.random.default_rng(2)
    volumes = {m: rng.random(SHAPE).astype(np.float32) for m in MODALITIES}
    synthetic = Modality(target)
    figure = preview_figure(volumes, synthetic, f"c1 - target {target} - diffusion", (30, 30, 20))
    axes = figure.axes
    assert len(axes) == 12
    titles = [ax.get_title() for ax in axes[:4]]
    expected = [f"{m.value} (synthetic)" if m is synthetic else m.value for m in MODALITIES]
    assert titles == expected  # t1n, t1c, t2w, t2f whatever the target
    assert [axes[r * 4].get_ylabel() for r in range(3)] == ["axial", "coronal", "sagittal"]
    assert figure._suptitle.get_text() == f"c1 - target {target} - diffusion"
    column = [m.value for m in MODALITIES].index(target)
    framed = [i % 4 for i, ax in enumerate(axes) if ax.spines["left"].get_linewidth() > 1]
    assert framed == [column] * 3
    texts = _texts(figure)
    for letter in "RLAPSI":
        assert letter in texts
    # each panel shows its own contrast
    shown = axes[column].images[0].get_array()
    np.testing.assert_array_equal(np.asarray(shown), volumes[synthetic][:, :, 20].T)


def test_the_preview_png_is_written_whole_and_readable(tmp_path):
    import matplotlib.image

    volumes = {m: np.random.default_rng(3).random(SHAPE).astype(np.float32) for m in MODALITIES}
    figure = preview_figure(volumes, Modality.T2F, "c1", (30, 30, 20))
    path = tmp_path / "c1-t2f.png"
    write_preview(path, figure, "model grid 64x72x48")
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 300
    assert [p.name for p in tmp_path.iterdir()] == ["c1-t2f.png"]  # no temporary left
    assert b"model grid 64x72x48" in path.read_bytes()


def test_extras_without_matplotlib_is_refused_before_the_run(tmp_path, monkeypatch):
    import brasyn.inference.batch
    from brasyn.common.errors import UsageError

    (tmp_path / "in").mkdir()
    monkeypatch.setattr(brasyn.inference.batch, "matplotlib_available", lambda: False)
    with pytest.raises(UsageError, match=r"matplotlib, which is not installed.*pip install matplotlib"):
        brasyn.inference.batch.check_folders(tmp_path / "in", tmp_path / "out", extras=tmp_path / "previews")
    assert not (tmp_path / "previews").exists()
    brasyn.inference.batch.check_folders(
        tmp_path / "in", tmp_path / "out2"
    )  # without --extras it is not needed


def test_each_column_is_windowed_on_its_own_brain_so_a_bright_brain_is_not_drawn_white():
    flair, brain = _head(blob_at=None)
    rng = np.random.default_rng(4)
    # t1n after min-max scaling: the whole brain bright, in 0.7-1.0
    t1n = np.where(brain, 0.7 + 0.3 * rng.random(SHAPE), 0.0).astype(np.float32)
    volumes = {m: flair for m in MODALITIES} | {Modality.T1N: t1n}
    figure = preview_figure(volumes, Modality.T2F, "c1", (32, 36, 24))
    shown = figure.axes[0].images[0]
    low, high = shown.get_clim()
    assert (low, high) == pytest.approx(tuple(np.percentile(t1n[brain], [0.5, 99.5])))
    inside = np.asarray(shown.get_array())[brain[:, :, 24].T]
    grey = (inside - low) / (high - low)
    assert np.percentile(grey, 5) < 0.2 and np.percentile(grey, 95) > 0.8  # the full grey range, not white
    assert figure.axes[3].images[0].get_clim() == pytest.approx(
        tuple(np.percentile(flair[brain], [0.5, 99.5]))
    )


def test_each_panel_names_its_slice():
    volumes = {m: np.random.default_rng(5).random(SHAPE).astype(np.float32) for m in MODALITIES}
    texts = _texts(preview_figure(volumes, Modality.T2F, "c1", (30, 31, 20)))
    # axial through z = 20 of 48, coronal through y = 31 of 72, sagittal through x = 30 of 64; every column
    for label in ("slice 20 of 48", "slice 31 of 72", "slice 30 of 64"):
        assert texts.count(label) == 4, texts


@pytest.mark.parametrize("weights", ["random", "demo"])
def test_a_preview_says_it_is_synthetic_and_not_for_diagnosis_and_names_demo_or_random_weights(
    tmp_path, tiny_weights, monkeypatch, weights
):
    from PIL import Image

    import brasyn.inference.preview
    from brasyn.commands.cli import DEFAULT_WEIGHTS, main
    from tests.helpers import make_case

    drawn = []
    real_write = brasyn.inference.preview.write_preview

    def keep(path, figure, description=""):
        drawn.append(figure)
        real_write(path, figure, description)

    monkeypatch.setattr(brasyn.inference.preview, "write_preview", keep)
    make_case(tmp_path / "in", "c1", seed=1, shape=(48, 56, 40))
    folder = {"random": tiny_weights, "demo": DEFAULT_WEIGHTS}[weights]
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(folder)]
    extras = tmp_path / "previews"
    assert main([*args, "--sampler", "x0", "--device", "cpu", "--no-progress", "--extras", str(extras)]) == 0
    note = {
        "random": "RANDOM WEIGHTS (python -m brasyn.weights init): noise, for tests only",
        "demo": "DEMO WEIGHTS: the bundled small model, not the released cWDM checkpoints; demo quality",
    }[weights]
    (figure,) = drawn
    texts = _texts(figure)
    assert "SYNTHETIC IMAGE, NOT FOR DIAGNOSIS" in texts and note in texts
    record = Image.open(extras / "c1-t2f.png").text["Description"]
    assert record.endswith(f"; SYNTHETIC IMAGE, NOT FOR DIAGNOSIS; {note}"), record
    found = re.search(
        r"at voxel \((\d+), (\d+), (\d+)\): axial slice (\d+), coronal slice (\d+), sagittal slice (\d+)",
        record,
    )
    assert found, record
    x, y, z, axial, coronal, sagittal = (int(g) for g in found.groups())
    assert (axial, coronal, sagittal) == (z, y, x)
    assert "each column windowed on its brain's 0.5-99.5th percentiles" in record
