import os
import stat
from pathlib import Path

import nibabel as nib
import pytest

import brasyn.commands.demo as demo
from brasyn.commands.command import run_command
from brasyn.commands.example import EXAMPLE_CASE, main, write_example
from brasyn.data.cases import discover


def test_example_from_real_data_withholds_the_flair(shared_dir, tmp_path):
    assert main(["--out", str(tmp_path), "--source", str(shared_dir / "data" / "real")]) == 0
    (case,) = discover(tmp_path / "input")
    assert case.id == EXAMPLE_CASE and case.target.value == "t2f"
    assert case.output_name == f"{EXAMPLE_CASE}-t2f.nii.gz"
    assert [p.name for p in (tmp_path / "truth" / EXAMPLE_CASE).iterdir()] == [case.output_name]


def test_example_without_real_data_is_a_phantom_case_on_the_brats_grid(tmp_path, caplog):
    assert write_example(tmp_path, source=tmp_path / "nothing-here") == "phantom"
    # said plainly, with where it looked and why an installed brasyn has no real case
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert str(tmp_path / "nothing-here" / EXAMPLE_CASE) in warning
    assert "not with an installed brasyn" in warning and "synthetic phantom" in warning
    assert "not a brain" in warning
    (case,) = discover(tmp_path / "input")
    assert case.target.value == "t2f" and len(case.files) == 3
    image = nib.load(next(iter(case.files.values())))
    assert image.shape == (240, 240, 155) and nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert image.get_fdata().any()


@pytest.mark.slow
def test_demo_command_synthesises_the_example_with_the_bundled_weights(tmp_path):
    from brasyn.commands.cli import main as cli_main

    out = tmp_path / "demo"
    assert cli_main(["demo", "--out", str(out), "--steps", "1", "--device", "cpu", "--no-progress"]) == 0
    assert [p.name for p in (out / "output").iterdir()] == [f"{EXAMPLE_CASE}-t2f.nii.gz"]
    image = nib.load(out / "output" / f"{EXAMPLE_CASE}-t2f.nii.gz")
    assert image.shape == (240, 240, 155) and image.get_fdata().max() > 1


# --- the demo's work folder --------------------------------------------------------------------------


def _victim(root: Path) -> tuple[Path, dict[str, bytes]]:
    """Another user's folder holding a case of the example's name: nothing in it may change."""
    victim = root / "victim"
    (victim / EXAMPLE_CASE).mkdir(parents=True)
    (victim / EXAMPLE_CASE / "notes.txt").write_bytes(b"theirs")
    (victim / EXAMPLE_CASE / f"{EXAMPLE_CASE}-t1n.nii.gz").write_bytes(b"their image")
    return victim, _tree(victim)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"" for p in folder.rglob("*")}


class _Synthesise:
    """The main job's stand-in: records its arguments and fails (so that nothing is scored)."""

    def __init__(self) -> None:
        self.argv: list[str] | None = None

    def __call__(self, argv: list[str]) -> int:
        self.argv = argv
        return 1


@pytest.mark.parametrize("planted", ["input", "truth", "output", f"input/{EXAMPLE_CASE}"])
def test_the_demo_never_writes_through_a_link_planted_in_its_work_folder(tmp_path, capsys, planted):
    victim, before = _victim(tmp_path)
    work = tmp_path / "work"
    (work / planted).parent.mkdir(parents=True)
    os.symlink(victim / EXAMPLE_CASE if planted.count("/") else victim, work / planted)
    synthesise = _Synthesise()
    code = run_command(lambda: demo.run_demo(["--out", str(work)], synthesise))
    assert code == 2 and synthesise.argv is None
    assert _tree(victim) == before
    err = capsys.readouterr().err
    assert f"{work / planted} is a symbolic link; brasyn writes only into folders it can trust" in err
    assert "Traceback" not in err


def test_the_example_replaces_a_link_among_its_files_without_following_it(tmp_path):
    victim, before = _victim(tmp_path)
    case = tmp_path / "work" / "input" / EXAMPLE_CASE
    case.mkdir(parents=True)
    os.symlink(victim / EXAMPLE_CASE / f"{EXAMPLE_CASE}-t1n.nii.gz", case / f"{EXAMPLE_CASE}-t1n.nii.gz")
    (case / "mine.txt").write_text("kept")
    assert write_example(tmp_path / "work", source=tmp_path / "nothing-here") == "phantom"
    assert _tree(victim) == before
    written = case / f"{EXAMPLE_CASE}-t1n.nii.gz"
    assert not written.is_symlink() and nib.load(written).shape == (240, 240, 155)
    assert (case / "mine.txt").read_text() == "kept"  # not the example's: left alone


def test_the_demo_works_in_a_private_folder_of_the_users_cache_by_default(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    written = []
    monkeypatch.setattr(demo, "write_example", lambda out: written.append(out) or "phantom")
    synthesise = _Synthesise()
    assert demo.run_demo([], synthesise) == 1
    work = tmp_path / "cache" / "brasyn" / "demo"
    assert written == [work]
    assert stat.S_IMODE(work.stat().st_mode) == 0o700 and work.stat().st_uid == os.geteuid()
    assert synthesise.argv[:4] == ["--input", str(work / "input"), "--output", str(work / "output")]


@pytest.mark.parametrize("planted", ["a link", "another user's folder"])
def test_the_demo_refuses_a_default_work_folder_it_cannot_trust(tmp_path, monkeypatch, capsys, planted):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    victim, before = _victim(tmp_path)
    work = tmp_path / "cache" / "brasyn" / "demo"
    work.parent.mkdir(parents=True)
    if planted == "a link":
        os.symlink(victim, work)
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        work.mkdir()
        os.chown(work, 4242, 4242)
    written = []
    monkeypatch.setattr(demo, "write_example", lambda out: written.append(out) or "phantom")
    synthesise = _Synthesise()
    assert run_command(lambda: demo.run_demo([], synthesise)) == 2
    assert not written and synthesise.argv is None and _tree(victim) == before
    err = capsys.readouterr().err
    assert str(work) in err and "choose another folder" in err and "Traceback" not in err
