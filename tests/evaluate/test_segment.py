"""``python -m brasyn.evaluate segment``: the completed cases built from a test folder and its predictions,
the table as the user sees it, and the metric package's chatter kept out of the way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brasyn.commands.evaluate import main
from tests.helpers import make_case, save_nifti

CASES = [f"BraTS-GLI-0000{i}-000" for i in range(3)]


def _truth(root: Path) -> Path:
    """Complete cases with a stand-in tumour (labels 1-3 on the brightest FLAIR voxels) each."""
    for i, case in enumerate(CASES):
        paths = make_case(root, case, ("t1n", "t1c", "t2w", "t2f"), seed=i, shape=(32, 32, 24))
        flair = np.asanyarray(nib.load(paths["t2f"]).dataobj)
        labels = np.zeros(flair.shape, np.uint8)
        for label, q in enumerate(np.percentile(flair[flair > 0], [90, 95, 98]), start=1):
            labels[flair > q] = label
        save_nifti(root / case / f"{case}-seg.nii.gz", labels)
    return root


def _given_labels(truth: Path, given: Path) -> Path:
    """The truth's own labels as the segmentations to score: each scores a perfect Dice."""
    given.mkdir()
    for case in CASES:
        shutil.copy(truth / case / f"{case}-seg.nii.gz", given / f"{case}.nii.gz")
    return given


def _row(*cells: str) -> str:
    case, status, *numbers = cells
    return "  ".join([case.ljust(19), status.ljust(8), *(n.rjust(7) for n in numbers)])


HEADER = _row("case", "status", "et_dice", "et_hd95", "tc_dice", "tc_hd95", "wt_dice", "wt_hd95")
PERFECT = ("1.0000", "0.0000") * 3


def test_segment_builds_the_completed_cases_from_a_drop_folder_and_its_predictions(tmp_path, capsys):
    pytest.importorskip("brats_evaluation", reason="pip install 'brasyn[eval]' (in requirements-test.txt)")
    truth = _truth(tmp_path / "truth")
    assert main(["drop", "--input", str(truth), "--output", str(tmp_path / "test")]) == 0
    dropped = json.loads((tmp_path / "test_dropped.json").read_text())
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in CASES[:2]:  # the last case has no prediction: it fails, the others are scored
        shutil.copy(truth / case / f"{case}-{dropped[case]}.nii.gz", pred / f"{case}-{dropped[case]}.nii.gz")
    given = _given_labels(truth, tmp_path / "given")
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    args = ["segment", "--inputs", str(tmp_path / "test"), "--pred", str(pred), "--truth", str(truth)]
    assert main([*args, "--pred-seg", str(given)]) == 1
    out, err = capsys.readouterr()
    missing = (
        f"no synthetic {dropped[CASES[2]]} for it in {pred} (expected {CASES[2]}-{dropped[CASES[2]]}.nii.gz); "
        f"synthesise it first: python -m brasyn --input {tmp_path / 'test'} --output {pred}"
    )
    assert out.splitlines() == [
        HEADER,
        _row(CASES[0], "scored", *PERFECT),
        _row(CASES[1], "scored", *PERFECT),
        _row(CASES[2], "failed", *"-" * 6) + "  " + missing,
        _row("mean", "2 scored", *PERFECT),
    ]
    assert f"[failed] {CASES[2]}: {missing}" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the completed folders are gone


def test_segment_table_lines_up_has_a_mean_row_and_keeps_the_metric_package_quiet(tmp_path, capsys):
    pytest.importorskip("brats_evaluation", reason="pip install 'brasyn[eval]' (in requirements-test.txt)")
    truth = _truth(tmp_path / "truth")
    given = _given_labels(truth, tmp_path / "given")
    args = ["segment", "--completed", str(truth), "--truth", str(truth), "--pred-seg", str(given)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        HEADER,
        *(_row(c, "scored", *PERFECT) for c in CASES),
        _row("mean", "3 scored", *PERFECT),
    ]
    # panoptica's banner, its label-group notice and its warnings belong to the debug log
    for noise in ("labelgroups", "Intended?", "LabelGroup", "UserWarning", "threshold", "panoptica"):
        assert noise not in err
    assert main([*args, "-v"]) == 0
    assert "brats-evaluation: The same labels [1, 2, 3] were assigned to two different labelgroups" in (
        capsys.readouterr().err
    )


def test_segment_needs_completed_or_inputs_with_pred(tmp_path, capsys):
    truth = _truth(tmp_path / "truth")
    args = ["segment", "--truth", str(truth), "--pred-seg", str(truth)]
    assert main(args) == 2
    assert (
        "give either --completed DIR (case folders holding all four contrasts) or --inputs TEST --pred PRED"
        in (capsys.readouterr().err)
    )
    assert main([*args, "--inputs", str(truth)]) == 2
    assert "--inputs TEST and --pred PRED go together: give both" in capsys.readouterr().err
