"""``python -m brasyn.train --val``: validation cases synthesised through the batch runner every run uses and
scored with the organisers' SSIM; the best checkpoint kept beside the last; a resume keeps the best; a stop
during a validation saves the training state."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brasyn.commands.cli import main as brasyn_main
from brasyn.commands.train import main as train_main
from brasyn.evaluate.metrics import score
from brasyn.evaluate.score import Row
from brasyn.inference.synthesize import Synthesizer
from brasyn.train.validation import case_score
from brasyn.weights.store import WeightStore
from tests.helpers import make_case, save_nifti, tiny_train_args, tiny_training_cache

ALL = ("t1n", "t1c", "t2w", "t2f")
SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tiny_training_cache(tmp_path_factory.mktemp("train-data"), seed_step=5)


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> Path:
    """Two validation cases: one with a tumour segmentation beside its images, one without."""
    root = tmp_path_factory.mktemp("val") / "val"
    paths = make_case(root, "with-seg", ALL, seed=31, shape=SHAPE)
    image = nib.load(paths["t2f"])
    seg = np.zeros(SHAPE, np.uint8)
    seg[12:20, 10:22, 14:20] = 2
    save_nifti(root / "with-seg" / "with-seg-seg.nii.gz", seg, image.affine, dtype=np.uint8)
    make_case(root, "no-seg", ALL, seed=41, shape=SHAPE)
    return root


def _args(cache: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return tiny_train_args(cache, out, steps, "3e-3", "--val-steps", "2", *extra)


def _records(out: Path) -> list[dict]:
    lines = (out / "training" / "t2f" / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _validations(out: Path) -> list[dict]:
    return [r for r in _records(out) if "val_ssim" in r]


def test_the_validation_score_is_what_the_main_command_and_the_organisers_ssim_give(cache, val, tmp_path):
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 2, "--val", str(val), "--val-every", "2")) == 0
    (record,) = _validations(out)
    assert record["step"] == 2 and record["val_best"] is True
    rows = {r["case"]: r for r in record["val_cases"]}
    assert set(rows) == {"with-seg", "no-seg"}
    assert "ssim_tumor" in rows["with-seg"] and "ssim_non_tumor" in rows["with-seg"]
    assert "ssim_tumor" not in rows["no-seg"]

    # The best checkpoint, run by the main command as a user would on the withheld inputs, scored with
    # the organisers' SSIM, gives the logged numbers.
    best = out / "training" / "t2f" / "best"
    assert WeightStore(best).info("t2f").provenance["steps"] == 2
    inputs = tmp_path / "inputs"
    for case in rows:
        (inputs / case).mkdir(parents=True)
        for m in ("t1n", "t1c", "t2w"):
            (inputs / case / f"{case}-{m}.nii.gz").symlink_to(val / case / f"{case}-{m}.nii.gz")
    written = tmp_path / "written"
    common = ["--weights", str(best), "--sampler", "ddim", "--steps", "2", "--seed", "3", "--device", "cpu"]
    assert brasyn_main(["--input", str(inputs), "--output", str(written), *common]) == 0
    expected = []
    for case, row in rows.items():
        prediction = nib.load(next(written.glob(f"{case}*t2f*"))).get_fdata()
        truth = nib.load(val / case / f"{case}-t2f.nii.gz").get_fdata()
        tumour = None
        if case == "with-seg":
            tumour = nib.load(val / case / "with-seg-seg.nii.gz").get_fdata() > 0
        scores = score(prediction, truth, tumour)
        for key in ("ssim", "ssim_tumor", "ssim_non_tumor"):
            if key in row:
                assert row[key] == pytest.approx(scores[key], abs=1e-6), (case, key)
        if tumour is not None:
            expected.append((scores["ssim_tumor"] + scores["ssim_non_tumor"]) / 2)
        else:
            expected.append(scores["ssim"])
    assert record["val_ssim"] == pytest.approx(sum(expected) / 2, abs=1e-6)
    # the candidate's folder is gone into best; the syntheses were temporary
    assert not list((out / "training" / "t2f" / "validation").glob("val-*"))


def test_the_best_checkpoint_is_the_one_with_the_best_score_and_survives_a_resume(cache, val, tmp_path):
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 3, "--val", str(val), "--val-every", "1")) == 0
    assert train_main(_args(cache, out, 6, "--val", str(val), "--val-every", "1", "--resume")) == 0
    records = _validations(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    scores = [r["val_ssim"] for r in records]
    assert all(math.isfinite(s) for s in scores)
    assert len(set(scores)) > 1  # training changes the model, so the scores differ
    best_step = records[int(np.argmax(scores))]["step"]
    best = out / "training" / "t2f" / "best"
    kept = json.loads((best / "validation.json").read_text())
    assert kept["step"] == best_step and kept["val_ssim"] == pytest.approx(max(scores))
    assert WeightStore(best).info("t2f").provenance["steps"] == best_step
    # val_best marks each new best: only steps whose score beat every earlier one
    marked = [r["step"] for r in records if r["val_best"]]
    running = [r["step"] for i, r in enumerate(records) if r["val_ssim"] > max(scores[:i], default=-2)]
    assert marked == running
    end = [r for r in _records(out) if r.get("event") == "end"][-1]
    assert end["best"] == {"step": best_step, "val_ssim": pytest.approx(max(scores))}
    # the last checkpoint sits beside it, exported at the last step
    assert WeightStore(out).info("t2f").provenance["steps"] == 6


def test_without_val_every_the_validation_runs_once_after_the_last_step_and_restart_sets_it_aside(
    cache, val, tmp_path
):
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 2, "--val", str(val))) == 0
    assert [r["step"] for r in _validations(out)] == [2]
    assert (out / "training" / "t2f" / "best" / "t2f.pt").is_file()
    # --restart sets the old run's best aside with its state and log
    assert train_main(_args(cache, out, 1, "--restart")) == 0
    assert not (out / "training" / "t2f" / "best").exists()
    assert (out / "training" / "t2f" / "best.bak" / "validation.json").is_file()


def test_a_stop_during_validation_saves_the_state_and_logs_the_step(cache, val, tmp_path, monkeypatch):
    original = Synthesizer.process

    def stop_in_the_middle(self, case, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(self, case, *args, **kwargs)

    monkeypatch.setattr(Synthesizer, "process", stop_in_the_middle)
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 4, "--val", str(val), "--val-every", "2")) == 143
    state = out / "training" / "t2f" / "state.pt"
    import torch

    assert torch.load(state, weights_only=True)["step"] == 2
    steps = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2] and "val_ssim" not in steps[-1]
    assert steps[-1]["stopped"] is True and steps[-1]["draws"]  # the step's own line, without scores
    assert not (out / "training" / "t2f" / "best").exists()
    assert not list((out / "training" / "t2f" / "validation").glob("val-*"))


def test_a_validation_case_that_fails_counts_zero_and_the_others_are_scored(cache, tmp_path):
    val = tmp_path / "val"
    make_case(val, "good", ALL, seed=31, shape=SHAPE)
    broken = make_case(val, "broken", ALL, seed=41, shape=SHAPE)
    broken["t1n"].write_bytes(broken["t1n"].read_bytes()[:100])  # a truncated download
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 1, "--val", str(val))) == 0
    (record,) = _validations(out)
    rows = {r["case"]: r for r in record["val_cases"]}
    assert rows["broken"]["status"] == "failed" and "broken-t1n.nii.gz" in rows["broken"]["message"]
    assert rows["good"]["status"] == "scored" and record["val_failed"] == 1
    assert record["val_ssim"] == pytest.approx(rows["good"]["ssim"] / 2)


def test_validation_cases_that_are_also_training_cases_are_named(cache, tmp_path, capsys):
    out = tmp_path / "w"
    cases = cache.parent / "cases"  # the very cases the cache was prepared from
    assert train_main(_args(cache, out, 1, "--val", str(cases))) == 0
    assert "2 validation case(s) are also training cases (case0, case1)" in capsys.readouterr().err


def test_a_kill_between_the_renames_of_the_best_folder_keeps_the_previous_best(tmp_path):
    import torch

    from brasyn.data.modalities import Modality
    from brasyn.train.validation import Validator

    validator = Validator([], Modality.T2F, torch.device("cpu"), tmp_path)
    old = tmp_path / "best.old"
    old.mkdir()
    (old / "validation.json").write_text(json.dumps({"step": 7, "val_ssim": 0.5}))
    assert validator.best_so_far() == {"step": 7, "val_ssim": 0.5}
    assert (tmp_path / "best" / "validation.json").is_file() and not old.exists()


def test_map_names_the_hospital_files_in_prepare_training_and_validation(tmp_path, capsys):
    """Files named by the scanner's sequence (``..._T1_MPRAGE_post``) are the t1c only by ``--map``: with
    it the same cases are prepared, trained on and validated through the batch runner."""
    for root, ids in ((tmp_path / "train", ("h0", "h1")), (tmp_path / "val", ("h9",))):
        for i, case in enumerate(ids):
            paths = make_case(root, case, ALL, seed=11 * i, shape=SHAPE)
            paths["t1c"].rename(paths["t1c"].with_name(f"{case}_T1_MPRAGE_post.nii.gz"))
    cache = tmp_path / "cache"
    prepare = ["prepare", "--data", str(tmp_path / "train"), "--cache", str(cache), "--no-progress"]
    assert train_main(prepare) == 2  # two t1n-looking files per case, no t1c: nothing to prepare
    assert "h0" in capsys.readouterr().err
    rule = ["--map", "t1c=*MPRAGE_post*"]
    assert train_main([*prepare, *rule]) == 0
    assert sorted(p.name for p in cache.glob("*.json")) == ["h0.json", "h1.json"]
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 1, "--val", str(tmp_path / "val"), *rule)) == 0
    (record,) = _validations(out)
    assert [r["case"] for r in record["val_cases"]] == ["h9"] and record["val_cases"][0]["status"] == "scored"


def test_case_score_is_the_mean_of_the_tumour_scores_else_the_whole_volume_ssim():
    both = Row("a", "t2f", "scored", ssim=0.5, ssim_tumor=0.9, ssim_non_tumor=0.7)
    assert case_score(both) == pytest.approx(0.8)
    assert case_score(Row("a", "t2f", "scored", ssim=0.5)) == 0.5
    assert case_score(Row("a", "t2f", "scored", ssim=0.5, ssim_tumor=None, ssim_non_tumor=0.7)) == 0.5
    assert case_score(Row("a", "t2f", "failed", ssim=0.5)) is None


def test_a_val_folder_without_a_complete_case_is_refused_before_training(cache, tmp_path, capsys):
    val = tmp_path / "val"
    make_case(val, "three", ("t1n", "t1c", "t2w"), shape=SHAPE)
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 2, "--val", str(val))) == 2
    err = capsys.readouterr().err
    assert "no usable validation case" in err and "three" in err
    assert not (out / "training" / "t2f" / "state.pt").exists()


def test_an_early_models_empty_images_count_zero_without_an_error(cache, val, tmp_path, capsys):
    out = tmp_path / "w"
    # learning rate 0: the model stays as built, whose last layer is zero, so its images are empty
    assert train_main(tiny_train_args(cache, out, 1, "0", "--val-steps", "2", "--val", str(val))) == 0
    (record,) = _validations(out)
    assert record["val_ssim"] == 0.0 and record["val_failed"] == 2  # 0 as documented, not null
    assert all("the synthetic image is empty" in r["message"] for r in record["val_cases"])
    err = capsys.readouterr().err
    assert " ERROR " not in err and "[failed]" not in err
    assert "validation: with-seg: the model's image is still empty; it counts 0" in err
    assert "validation SSIM 0: no case could be synthesised yet" in err
    assert not (out / "training" / "t2f" / "best").exists()  # nothing worth keeping as the best
