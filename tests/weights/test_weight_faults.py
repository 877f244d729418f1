"""Weights folders that are broken in ways that used to hang, crash or lose weights: a checkpoint that is a
FIFO or a link to a device, manifest entries a reader cannot take, and commands writing into a folder that
already holds other weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from brasyn.commands.weights import main as weights_main
from tests.helpers import make_case

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def weights(tmp_path, tiny_weights) -> Path:
    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights, folder)
    return folder


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "entrypoint.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,  # the fault was a hang: a run that does not end fails the test here
        cwd=ROOT,
    )


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_a_checkpoint_that_is_not_a_regular_file_fails_its_cases_at_once(tmp_path, weights, kind, capsys):
    (weights / "t2f.pt").unlink()
    if kind == "fifo":
        os.mkfifo(weights / "t2f.pt")
    else:
        (weights / "t2f.pt").symlink_to("/dev/zero")
    make_case(tmp_path / "in", "BraTS-GLI-00001-000")  # lacks t2f
    make_case(tmp_path / "in", "BraTS-GLI-00002-000", contrasts=("t1n", "t1c", "t2f"))  # lacks t2w
    common = ["--input", str(tmp_path / "in"), "--weights", str(weights), "--sampler", "x0", "--steps", "1"]
    done = _run(*common, "--output", str(tmp_path / "out"), "--device", "cpu", "--no-progress")
    assert done.returncode == 1, done.stderr
    assert (
        "is a named pipe (FIFO), not a regular file" in done.stderr or "is a character device" in done.stderr
    )
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["BraTS-GLI-00002-000-t2w.nii.gz"]
    assert weights_main(["verify", str(weights)]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("t2f"))
    assert "NOT A FILE (" in line and "nothing was read from it" in line


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("file", "t2f\x00.pt", "file"),
        ("config", {"model_channels": 8, "num_groups": 0, "num_res_blocks": 1}, "num_groups"),
    ],
)
def test_a_manifest_entry_a_reader_cannot_take_is_named_in_one_message(
    tmp_path, weights, field, value, expected
):
    manifest = json.loads((weights / "manifest.json").read_text())
    entry = manifest["checkpoints"]["t2f"]
    entry[field] = value if field == "file" else {**entry["config"], **value}
    (weights / "manifest.json").write_text(json.dumps(manifest))
    make_case(tmp_path / "in", "BraTS-GLI-00001-000")
    done = _run("--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(weights))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert str(weights / "manifest.json") in last and "t2f" in last and expected in last, last


def _digests(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_init_does_not_replace_the_checkpoints_a_folder_holds_unless_told(weights, capsys):
    before = _digests(weights)
    assert weights_main(["init", "--out", str(weights), "--seed", "7", "--targets", "t1c"]) == 2
    err = capsys.readouterr().err
    assert f"{weights} already holds a t1c checkpoint, {weights / 't1c.pt'}" in err and "--overwrite" in err
    assert _digests(weights) == before
    assert (
        weights_main(["init", "--out", str(weights), "--seed", "7", "--targets", "t1c", "--overwrite"]) == 0
    )
    after = _digests(weights)
    assert after["t1c.pt"] != before["t1c.pt"] and after["t1n.pt"] == before["t1n.pt"]


def _official_folder(folder: Path, names: tuple[str, ...]) -> None:
    import torch

    from brasyn.model.unet import PRESETS, Denoiser
    from brasyn.weights.store import _randomise

    folder.mkdir(parents=True)
    for seed, name in enumerate(names):
        model = Denoiser.from_config(PRESETS["tiny"])
        _randomise(model, torch.Generator().manual_seed(seed))
        torch.save(model.state_dict(), folder / name)


def test_writing_into_a_folder_of_released_files_keeps_them_in_use(tmp_path, capsys):
    from brasyn.weights.store import WeightStore

    folder = tmp_path / "downloads"
    _official_folder(folder, ("t1_gen.pt", "t1ce_gen.pt", "t2_gen.pt"))
    before = _digests(folder)
    # the folder's released t1n file is a checkpoint for t1n: not replaced unasked
    assert weights_main(["init", "--out", str(folder), "--targets", "t1n"]) == 2
    assert "already holds a t1n checkpoint" in capsys.readouterr().err and _digests(folder) == before
    # a checkpoint for the contrast the folder lacks: the manifest then lists the released files too
    assert weights_main(["init", "--out", str(folder), "--targets", "t2f"]) == 0
    store = WeightStore(folder)
    assert [m.value for m in store.targets()] == ["t1n", "t1c", "t2w", "t2f"]
    assert {store.info(m).file for m in store.targets()} == {
        "t1_gen.pt",
        "t1ce_gen.pt",
        "t2_gen.pt",
        "t2f.pt",
    }
    assert all(_digests(folder)[name] == data for name, data in before.items())
    assert weights_main(["verify", str(folder)]) == 0  # every file now has a recorded sha256


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "is empty (0 bytes)"),
        (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 326000000\n",
            "is a Git LFS pointer",
        ),
        (b"<!DOCTYPE html><html>Not Found</html>", "is a text (HTML, JSON or XML) file"),
        (b"hello world\n", "is a text file ('hello world' ...)"),
        (
            bytes(range(1, 255)) * 4,
            "is not a torch checkpoint (neither a zip archive as torch writes nor a pickle)",
        ),
        (b"\x1f\x8b\x08\x00rest", "is gzip-compressed"),
    ],
)
def test_importing_a_file_that_is_no_checkpoint_says_what_it_is(tmp_path, content, said, capsys):
    file = tmp_path / "flair_gen.pt"
    file.write_bytes(content)
    assert weights_main(["import-official", str(file), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"{file} {said}" in err and "Traceback" not in err
