import nibabel as nib
import pytest

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
