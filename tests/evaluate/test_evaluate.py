"""Making a test set (drop) and scoring predictions against the real images (score)."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from brasyn.commands.evaluate import main
from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.evaluate.pairing import pair_predictions
from brasyn.evaluate.score import drop_choices
from tests.helpers import fill, make_case, mounted_tmpfs, save_nifti

SHAPE = (24, 24, 20)
ALL = ("t1n", "t1c", "t2w", "t2f")


def _placeholders(root: Path, case_id: str, *names: str) -> Path:
    """A case folder of empty files: pairing and dropping read names only."""
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())
    return folder


def _brats(root: Path, case_id: str) -> Path:
    return _placeholders(root, case_id, *(f"{case_id}-{m}.nii.gz" for m in ALL))


# --- drop --------------------------------------------------------------------------------------------


def test_drop_leaves_out_what_the_medperf_cube_draws(tmp_path):
    ids = [f"BraTS-GLI-{i:05d}-000" for i in (7, 3, 12, 1, 5)]
    for case_id in ids:
        _brats(tmp_path / "truth", case_id)
    random.seed(7)
    expected = {case_id: random.choice(["t1c", "t1n", "t2f", "t2w"]) for case_id in sorted(ids)}

    assert main(["drop", "--input", str(tmp_path / "truth"), "--output", str(tmp_path / "test")]) == 0
    record = json.loads((tmp_path / "test_dropped.json").read_text())
    assert record == expected
    assert list(record) == sorted(ids)
    for case_id, dropped in expected.items():
        kept = sorted(p.name for p in (tmp_path / "test" / case_id).iterdir())
        assert kept == sorted(f"{case_id}-{m}.nii.gz" for m in ALL if m != dropped)
        for name in kept:
            assert (tmp_path / "test" / case_id / name).read_bytes() == name.encode()
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == sorted(ids)


def _sized_case(root: Path, case_id: str, size: int) -> dict[str, bytes]:
    """A complete case of incompressible placeholder files of ``size`` bytes each: drop copies bytes."""
    rng = np.random.default_rng(len(case_id) + size)
    contents = {f"{case_id}-{m}.nii.gz": rng.bytes(size) for m in ALL}
    (root / case_id).mkdir(parents=True)
    for name, data in contents.items():
        (root / case_id / name).write_bytes(data)
    return contents


def _copied_whole(output: Path, contents: dict[str, dict[str, bytes]]) -> None:
    """Every case folder in ``output`` holds whole copies, and nothing else is there."""
    assert sorted(p.name for p in output.iterdir()) == sorted(contents)
    for case_id, files in contents.items():
        for path in (output / case_id).iterdir():
            assert path.read_bytes() == files[path.name]


def test_drop_on_a_disk_that_fills_fails_that_case_alone_and_leaves_no_part_of_it(tmp_path, capsys):
    truth = tmp_path / "truth"
    contents = {c: _sized_case(truth, c, size) for c, size in (("A", 8192), ("B", 65536), ("C", 8192))}
    with mounted_tmpfs(tmp_path / "disk", size="160k") as disk:
        code = main(["drop", "--input", str(truth), "--output", str(disk / "test")])
        _copied_whole(disk / "test", {c: contents[c] for c in ("A", "C")})
        record = json.loads((disk / "test_dropped.json").read_text())
    assert code == 1 and sorted(record) == ["A", "C"]
    err = capsys.readouterr().err
    assert "[failed] B: cannot write B-" in err and f"into {disk / 'test'}: No space left on device" in err
    assert "then drop again into a new folder" in err and "Traceback" not in err


def test_drop_with_an_unreadable_truth_file_fails_that_case_alone(tmp_path):
    import os
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or subprocess.run(["which", "setpriv"], capture_output=True).returncode:
        pytest.skip("needs root and setpriv to run drop as a user who cannot read a file")
    # outside tmp_path, whose parents only root may enter
    base = Path(tempfile.mkdtemp(prefix="brasyn-drop-"))
    try:
        base.chmod(0o755)
        truth = base / "truth"
        contents = {c: _sized_case(truth, c, 1024) for c in ("A", "B", "C")}
        locked = truth / "B" / "B-t1n.nii.gz"
        locked.chmod(0)
        work = base / "work"
        work.mkdir(mode=0o777)
        work.chmod(0o777)
        command = ["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", sys.executable]
        command += ["-m", "brasyn.evaluate", "drop", "--input", str(truth), "--output", str(work / "test")]
        command += ["--seed", "1"]
        run = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parents[2])
        assert run.returncode == 1, run.stderr
        draw = drop_choices(["A", "B", "C"], seed=1)
        assert draw["B"].value != "t1n"  # the locked file is one drop copies
        _copied_whole(work / "test", {c: contents[c] for c in ("A", "C")})
        assert f"[failed] B: cannot read {locked}: Permission denied; make it readable" in run.stderr
        assert "Traceback" not in run.stderr
    finally:
        shutil.rmtree(base)


def test_drop_choices_follow_the_seed_without_touching_the_global_generator():
    random.seed(123)
    state = random.getstate()
    first = drop_choices(["a", "b", "c", "d", "e", "f"], seed=3)
    assert random.getstate() == state
    random.seed(3)
    assert [m.value for m in first.values()] == [
        random.choice(["t1c", "t1n", "t2f", "t2w"]) for _ in range(6)
    ]
    assert drop_choices(["a", "b", "c", "d", "e", "f"], seed=3) == first


def test_drop_fails_an_incomplete_case_but_keeps_the_draw_of_the_others(tmp_path):
    for case_id in ("A", "C"):
        _brats(tmp_path / "truth", case_id)
    _placeholders(tmp_path / "truth", "B", "B-t1n.nii.gz", "B-t1c.nii.gz", "B-t2w.nii.gz")
    record = tmp_path / "elsewhere" / "record.json"
    args = ["drop", "--input", str(tmp_path / "truth"), "--output", str(tmp_path / "out"), "--seed", "11"]
    assert main([*args, "--record", str(record)]) == 1
    draw = drop_choices(["A", "B", "C"], seed=11)
    assert json.loads(record.read_text()) == {"A": draw["A"].value, "C": draw["C"].value}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["A", "C"]


def test_drop_refuses_to_hide_the_answer_in_the_output_or_mix_with_old_files(tmp_path, capsys):
    _brats(tmp_path / "truth", "A")
    base = ["drop", "--input", str(tmp_path / "truth"), "--output", str(tmp_path / "out")]
    assert main([*base, "--record", str(tmp_path / "out" / "record.json")]) == 2
    assert "where the container would see the answer" in capsys.readouterr().err
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "old.txt").touch()
    assert main(base) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["drop", "--input", str(tmp_path / "truth"), "--output", str(tmp_path / "truth" / "x")]) == 2


def test_drop_refuses_a_record_it_cannot_write_before_copying(tmp_path, capsys):
    _brats(tmp_path / "truth", "A")
    with mounted_tmpfs(tmp_path / "ro", read_only=True) as read_only:
        record = read_only / "record.json"
        args = ["drop", "--input", str(tmp_path / "truth"), "--output", str(tmp_path / "out")]
        assert main([*args, "--record", str(record)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write the record {record}: Read-only file system; give --record a file" in err
    assert not (tmp_path / "out").exists() and "Traceback" not in err


# --- pairing -----------------------------------------------------------------------------------------


def test_predictions_pair_with_their_truth_whatever_the_naming_scheme(tmp_path):
    truth, predictions = tmp_path / "truth", tmp_path / "pred"
    _brats(truth, "BraTS-GLI-00001-000")
    (truth / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-seg.nii.gz").touch()
    _placeholders(
        truth, "BraTS2021_00002", *(f"BraTS2021_00002_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair"))
    )
    _placeholders(
        truth, "TCGA-XX-0001", *(f"TCGA-XX-0001_{m}_bet.nii.gz" for m in ("t1", "t1c", "t2", "fla"))
    )
    _placeholders(truth, "bare_case", "T1.nii.gz", "T1c.nii.gz", "T2.nii.gz", "Flair.nii.gz")
    names = {
        "BraTS-GLI-00001-000-t2f.nii.gz": ("BraTS-GLI-00001-000", "t2f", "BraTS-GLI-00001-000-t2f.nii.gz"),
        "BraTS2021_00002_t1ce.nii": ("BraTS2021_00002", "t1c", "BraTS2021_00002_t1ce.nii.gz"),
        "TCGA-XX-0001_fla_bet.nii.gz": ("TCGA-XX-0001", "t2f", "TCGA-XX-0001_fla_bet.nii.gz"),
        "TCGA-XX-0001-t2w.nii.gz": ("TCGA-XX-0001", "t2w", "TCGA-XX-0001_t2_bet.nii.gz"),
        "bare_case-t1n.nii.gz": ("bare_case", "t1n", "T1.nii.gz"),
    }
    predictions.mkdir()
    for name in names:
        (predictions / name).touch()
    _placeholders(predictions, "BraTS2021_00002", "t2w.nii.gz")  # <case>/<file> layout
    (predictions / "notes.txt").touch()

    pairs, errors = pair_predictions(predictions, truth)
    assert errors == []
    found = {(p.prediction.relative_to(predictions).as_posix()): p for p in pairs}
    assert set(found) == {*names, "BraTS2021_00002/t2w.nii.gz"}
    for name, (case, contrast, truth_name) in names.items():
        assert (found[name].case, found[name].contrast.value, found[name].truth.name) == (
            case,
            contrast,
            truth_name,
        )
    assert found["BraTS2021_00002/t2w.nii.gz"].truth.name == "BraTS2021_00002_t2.nii.gz"
    assert found["BraTS-GLI-00001-000-t2f.nii.gz"].segmentation.name == "BraTS-GLI-00001-000-seg.nii.gz"
    assert found["bare_case-t1n.nii.gz"].segmentation is None


def test_unmatched_and_duplicated_predictions_are_case_errors(tmp_path):
    truth, predictions = tmp_path / "truth", tmp_path / "pred"
    _brats(truth, "BraTS-GLI-00001-000")
    _placeholders(
        truth, "BraTS-GLI-00002-000", "BraTS-GLI-00002-000-t1n.nii.gz", "BraTS-GLI-00002-000-t1c.nii.gz"
    )
    _placeholders(
        predictions,
        ".",
        "BraTS-GLI-00009-000-t1n.nii.gz",
        "BraTS-GLI-00001-000-t1n.nii.gz",
        "BraTS-GLI-00001-000-t1n.nii",
        "BraTS-GLI-00002-000-t2w.nii.gz",
    )
    pairs, errors = pair_predictions(predictions, truth)
    assert pairs == []
    messages = {e.case: e.message for e in errors}
    assert "no case in the truth folder" in messages["brats-gli-00009-000-t1n"]
    assert "2 predictions of its t1n" in messages["BraTS-GLI-00001-000"]
    # a truth case may hold any of its contrasts: it just has no t2w to score against
    assert "the truth case has no t2w" in messages["BraTS-GLI-00002-000"]


def test_brasyn_output_names_of_the_real_cases_pair_with_their_truth(shared_dir, tmp_path):
    expected = {
        "BraTS-GLI-00001-000-t2f.nii.gz": "BraTS-GLI-00001-000-t2f.nii.gz",
        "BraTS-MET-00110-000-t1c.nii.gz": "BraTS-MET-00110-000-t1c.nii.gz",
        "TCGA-DU-7294_t1c_bet.nii.gz": "TCGA-DU-7294_t1c_bet.nii.gz",
        "TCGA-DU-7294-t2w.nii.gz": "TCGA-DU-7294_t2_bet.nii.gz",
        "preprocessed_case-t1n.nii.gz": "t1n.nii.gz",
    }
    _placeholders(tmp_path, "pred", *expected)
    pairs, errors = pair_predictions(tmp_path / "pred", shared_dir / "data" / "real")
    assert errors == []
    assert {p.prediction.name: p.truth.name for p in pairs} == expected


# --- score -------------------------------------------------------------------------------------------


def _truth_and_predictions(tmp_path: Path) -> tuple[Path, Path]:
    truth, predictions = tmp_path / "truth", tmp_path / "pred"
    make_case(truth, "BraTS-GLI-00001-000", ALL, shape=SHAPE, seed=1)
    make_case(truth, "BraTS-GLI-00002-000", ALL, shape=SHAPE, seed=5)
    save_nifti(
        truth / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-seg.nii.gz",
        (phantom(SHAPE, seed=9) > 500).astype(np.uint8),
    )
    predictions.mkdir()
    # a perfect prediction on another intensity scale, and a noisy one
    perfect = phantom(SHAPE, seed=1 + 3, scale=200.0 * 4) * 0.01
    save_nifti(predictions / "BraTS-GLI-00001-000-t2f.nii.gz", perfect)
    rng = np.random.default_rng(0)
    noisy = phantom(SHAPE, seed=5, scale=200.0) + rng.normal(0, 40, SHAPE).astype(np.float32)
    save_nifti(predictions / "BraTS-GLI-00002-000-t1n.nii.gz", noisy)
    return truth, predictions


def test_score_reports_each_case_and_the_means(tmp_path, capsys):
    truth, predictions = _truth_and_predictions(tmp_path)
    report = tmp_path / "scores.json"
    args = ["score", "--predictions", str(predictions), "--truth", str(truth), "--device", "cpu"]
    assert main([*args, "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "BraTS-GLI-00001-000  t2f" in table and "mean (n=2)" in table
    data = json.loads(report.read_text())
    rows = {row["case"]: row for row in data["cases"]}
    assert rows["BraTS-GLI-00001-000"]["ssim"] == pytest.approx(1.0, abs=1e-5)
    assert rows["BraTS-GLI-00001-000"]["psnr"] > 100  # the same image after normalisation
    assert rows["BraTS-GLI-00001-000"]["ssim_tumor"] is None
    noisy = rows["BraTS-GLI-00002-000"]
    assert 0 < noisy["ssim"] < 0.95 and noisy["psnr"] > 0
    assert noisy["ssim_tumor"] is not None and noisy["ssim_non_tumor"] is not None
    assert noisy["segmentation"].endswith("BraTS-GLI-00002-000-seg.nii.gz")
    assert data["summary"]["all"]["ssim"] == pytest.approx((1.0 + noisy["ssim"]) / 2, abs=1e-5)
    assert data["summary"]["t1n"]["n"] == 1 and data["summary"]["failed"] == 0


def test_score_fails_cases_it_cannot_evaluate_and_still_scores_the_rest(tmp_path, capsys):
    truth, predictions = _truth_and_predictions(tmp_path)
    make_case(truth, "BraTS-GLI-00003-000", ALL, shape=SHAPE, seed=7)
    save_nifti(predictions / "BraTS-GLI-00003-000-t1c.nii.gz", phantom((24, 24, 16)))
    shifted = BRATS_AFFINE.copy()
    shifted[0, 3] = 5.0
    save_nifti(predictions / "BraTS-GLI-00002-000-t1n.nii.gz", phantom(SHAPE), shifted)
    save_nifti(predictions / "BraTS-GLI-00404-000-t1n.nii.gz", phantom(SHAPE))
    dropped = tmp_path / "dropped.json"
    dropped.write_text(json.dumps({"BraTS-GLI-00001-000": "t2f", "BraTS-GLI-00004-000": "t2w"}))
    report = tmp_path / "scores.json"
    args = ["score", "--predictions", str(predictions), "--truth", str(truth), "--device", "cpu"]
    assert main([*args, "--dropped", str(dropped), "--json", str(report)]) == 1
    rows = json.loads(report.read_text())["cases"]
    by_case = {row["case"]: row for row in rows}
    assert by_case["BraTS-GLI-00001-000"]["status"] == "scored"
    assert "has shape (24, 24, 16)" in by_case["BraTS-GLI-00003-000"]["message"]
    assert "different affines" in by_case["BraTS-GLI-00002-000"]["message"]
    assert "no prediction of its dropped t2w" in by_case["BraTS-GLI-00004-000"]["message"]
    assert any("no case in the truth folder" in row["message"] for row in rows)
    assert sum(row["status"] == "failed" for row in rows) == 4
    assert "must be written on the grid of its case" in capsys.readouterr().err


def test_score_refuses_to_write_into_the_predictions_or_read_missing_folders(tmp_path, capsys):
    truth, predictions = _truth_and_predictions(tmp_path)
    args = ["score", "--predictions", str(predictions), "--truth", str(truth)]
    assert main([*args, "--json", str(predictions / "scores.json")]) == 2
    assert "inside the predictions folder" in capsys.readouterr().err
    assert main(["score", "--predictions", str(predictions), "--truth", str(tmp_path / "none")]) == 2
    assert not (predictions / "scores.json").exists()


def test_drop_then_score_round_trip_names_every_dropped_contrast(tmp_path):
    truth = tmp_path / "truth"
    for i in range(3):
        make_case(truth, f"BraTS-GLI-0000{i}-000", ALL, shape=SHAPE, seed=i)
    assert main(["drop", "--input", str(truth), "--output", str(tmp_path / "test")]) == 0
    record = json.loads((tmp_path / "test_dropped.json").read_text())
    predictions = tmp_path / "pred"
    predictions.mkdir()
    for case_id, contrast in record.items():  # "predict" with the truth itself
        source = truth / case_id / f"{case_id}-{contrast}.nii.gz"
        (predictions / source.name).write_bytes(source.read_bytes())
    args = ["score", "--predictions", str(predictions), "--truth", str(truth), "--device", "cpu"]
    report = tmp_path / "scores.json"
    assert main([*args, "--dropped", str(tmp_path / "test_dropped.json"), "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["cases"]
    assert {row["case"]: row["target"] for row in rows} == record
    assert all(row["ssim"] == pytest.approx(1.0) and row["psnr"] is None for row in rows)  # PSNR infinite


def test_the_documented_form_takes_pred_seg_and_writes_csv_with_brain_masked_scores(tmp_path, capsys):
    import csv

    truth, predictions = _truth_and_predictions(tmp_path)
    segs = tmp_path / "segs"
    segs.mkdir()
    for seg in truth.rglob("*seg*.nii.gz"):
        seg.rename(segs / seg.name)  # segmentations given in their own folder this time
    table, report = tmp_path / "scores.csv", tmp_path / "scores.json"
    code = main(
        [
            "--pred",
            str(predictions),
            "--truth",
            str(truth),
            "--seg",
            str(segs),
            "--device",
            "cpu",
            "--csv",
            str(table),
            "--json",
            str(report),
        ]
    )
    assert code == 0
    assert "target" in capsys.readouterr().out.splitlines()[0]
    rows = {r["case"]: r for r in csv.DictReader(table.open())}
    assert set(rows) == {"BraTS-GLI-00001-000", "BraTS-GLI-00002-000"}
    noisy = rows["BraTS-GLI-00002-000"]
    assert noisy["target"] == "t1n" and noisy["ssim_tumor"] and noisy["ssim_non_tumor"]
    assert noisy["segmentation"].startswith(str(segs))
    data = json.loads(report.read_text())
    record = next(r for r in data["cases"] if r["case"] == "BraTS-GLI-00002-000")
    assert 0 < record["ssim_brain"] < 0.95 and record["psnr_brain"] > 0
    perfect = next(r for r in data["cases"] if r["case"] == "BraTS-GLI-00001-000")
    assert perfect["ssim_brain"] == pytest.approx(1.0, abs=1e-5)
    assert set(data["summary"]["t1n"]) >= {"ssim", "psnr", "mse", "ssim_brain", "psnr_brain", "mse_brain"}
    assert main(["--pred", str(predictions), "--truth", str(truth), "--csv", str(predictions / "x.csv")]) == 2


def _scored(tmp_path: Path, predictions: Path, truth: Path, *extra: str) -> dict[str, dict]:
    report = tmp_path / "scores.json"
    args = ["--pred", str(predictions), "--truth", str(truth), "--device", "cpu", "--json", str(report)]
    assert main([*args, *extra]) == 0
    return {row["case"]: row for row in json.loads(report.read_text())["cases"]}


def test_in_a_flat_truth_folder_a_case_without_a_segmentation_takes_no_other_cases(tmp_path):
    truth, predictions = tmp_path / "truth", tmp_path / "pred"
    for i, case in enumerate(("caseA", "caseB")):
        save_nifti(truth / f"{case}-t2f.nii.gz", phantom(SHAPE, seed=i))
        save_nifti(predictions / f"{case}-t2f.nii.gz", phantom(SHAPE, seed=10 + i))
    save_nifti(truth / "caseB-seg.nii.gz", (phantom(SHAPE, seed=9) > 500).astype(np.uint8))
    rows = _scored(tmp_path, predictions, truth)
    assert rows["caseA"]["segmentation"] is None and rows["caseA"]["ssim_tumor"] is None
    assert rows["caseB"]["segmentation"] == str(truth / "caseB-seg.nii.gz")
    assert rows["caseB"]["ssim_tumor"] is not None


def test_a_seg_folder_gives_a_case_only_its_own_segmentation_never_a_mask(tmp_path):
    truth, predictions, segs = tmp_path / "truth", tmp_path / "pred", tmp_path / "segs"
    for i, case in enumerate(("case1", "case10", "case2")):
        make_case(truth, case, ("t2f",), shape=SHAPE, seed=i)
        save_nifti(predictions / f"{case}-t2f.nii.gz", phantom(SHAPE, seed=10 + i))
    tumour = (phantom(SHAPE, seed=9) > 500).astype(np.uint8)
    save_nifti(segs / "case10-seg.nii.gz", tumour)
    save_nifti(segs / "case1-brainmask.nii.gz", np.ones(SHAPE, np.uint8))
    save_nifti(segs / "case2" / "tumour_seg.nii.gz", tumour)
    save_nifti(segs / "case2" / "seg_brainmask.nii.gz", np.ones(SHAPE, np.uint8))
    rows = _scored(tmp_path, predictions, truth, "--seg", str(segs))
    assert rows["case1"]["segmentation"] is None and rows["case1"]["ssim_tumor"] is None
    assert rows["case10"]["segmentation"] == str(segs / "case10-seg.nii.gz")
    assert rows["case2"]["segmentation"] == str(segs / "case2" / "tumour_seg.nii.gz")


def test_one_pairing_reads_segmentation_names_alike_in_both_forms(tmp_path):
    from brasyn.evaluate.pairing import segmentation_in

    flat, folders = tmp_path / "flat", tmp_path / "folders"
    names = [
        "case1-brainmask.nii.gz",
        "case10-seg.nii.gz",
        "case2_SEG.nii",
        "case3.seg.nii.gz",
    ]
    for name in names:
        _placeholders(tmp_path, "flat", name)
        case = name.split("-")[0].split("_")[0].split(".")[0]
        _placeholders(folders, case, name)
    for root in (flat, folders):
        assert segmentation_in(root, "case1") is None
        assert segmentation_in(root, "case10").name == "case10-seg.nii.gz"
        assert segmentation_in(root, "case2").name == "case2_SEG.nii"
        assert segmentation_in(root, "case3").name == "case3.seg.nii.gz"


def test_an_empty_predictions_folder_exits_2_without_a_table(tmp_path, capsys):
    truth, _ = _truth_and_predictions(tmp_path)
    (tmp_path / "empty").mkdir()
    assert main(["--pred", str(tmp_path / "empty"), "--truth", str(truth), "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"the predictions folder {tmp_path / 'empty'} holds no NIfTI image" in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("where", ["same", "inside", "holding"])
def test_predictions_that_are_or_nest_with_the_truth_exit_2(tmp_path, capsys, where):
    truth, _ = _truth_and_predictions(tmp_path)
    predictions = {"same": truth, "inside": truth / "BraTS-GLI-00001-000", "holding": tmp_path}[where]
    report = tmp_path.parent / f"{tmp_path.name}-scores.json"
    args = ["--pred", str(predictions), "--truth", str(truth), "--device", "cpu", "--json", str(report)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not report.exists()
    assert "are the same or one holds the other" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("option", ["--json", "--csv"])
@pytest.mark.parametrize("where", ["read-only", "under-a-file"])
def test_a_report_that_cannot_be_written_stops_the_scoring_before_it_starts(tmp_path, capsys, option, where):
    truth, predictions = _truth_and_predictions(tmp_path)
    (tmp_path / "file").write_text("x")
    with contextlib.ExitStack() as stack:
        if where == "read-only":
            report = stack.enter_context(mounted_tmpfs(tmp_path / "ro", read_only=True)) / "scores"
        else:
            report = tmp_path / "file" / "scores"
        code = main(
            ["--pred", str(predictions), "--truth", str(truth), "--device", "cpu", option, str(report)]
        )
    assert code == 2
    captured = capsys.readouterr()
    assert f"argument {option}: cannot write {report}: " in captured.err
    assert "name a file in a folder this user may write" in captured.err
    assert "scoring" not in captured.err and captured.out == "" and "Traceback" not in captured.err


def test_a_disk_that_fills_before_the_report_leaves_no_part_of_it(tmp_path, capsys):
    truth, predictions = _truth_and_predictions(tmp_path)
    with mounted_tmpfs(tmp_path / "small", size="64k") as small:
        fill(small)
        report = small / "scores.json"
        code = main(
            ["--pred", str(predictions), "--truth", str(truth), "--device", "cpu", "--json", str(report)]
        )
        assert sorted(p.name for p in small.iterdir()) == ["filler"]
    assert code == 2
    captured = capsys.readouterr()
    assert "mean (n=2)" in captured.out  # the scores were printed
    assert f"cannot write the report {report}: No space left on device" in captured.err
    assert "Traceback" not in captured.err


def test_scoring_is_announced_before_the_wait_and_counts_the_cases(tmp_path, capsys):
    truth, predictions = _truth_and_predictions(tmp_path)
    assert main(["--pred", str(predictions), "--truth", str(truth), "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    announce = next(i for i, line in enumerate(err) if "scoring 2 prediction(s) on cpu" in line)
    first = next(i for i, line in enumerate(err) if "BraTS-GLI-00001-000 t2f (1 of 2): SSIM" in line)
    second = next(i for i, line in enumerate(err) if "BraTS-GLI-00002-000 t1n (2 of 2): SSIM" in line)
    assert announce < first < second


def test_the_demo_announces_its_scoring_before_the_scores(tmp_path, monkeypatch, capsys):
    import shutil

    import brasyn.commands.demo as demo

    truth = tmp_path / "truth"
    make_case(truth, "BraTS-GLI-00001-000", ALL, shape=SHAPE, seed=1)

    def example(out: Path) -> str:
        make_case(out / "input", "BraTS-GLI-00001-000", ("t1n", "t1c", "t2w"), shape=SHAPE, seed=1)
        return "real"

    def synthesise(argv: list[str]) -> int:  # the main job stands in: the real FLAIR as the "synthetic" one
        output = Path(argv[argv.index("--output") + 1])
        output.mkdir(parents=True, exist_ok=True)
        name = "BraTS-GLI-00001-000-t2f.nii.gz"
        shutil.copy(truth / "BraTS-GLI-00001-000" / name, output / name)
        return 0

    monkeypatch.setattr(demo, "write_example", example)
    monkeypatch.setattr(demo, "DEFAULT_SOURCE", truth)
    assert demo.run_demo(["--out", str(tmp_path / "demo")], synthesise) == 0
    err = capsys.readouterr().err.splitlines()
    announce = next(
        i for i, line in enumerate(err) if "scoring the synthetic t2f against the real image" in line
    )
    scores = next(i for i, line in enumerate(err) if "SSIM 1.0000" in line)
    assert announce < scores
