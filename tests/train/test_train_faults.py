"""Training when things go wrong for real: damaged cache entries, a damaged training state, an output
folder that is read-only or fills up, a data loader worker killed."""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brasyn.commands.train import main as train_main
from brasyn.train.checkpoints import read_state
from tests.helpers import tiny_train_args, tiny_training_cache
from tests.train.faults import children, session_processes, start, tmpfs


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tiny_training_cache(tmp_path_factory.mktemp("faults"), seed_step=1)


@pytest.fixture()
def copy(cache, tmp_path) -> Path:
    """A cache of its own to damage."""
    import shutil

    return Path(shutil.copytree(cache, tmp_path / "cache"))


def _state(out: Path) -> Path:
    return out / "training" / "t2f" / "state.pt"


def _steps(out: Path) -> list[int]:
    lines = (out / "training" / "t2f" / "log.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("whole", [False, True], ids=["patches", "whole-volumes"])
def test_a_zeroed_cache_array_stops_training_with_its_name_and_the_state_saved(copy, tmp_path, capsys, whole):
    """The header intact, the voxels zero: the brain its JSON counts is not there."""
    array = copy / "case0.npy"
    with open(array, "r+b") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        offset = handle.tell()
    size = array.stat().st_size
    with open(array, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0" * (size - offset))
    out = tmp_path / "w"
    args = tiny_train_args(copy, out, 30, "1e-3")
    if whole:
        args = [a for a in args if a not in ("--patch", "32")]
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert f"the cache entry {array} does not hold the data its JSON describes" in err
    assert "prepare the cache again" in err and "--resume" in err and "Traceback" not in err
    taken = _steps(out)
    assert read_state(_state(out))["step"] == (taken[-1] if taken else 0)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("brain_slices", lambda s: [10**9, *s[1:]], "brain_slices holds a count outside 0 .. "),
        ("brain_slices", lambda s: [*s, 5], "brain_slices holds 33 counts for 32 slices"),
        ("percentiles", lambda p: {**p, "t1n": float("inf")}, "the t1n percentile is inf"),
    ],
)
def test_a_cache_entry_whose_json_cannot_be_right_is_named_and_left_out(
    copy, tmp_path, capsys, field, value, reason
):
    meta = copy / "case0.json"
    record = json.loads(meta.read_text())
    record[field] = value(record[field])
    meta.write_text(json.dumps(record))
    out = tmp_path / "w"
    assert train_main(tiny_train_args(copy, out, 3, "1e-3")) == 0
    err = capsys.readouterr().err
    assert f"skipping the cache entry {meta} ({reason}" in err and "prepare the cache again" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoints"]["t2f"]["provenance"]["data"]["cases"] == ["case1"]


def _damage(state: Path, how: str) -> None:
    if how == "truncated":
        state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    elif how == "empty":
        state.write_bytes(b"")
    elif how == "a tensor":
        torch.save(torch.zeros(3), state)
    elif how == "an object":
        torch.save({"step": 2, "model": datetime.date(2024, 1, 1)}, state)
    elif how == "another dict":
        torch.save({"step": 2}, state)


@pytest.mark.parametrize("how", ["truncated", "empty", "a tensor", "an object", "another dict"])
def test_resume_from_a_damaged_state_says_so_in_one_message(cache, tmp_path, capsys, how):
    out = tmp_path / "w"
    args = tiny_train_args(cache, out, 2, "1e-3")
    assert train_main(args) == 0
    state = _state(out)
    _damage(state, how)
    damaged = state.read_bytes()
    capsys.readouterr()
    assert train_main([*args, "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"the training state {state} is damaged (" in err and "--restart" in err
    assert "Traceback" not in err and "training case(s)" not in err  # said before the data is read
    assert state.read_bytes() == damaged
    assert train_main([*args, "--restart"]) == 0  # the way out it names
    assert state.with_name("state.pt.bak").read_bytes() == damaged


def test_a_read_only_out_is_refused_before_the_data_is_read(cache, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as mount:
        for out in (mount, mount / "w"):
            assert train_main(tiny_train_args(cache, out, 2, "1e-3")) == 2
            err = capsys.readouterr().err
            assert f"--out {out} cannot be written (Read-only file system)" in err
            assert "Traceback" not in err and "training case(s)" not in err


def test_a_full_disk_while_saving_keeps_the_previous_state_and_says_so(cache, tmp_path, capsys):
    """The tiny model's state is 11.4 MB: the first fits on a 16 MB disk, a second beside it does not."""
    with tmpfs(tmp_path / "out", "16m") as out:
        assert train_main(tiny_train_args(cache, out, 4, "1e-3", "--save-every", "2")) == 2
        err = capsys.readouterr().err
        state = _state(out)
        assert f"could not save the training state at step 4 to {state} (No space left on device)" in err
        assert "the state saved at step 2 is kept intact" in err and "--resume" in err
        assert "Traceback" not in err
        assert read_state(state)["step"] == 2
        assert sorted(p.name for p in state.parent.iterdir()) == ["log.jsonl", "state.pt"]  # no temporary


def test_a_killed_data_loader_worker_stops_training_with_the_state_saved(cache, tmp_path):
    out = tmp_path / "w"
    args = tiny_train_args(cache, out, 100000, "1e-3", "--save-every", "0")
    args[args.index("--workers") + 1] = "2"
    proc = start(args)
    log = out / "training" / "t2f" / "log.jsonl"
    deadline = time.time() + 120
    while not (log.is_file() and len(log.read_text().splitlines()) >= 4):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert "a data loader worker was killed" in err and "Traceback" not in err
    step = read_state(_state(out))["step"]
    assert step == _steps(out)[-1] and f"saved at step {step}: rerun with --resume" in err
    time.sleep(0.5)
    assert session_processes(proc.pid) == []


@pytest.mark.parametrize(
    "message",
    [
        "the disk of the cache X is full (No space left on device) while preparing C",
        "the cache folder X cannot be written (Read-only file system)",
        "another prepare (process N) is writing into X: waiting for it to finish",
        "its prepare worker was killed by SIGKILL",
        "stopped by SIGTERM: the cases prepared so far are kept",
        "training needs all four contrasts (t1n, t1c, t2w, t2f) of each case",
        "does not hold the data its JSON describes",
        "the training state X is damaged",
        "--out X cannot be written (Read-only file system)",
        "could not save the training state at step N to X (No space left on device)",
        "a data loader worker was killed",
    ],
)
def test_troubleshooting_has_a_row_for_each_message(message):
    page = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    assert message in page


def test_training_into_a_folder_with_someone_elses_checkpoint_is_refused_unless_told(cache, tmp_path, capsys):
    from brasyn.weights.store import WeightStore, init_random

    out = tmp_path / "w"
    init_random(out, "tiny", seed=9, targets=["t2f"])  # stands in for imported or long-trained weights
    before = (out / "t2f.pt").read_bytes()
    args = tiny_train_args(cache, out, 2, "1e-3")
    assert train_main(args) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds a t2f checkpoint, {out / 't2f.pt'}" in err and "--overwrite" in err
    assert "training case(s)" not in err  # said before the data is read
    assert (out / "t2f.pt").read_bytes() == before and not (out / "training").exists()
    assert train_main([*args, "--overwrite"]) == 0
    assert (out / "t2f.pt").read_bytes() != before
    # its own checkpoint, with its training state beside it: continued without --overwrite
    assert train_main([*args, "--steps", "3", "--resume"]) == 0
    assert WeightStore(out).info("t2f").provenance.get("command") != "init"


def test_training_into_a_folder_of_released_files_keeps_the_other_three_in_use(cache, tmp_path):
    from brasyn.model.unet import PRESETS, Denoiser
    from brasyn.weights.store import WeightStore, _randomise

    out = tmp_path / "downloads"
    out.mkdir()
    for seed, name in enumerate(("t1_gen.pt", "t1ce_gen.pt", "t2_gen.pt")):
        model = Denoiser.from_config(PRESETS["tiny"])
        _randomise(model, torch.Generator().manual_seed(seed))
        torch.save(model.state_dict(), out / name)  # as the official code saves them; no manifest
    assert train_main(tiny_train_args(cache, out, 2, "1e-3")) == 0
    store = WeightStore(out)
    assert [m.value for m in store.targets()] == ["t1n", "t1c", "t2w", "t2f"]
    assert store.info("t1n").file == "t1_gen.pt" and store.info("t2f").file == "t2f.pt"


def test_resume_with_steps_not_beyond_the_saved_step_trains_nothing_and_says_so(cache, tmp_path, capsys):
    out = tmp_path / "w"
    args = tiny_train_args(cache, out, 3, "1e-3")
    assert train_main(args) == 0
    files = {p: p.read_bytes() for p in [out / "t2f.pt", out / "manifest.json", _state(out)]}
    capsys.readouterr()
    assert train_main([*args, "--steps", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert (
        f"the training state {_state(out)} is at step 3, already at --steps 2 or beyond: nothing to train"
        in err
    )
    assert "training case(s)" not in err  # said before the data is read
    assert {p: p.read_bytes() for p in files} == files  # nothing rewritten
