"""``python -m brasyn.weights fetch-official``: the released checkpoints downloaded from a local stand-in
of the Hub (``huggingface_hub`` does the transfer, as against huggingface.co), checked, recorded; and
``verify``/``list``/``import-official`` telling the released files from others."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sys
from pathlib import Path

import pytest
import torch

import brasyn.weights.release as release
from brasyn.commands.weights import main as weights_main
from brasyn.data.modalities import Modality
from brasyn.model.unet import PRESETS, Denoiser
from brasyn.weights.manifest import CheckpointInfo
from brasyn.weights.release import Release, is_official_architecture, release_check
from brasyn.weights.store import _randomise
from tests.weights.stand_in_hub import COMMIT, StandInHub

pytest.importorskip("huggingface_hub")

NAMES = {
    "t1_gen.pt": Modality.T1N,
    "t1ce_gen.pt": Modality.T1C,
    "t2_gen.pt": Modality.T2W,
    "flair_gen.pt": Modality.T2F,
}


def _state_dict_bytes(seed: int) -> bytes:
    model = Denoiser.from_config(PRESETS["tiny"])
    _randomise(model, torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)  # as the official code saves its checkpoints
    return buffer.getvalue()


@pytest.fixture(scope="module")
def released() -> dict[str, bytes]:
    return {name: _state_dict_bytes(seed) for seed, name in enumerate(NAMES)}


@pytest.fixture
def hub(released):
    with StandInHub("pfriedri/cwdm", dict(released)) as served:
        yield served


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(hub: StandInHub, out: Path, *extra: str) -> int:
    return weights_main(["fetch-official", "--out", str(out), "--endpoint", hub.endpoint, *extra])


def _left(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_fetch_official_downloads_the_four_files_at_one_commit_and_records_them(
    hub, released, tmp_path, capsys
):
    out = tmp_path / "official"
    assert _fetch(hub, out) == 0
    captured = capsys.readouterr()
    assert _left(out) == sorted([*NAMES, "manifest.json"])  # the released names; no staging folder left
    for name, data in released.items():
        assert (out / name).read_bytes() == data
    # every file was asked for at the commit "main" resolved to, so all four come from one commit
    assert sorted(hub.downloads()) == sorted(NAMES)
    assert all(f"/resolve/{COMMIT}/" in path for method, path in hub.requests if method == "GET")
    assert "--revision " + COMMIT in captured.err  # how to repeat exactly this download
    entries = json.loads((out / "manifest.json").read_text())["checkpoints"]
    for name, target in NAMES.items():
        entry = entries[target.value]
        assert (
            entry["file"] == name
            and entry["sha256"] == _sha(released[name])
            and entry["format"] == "official"
        )
        provenance = entry["provenance"]
        assert provenance["command"] == "fetch-official" and provenance["repository"] == "pfriedri/cwdm"
        assert provenance["revision"] == COMMIT and provenance["revision_asked"] == "main"
        assert provenance["published_sha256"] == _sha(released[name])
        assert provenance["url"] == f"{hub.endpoint}/pfriedri/cwdm/resolve/{COMMIT}/{name}"
        assert f"{target.value}  {out / name}  {_sha(released[name])}" in captured.out


def test_verify_tells_a_fetched_file_from_a_replaced_one(hub, tmp_path, capsys):
    out = tmp_path / "official"
    assert _fetch(hub, out) == 0
    capsys.readouterr()
    assert weights_main(["verify", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert all(
        f"OK  released file (sha256 the Hub published at pfriedri/cwdm@{COMMIT[:12]}" in x for x in lines
    )
    # another model under the released name: verify fails it (sha256), the release check no longer holds
    (out / "t2_gen.pt").write_bytes(_state_dict_bytes(99))
    assert weights_main(["verify", str(out)]) == 1
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("t2w"))
    assert "MISMATCH" in line and "released file" not in line


def test_list_calls_a_file_official_only_when_it_has_the_released_architecture(hub, tmp_path, capsys):
    out = tmp_path / "official"
    assert _fetch(hub, out) == 0
    capsys.readouterr()
    assert weights_main(["list", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    for line in lines:  # the stand-in serves tiny models under the released names
        assert "architecture=other" in line and "source: not the released architecture" in line
        assert "HuggingFace" not in line
    assert is_official_architecture(PRESETS["official"]) and not is_official_architecture(PRESETS["tiny"])


def test_a_damaged_download_is_refused_and_leaves_nothing(hub, released, tmp_path, capsys):
    hub.published["flair_gen.pt"] = _sha(b"what the Hub says the file is")
    out = tmp_path / "official"
    assert _fetch(hub, out) == 2
    err = capsys.readouterr().err
    assert "The download of flair_gen.pt is damaged" in err and "Traceback" not in err
    assert _left(out) == []  # neither the three good files nor a staging folder


def test_an_unknown_revision_and_an_unreachable_hub_stop_with_one_message(hub, tmp_path, capsys):
    out = tmp_path / "official"
    assert _fetch(hub, out, "--revision", "v9") == 2
    err = capsys.readouterr().err
    assert "Could not download t1_gen.pt from" in err and "/resolve/v9/" in err and "Traceback" not in err
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound but not listening: connections are refused
        code = weights_main(["fetch-official", "--out", str(out), "--endpoint", f"http://127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Could not download t1_gen.pt" in err and "import-official DOWNLOADS" in err
    assert _left(out) == []


def test_an_explicit_commit_is_fetched_and_a_second_run_downloads_nothing(hub, tmp_path):
    out = tmp_path / "official"
    hub.branches = ()  # only the commit itself is served
    assert _fetch(hub, out, "--revision", COMMIT) == 0
    assert len(hub.downloads()) == 4
    before = {name: (out / name).stat().st_mtime_ns for name in NAMES}
    assert _fetch(hub, out, "--revision", COMMIT) == 0
    assert len(hub.downloads()) == 4  # nothing fetched again: each file already had the published sha256
    assert {name: (out / name).stat().st_mtime_ns for name in NAMES} == before


def test_a_different_checkpoint_already_in_the_folder_is_not_replaced(hub, tmp_path, capsys):
    out = tmp_path / "official"
    out.mkdir()
    mine = _state_dict_bytes(42)
    (out / "t1_gen.pt").write_bytes(mine)
    assert _fetch(hub, out) == 2
    assert "already exists and is not the file the Hub serves" in capsys.readouterr().err
    assert _left(out) == ["t1_gen.pt"] and (out / "t1_gen.pt").read_bytes() == mine


def test_pinned_digests_decide_released_or_not(hub, released, tmp_path, monkeypatch, capsys):
    out = tmp_path / "official"
    # a repository that changed since the release: its t1n file is not the pinned one
    monkeypatch.setattr(release, "RELEASED_SHA256", {Modality.T1N: _sha(b"the released t1n")})
    assert _fetch(hub, out) == 2
    assert "t1_gen.pt as served by" in capsys.readouterr().err and _left(out) == []
    pins = {target: _sha(released[name]) for name, target in NAMES.items()}
    monkeypatch.setattr(release, "RELEASED_SHA256", pins)
    assert _fetch(hub, out) == 0
    capsys.readouterr()
    assert weights_main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.count("OK  released file (sha256 pinned in brasyn)") == 4


def test_a_folder_without_manifest_verifies_only_against_a_pinned_release(
    released, tmp_path, monkeypatch, capsys
):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for name, data in released.items():
        (downloads / name).write_bytes(data)
    assert weights_main(["verify", str(downloads)]) == 1  # a file's own sha256 proves nothing
    out = capsys.readouterr()
    assert out.out.count("UNRECORDED (no manifest.json records its sha256") == 4
    assert "could not be verified" in out.err
    pins = {target: _sha(released[name]) for name, target in NAMES.items()}
    monkeypatch.setattr(release, "RELEASED_SHA256", pins)
    assert weights_main(["verify", str(downloads)]) == 0
    assert capsys.readouterr().out.count("OK  released file (sha256 pinned in brasyn)") == 4


def test_import_official_says_whether_the_file_is_the_released_one(released, tmp_path, monkeypatch, capsys):
    source = tmp_path / "flair_gen.pt"
    source.write_bytes(released["flair_gen.pt"])
    monkeypatch.setattr(release, "RELEASED_SHA256", {Modality.T2F: _sha(b"the released t2f")})
    assert weights_main(["import-official", str(source), "--out", str(tmp_path / "w")]) == 0
    assert (
        "(from flair_gen.pt; not the released file (the released file has sha256" in capsys.readouterr().out
    )
    monkeypatch.setattr(release, "RELEASED_SHA256", {Modality.T2F: _sha(released["flair_gen.pt"])})
    assert weights_main(["import-official", str(source), "--out", str(tmp_path / "v")]) == 0
    assert "(from flair_gen.pt; released file (sha256 pinned in brasyn))" in capsys.readouterr().out


def test_the_released_file_of_another_contrast_is_named_as_such(monkeypatch):
    info = CheckpointInfo.create("t1n", "t1n.pt", "a" * 64, "official", PRESETS["tiny"], {})
    check = release_check(info)
    assert check is not None and check.state is Release.UNKNOWN and "fetch-official" in check.basis
    monkeypatch.setattr(release, "RELEASED_SHA256", {Modality.T2F: "a" * 64})
    check = release_check(info)
    assert check is not None and check.state is Release.NOT_RELEASED
    assert "it is the released t2f checkpoint, listed here for t1n" in str(check)
    brasyn_format = CheckpointInfo.create("t1n", "t1n.pt", "a" * 64, "brasyn", PRESETS["tiny"], {})
    assert release_check(brasyn_format) is None  # no release holds a checkpoint in brasyn's own format


def test_without_huggingface_hub_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    assert weights_main(["fetch-official", "--out", str(tmp_path / "o")]) == 2
    assert "needs the package huggingface_hub: pip install huggingface_hub" in capsys.readouterr().err
