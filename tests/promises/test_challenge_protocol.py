"""Evaluation exactly as the BraSyn organisers run it: their truth layouts, their 2024-2025 SSIMs (checked
against an independent implementation written from their procedure), their pseudo-validation drop, and
the rules the BraTS orchestrator applies to an algorithm's output folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torchmetrics.image import StructuralSimilarityIndexMeasure

from brasyn.commands.cli import DEFAULT_WEIGHTS
from brasyn.commands.cli import main as brasyn_main
from brasyn.commands.evaluate import main
from brasyn.data.modalities import MODALITIES, conditions_for
from brasyn.data.phantom import phantom
from tests.helpers import make_case, save_nifti

CHOICES = ["t1c", "t1n", "t2f", "t2w"]
LINEAR = ["--method", "linear", "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu", "--no-progress"]


def _seg(path: Path, like: np.ndarray) -> Path:
    """Labels 1-3 on the brightest voxels of ``like``: a stand-in tumour."""
    labels = np.zeros(like.shape, np.uint8)
    high = np.percentile(like[like > 0], [90, 95, 98])
    for label, threshold in enumerate(high, start=1):
        labels[like > threshold] = label
    return save_nifti(path, labels)


def _score(pred: Path, truth: Path, out: Path, *extra: str) -> dict:
    assert main(
        ["--pred", str(pred), "--truth", str(truth), "--device", "cpu", "--json", str(out), *extra]
    ) in (0, 1)
    return json.loads(out.read_text())


# --- 1. the truth as organisers keep it ------------------------------------------------------------------


def test_a_truth_folder_holding_only_the_withheld_contrast_and_the_segmentation_scores(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    case = "BraTS-GLI-00001-000"
    real = phantom(seed=1)
    save_nifti(truth / case / f"{case}-t2f.nii.gz", real)
    _seg(truth / case / f"{case}-seg.nii.gz", real)
    save_nifti(pred / f"{case}-t2f.nii.gz", phantom(seed=2))
    report = _score(pred, truth, tmp_path / "scores.json")
    (row,) = report["cases"]
    assert row["status"] == "scored" and row["target"] == "t2f"
    assert row["segmentation"].endswith(f"{case}-seg.nii.gz")  # found beside the truth, no --seg
    assert 0 < row["ssim_tumor"] <= 1 and 0 < row["ssim_non_tumor"] <= 1
    assert report["protocol"] == "brasyn-2024-2025" and "truth contrast" in report["brain_mask"]


def test_a_case_id_holding_the_word_seg_marks_no_image_as_its_segmentation(tmp_path):
    """The case id is not part of what marks a segmentation: "no-seg-t2f" is an image, and the case's
    real segmentation is found beside it."""
    from brasyn.evaluate.pairing import segmentation_in

    real = phantom(seed=1)
    for case in ("no-seg", "with-seg"):
        for m in ("t1n", "t2f"):
            save_nifti(tmp_path / case / f"{case}-{m}.nii.gz", real)
    _seg(tmp_path / "with-seg" / "with-seg-seg.nii.gz", real)
    assert segmentation_in(tmp_path, "no-seg") is None
    assert segmentation_in(tmp_path, "with-seg") == tmp_path / "with-seg" / "with-seg-seg.nii.gz"


def test_a_flat_truth_folder_of_several_cases_scores_each_with_its_own_segmentation(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    for i, contrast in ((1, "t2f"), (2, "t1n")):
        case = f"BraTS-GLI-0000{i}-000"
        real = phantom(seed=i)
        save_nifti(truth / f"{case}-{contrast}.nii.gz", real)
        _seg(truth / f"{case}-seg.nii.gz", real)
        save_nifti(pred / f"{case}-{contrast}.nii.gz", phantom(seed=10 + i))
    rows = {r["case"]: r for r in _score(pred, truth, tmp_path / "scores.json")["cases"]}
    assert {c: (r["status"], r["target"]) for c, r in rows.items()} == {
        "BraTS-GLI-00001-000": ("scored", "t2f"),
        "BraTS-GLI-00002-000": ("scored", "t1n"),
    }
    for case, row in rows.items():
        assert Path(row["segmentation"]).name == f"{case}-seg.nii.gz"


def test_a_truth_case_with_some_contrasts_scores_the_ones_it_has(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    make_case(truth, "BraTS-GLI-00003-000", ("t1n", "t2f"), seed=3)
    save_nifti(pred / "BraTS-GLI-00003-000-t2f.nii.gz", phantom(seed=4))
    save_nifti(pred / "BraTS-GLI-00003-000-t1c.nii.gz", phantom(seed=5))
    rows = {r["target"]: r for r in _score(pred, truth, tmp_path / "scores.json")["cases"]}
    assert rows["t2f"]["status"] == "scored"
    assert rows[None]["status"] == "failed" and "has no t1c" in rows[None]["message"]


# --- 2. the organisers' SSIMs, independently ---------------------------------------------------------------


def _organisers_normalise(array: np.ndarray) -> np.ndarray:
    """Written from the organisers' procedure: the 0.5 / 99.5 percentiles of the whole volume, the low
    one raised to 0 if negative, clip, scale to [0, 1]."""
    v_min, v_max = np.percentile(array, 0.5), np.percentile(array, 99.5)
    v_min = max(v_min, 0.0)
    return (np.clip(array, v_min, v_max) - v_min) / (v_max - v_min)


def _organisers_ssims(pred_path: Path, truth_path: Path, seg_path: Path) -> tuple[float, float]:
    read = [
        sitk.GetArrayFromImage(sitk.ReadImage(str(p))).astype(np.float64) for p in (pred_path, truth_path)
    ]
    pred, gt = (_organisers_normalise(a) for a in read)
    mask = (sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path))) > 0).astype(np.float64)

    def ssim(a: np.ndarray, b: np.ndarray) -> float:
        # float32 for the convolution on a CPU, as the contract advises; (1, 1, Z, Y, X) as they shape it
        tensor = [torch.from_numpy(x.astype(np.float32))[None, None] for x in (a, b)]
        return float(StructuralSimilarityIndexMeasure()(*tensor))

    return ssim(pred * mask, gt * mask), ssim(pred * (1 - mask), gt * (1 - mask))


@pytest.fixture(scope="module")
def real_crops(shared_dir, tmp_path_factory) -> Path:
    """Two real cases, cropped to 96x96x64 around the brain centre so that the SSIM passes take seconds,
    each with a stand-in tumour segmentation on its brightest FLAIR voxels."""
    root = tmp_path_factory.mktemp("crops")
    real = shared_dir / "data" / "real"
    size = (96, 96, 64)
    for case in ("BraTS-GLI-00001-000", "BraTS-MET-00110-000"):
        folder = root / "truth" / case
        folder.mkdir(parents=True)
        images = {m: nib.load(real / case / f"{case}-{m.value}.nii.gz") for m in MODALITIES}
        brain = np.argwhere(np.asanyarray(images[MODALITIES[0]].dataobj) > 0)
        centre = (brain.min(0) + brain.max(0)) // 2
        window = tuple(slice(int(c - s // 2), int(c - s // 2) + s) for c, s in zip(centre, size, strict=True))
        for m, image in images.items():
            nib.save(image.slicer[window], str(folder / f"{case}-{m.value}.nii.gz"))
        flair = nib.load(folder / f"{case}-t2f.nii.gz")
        data = np.asanyarray(flair.dataobj).astype(np.float32)
        labels = np.zeros(data.shape, np.uint8)
        for label, threshold in enumerate(np.percentile(data[data > 0], [85, 92, 97]), start=1):
            labels[data > threshold] = label
        nib.save(nib.Nifti1Image(labels, flair.affine), str(folder / f"{case}-seg.nii.gz"))
    return root


@pytest.mark.slow
def test_tumour_and_non_tumour_ssims_equal_the_organisers_procedure_on_real_cases(real_crops, tmp_path):
    """Each contrast of two real cases 'predicted' by another real contrast of the case (a hard, honest
    prediction), scored by brasyn and by the organisers' procedure written out independently."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for case_folder in sorted((real_crops / "truth").iterdir()):
        case = case_folder.name
        for target in MODALITIES:
            stand_in = conditions_for(target)[0]
            shutil.copy(
                case_folder / f"{case}-{stand_in.value}.nii.gz", pred / f"{case}-{target.value}.nii.gz"
            )
    report = _score(pred, real_crops / "truth", tmp_path / "scores.json")
    rows = report["cases"]
    assert len(rows) == 8 and all(r["status"] == "scored" for r in rows)
    for row in rows:
        case_folder = real_crops / "truth" / row["case"]
        tumour, non_tumour = _organisers_ssims(
            Path(row["prediction"]), Path(row["truth"]), case_folder / f"{row['case']}-seg.nii.gz"
        )
        assert row["ssim_tumor"] == pytest.approx(tumour, abs=1e-4), row
        assert row["ssim_non_tumor"] == pytest.approx(non_tumour, abs=1e-4), row
        assert tumour > non_tumour  # zeros outside the tumour count: the tumour score is the high one


# --- 3. the organisers' pseudo-validation drop --------------------------------------------------------------


def test_drop_with_the_brasyn_protocol_draws_as_the_organisers_and_copies_every_other_file(tmp_path):
    source = tmp_path / "complete"
    ids = [f"BraTS-GLI-{i:05d}-000" for i in (7, 3, 12, 1, 9, 4, 15, 2, 8, 5)]
    for i, case in enumerate(ids):
        make_case(source, case, ("t1n", "t1c", "t2w", "t2f"), seed=i, shape=(16, 16, 16))
        save_nifti(source / case / f"{case}-seg.nii.gz", np.zeros((16, 16, 16), np.uint8))
    out, record = tmp_path / "test", tmp_path / "dropped.json"
    assert (
        main(
            [
                "drop",
                "--input",
                str(source),
                "--output",
                str(out),
                "--protocol",
                "brasyn",
                "--record",
                str(record),
            ]
        )
        == 0
    )
    # the procedure, independently: sorted folders, numpy's seed 123456, one randint draw
    np.random.seed(123456)
    draws = np.random.randint(0, 4, size=len(ids))
    expected = {case: CHOICES[d] for case, d in zip(sorted(ids), draws, strict=True)}
    assert json.loads(record.read_text()) == expected
    for case, dropped in expected.items():
        names = {p.name for p in (out / case).iterdir()}
        assert names == {f"{case}-{m}.nii.gz" for m in CHOICES if m != dropped} | {f"{case}-seg.nii.gz"}


# --- 5. the orchestrator's rules on brasyn's output folder ------------------------------------------------


def test_the_output_folder_passes_the_brats_orchestrators_rules(tmp_path):
    """The ``brats`` orchestrator names subjects BraTS-GLI-{id:05d}-000, globs ``*<subject>*`` in the
    output folder, takes the contrast from ``name.split("-")[-1].split(".")[0]``, needs at least as many
    outputs as subjects and warns on all-zero volumes."""
    inputs, output = tmp_path / "in", tmp_path / "out"
    missing = {}
    for i, absent in enumerate(("t1c", "t1n", "t2f", "t2w")):
        subject = f"BraTS-GLI-{i:05d}-000"
        make_case(inputs, subject, [m for m in CHOICES if m != absent], seed=i)
        missing[subject] = absent
    assert brasyn_main(["--input", str(inputs), "--output", str(output), *LINEAR]) == 0
    outputs = sorted(output.glob("*"))
    assert len(outputs) >= len(missing)
    for subject, absent in missing.items():
        (found,) = output.glob(f"*{subject}*")
        assert found.name.split("-")[-1].split(".")[0] == absent
        assert np.any(np.asanyarray(nib.load(found).dataobj))


# --- 4. the downstream segmentation score ---------------------------------------------------------------

STAND_IN = """
import sys
import nibabel as nib
import numpy as np
from pathlib import Path

case, out = Path(sys.argv[1]), sys.argv[2]
flair = next(p for p in case.iterdir() if "t2f" in p.name)
image = nib.load(flair)
data = np.asanyarray(image.dataobj).astype(np.float32)
labels = np.zeros(data.shape, np.uint8)
for label, q in ((2, 87), (1, 94), (3, 97)):
    labels[data > np.percentile(data[data > 0], q)] = label
nib.save(nib.Nifti1Image(labels, image.affine), out)
"""


@pytest.fixture()
def completed_and_truth(tmp_path):
    completed, truth = tmp_path / "completed", tmp_path / "truth"
    for i in range(2):
        case = f"BraTS-GLI-0000{i}-000"
        paths = make_case(completed, case, ("t1n", "t1c", "t2w", "t2f"), seed=i, shape=(32, 32, 24))
        flair = np.asanyarray(nib.load(paths["t2f"]).dataobj)
        _seg(truth / case / f"{case}-seg.nii.gz", flair)
    script = tmp_path / "threshold.py"
    script.write_text(STAND_IN)
    return completed, truth, script


def test_segment_scores_a_stand_in_segmenter_with_the_brats_metric_package(
    completed_and_truth, tmp_path, capsys
):
    pytest.importorskip("brats_evaluation", reason="pip install 'brasyn[eval]' (in requirements-test.txt)")
    import sys

    completed, truth, script = completed_and_truth
    report = tmp_path / "seg.json"
    args = ["segment", "--completed", str(completed), "--truth", str(truth), "--json", str(report)]
    assert main([*args, "--segmenter", f"{sys.executable} {script} {{input}} {{output}}"]) == 0
    data = json.loads(report.read_text())
    assert data["summary"] == {**data["summary"], "scored": 2, "failed": 0}
    for row in data["cases"]:
        regions = row["regions"]
        assert set(regions) >= {"et", "tc", "wt", "netc", "snfh"}
        # the stand-in thresholds at other percentiles than the truth: close, not equal
        assert 0.3 < regions["wt"]["dice"] < 1.0 and regions["wt"]["hd95"] >= 0
        assert regions["wt"]["lesions"]["tp"] >= 1
    assert "BraTS-GLI-00000-000  scored" in capsys.readouterr().out
    # the truth's own labels, given as predictions, score a perfect whole tumour
    given = tmp_path / "given"
    given.mkdir()
    for case in truth.iterdir():
        shutil.copy(case / f"{case.name}-seg.nii.gz", given / f"{case.name}.nii.gz")
    assert main([*args, "--pred-seg", str(given)]) == 0
    for row in json.loads(report.read_text())["cases"]:
        assert row["regions"]["wt"]["dice"] == pytest.approx(1.0)


def test_segment_without_the_metric_package_says_how_to_install_it(completed_and_truth, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "brats_evaluation", None)  # importing it now fails as when absent
    completed, truth, _ = completed_and_truth
    args = ["segment", "--completed", str(completed), "--truth", str(truth), "--pred-seg", str(truth)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "pip install 'brasyn[eval]'" in err and "Traceback" not in err


def test_a_failing_segmenter_fails_its_case_with_the_reason(completed_and_truth, capsys):
    pytest.importorskip("brats_evaluation", reason="pip install 'brasyn[eval]' (in requirements-test.txt)")
    import sys

    completed, truth, _ = completed_and_truth
    failing = f"{sys.executable} -c \"import sys; sys.exit('no GPU for the segmenter')\" {{input}} {{output}}"
    args = ["segment", "--completed", str(completed), "--truth", str(truth), "--segmenter", failing]
    assert main(args) == 1
    assert "the segmenter exited with status 1: no GPU for the segmenter" in capsys.readouterr().err
