"""``brasyn info PATH`` and ``read_record`` as the documentation shows them: an output's recorded settings,
a weights folder's and a checkpoint's facts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from brasyn.commands.cli import main
from brasyn.data.provenance import read_record
from tests.helpers import make_case

FAST = ["--device", "cpu", "--no-progress", "--method", "linear"]
CASE = "BraTS-GLI-00001-000"
REPO = Path(__file__).resolve().parents[2]


def _output(tmp_path: Path) -> Path:
    make_case(tmp_path / "in", CASE, ("t1n", "t1c", "t2w"), seed=1, shape=(32, 32, 24))
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *FAST]) == 0
    return tmp_path / "out" / f"{CASE}-t2f.nii.gz"


def test_read_record_takes_the_path_as_text_exactly_as_the_documentation_shows(tmp_path):
    output = _output(tmp_path)
    code = f"from brasyn.data.provenance import read_record; print(read_record({str(output)!r}))"
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert shown.strip() != "None" and "'method': 'linear'" in shown
    assert read_record(str(output)) == read_record(output)


def test_info_prints_the_settings_an_output_was_written_with(tmp_path, capsys):
    output = _output(tmp_path)
    capsys.readouterr()
    assert main(["info", str(output)]) == 0
    first, _, rest = capsys.readouterr().out.partition("\n")
    assert first == f"{output}: brasyn {read_record(output)['version']} t2f linear"
    assert json.loads(rest) == read_record(output)


def test_info_on_a_file_without_a_record_exits_1_saying_so(tmp_path, capsys):
    inputs = make_case(tmp_path / "in", CASE, ("t1n",), seed=1, shape=(16, 16, 8))
    assert main(["info", str(inputs["t1n"])]) == 1
    err = capsys.readouterr().err
    assert f"{inputs['t1n']} records no brasyn settings (written by another tool, or by a brasyn" in err
    assert main(["info", str(tmp_path / "absent.nii.gz")]) == 2
    assert "absent.nii.gz does not exist; give an output image, a weights folder or a checkpoint" in (
        capsys.readouterr().err
    )


def test_info_lists_a_weights_folder_and_a_checkpoint_of_it(capsys):
    assert main(["info", str(REPO / "weights")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["t1n", "t1c", "t2w", "t2f"]
    assert main(["info", str(REPO / "weights" / "t2f.pt")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{REPO / 'weights' / 't2f.pt'}: listed in {REPO / 'weights' / 'manifest.json'}")


def test_info_names_a_file_that_is_no_checkpoint(tmp_path, capsys):
    pointer = tmp_path / "flair_gen.pt"
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    assert main(["info", str(pointer)]) == 1
    assert f"{pointer} is a Git LFS pointer" in capsys.readouterr().err
