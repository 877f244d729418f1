"""A wrong mount, a stray folder or a forced target that cannot be made must not pass for success."""

from __future__ import annotations

import logging

import pytest

from brasyn.commands.cli import DEFAULT_WEIGHTS, main
from brasyn.data.phantom import phantom
from tests.helpers import make_case, save_nifti

LINEAR = ["--method", "linear", "--weights", str(DEFAULT_WEIGHTS), "--device", "cpu", "--no-progress"]


def _run(inputs, output, *extra) -> int:
    return main(["--input", str(inputs), "--output", str(output), *LINEAR, *extra])


def test_an_empty_input_folder_exits_2_saying_what_is_expected(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    assert _run(tmp_path / "in", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "is empty (is the right folder mounted?)" in err and "<case>-t1n.nii.gz" in err


def test_nnunet_channel_files_are_recognised_and_the_mapping_explained(tmp_path, capsys):
    for channel in range(3):
        save_nifti(tmp_path / "in" / f"case_{channel:04d}.nii.gz", phantom(seed=channel))
    assert _run(tmp_path / "in", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "nnU-Net channel files" in err and "dataset.json" in err and "case_0000.nii.gz" in err


def test_a_stray_folder_without_images_is_ignored_with_a_warning(tmp_path, caplog):
    inputs = tmp_path / "in"
    make_case(inputs, "BraTS-GLI-00001-000", seed=1)
    (inputs / "notes").mkdir()
    (inputs / "notes" / "readme.txt").write_text("scanner protocol")
    (inputs / "empty").mkdir()
    with caplog.at_level(logging.WARNING, logger="brasyn"):
        assert _run(inputs, tmp_path / "out") == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["BraTS-GLI-00001-000-t2f.nii.gz"]


def test_a_folder_of_unrecognised_images_still_fails_alone(tmp_path):
    inputs = tmp_path / "in"
    make_case(inputs, "BraTS-GLI-00001-000", seed=1)
    save_nifti(inputs / "odd" / "scan.nii.gz", phantom())
    assert _run(inputs, tmp_path / "out") == 1


def test_a_forced_target_that_a_case_cannot_give_fails_that_case(tmp_path, capsys):
    inputs = tmp_path / "in"
    make_case(inputs, "BraTS-GLI-00001-000", ("t1n", "t1c", "t2w"), seed=1)  # lacks t2f
    assert _run(inputs, tmp_path / "out", "--target", "t1n") == 1
    err = capsys.readouterr().err
    assert "it lacks t2f and already holds t1n" in err and "run without --target" in err


def test_help_names_the_demo_and_the_mlcube_forms(capsys):
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "brasyn demo [--out DIR]" in text and "brasyn infer --data_path DIR" in text


def test_weights_given_as_the_manifest_file_mean_its_folder(tmp_path):
    from brasyn.weights.store import init_random

    make_case(tmp_path / "in", "BraTS-GLI-00001-000", seed=1)
    init_random(tmp_path / "w", "tiny", targets=["t2f"])
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--device", "cpu"]
    assert main([*args, "--weights", str(tmp_path / "w" / "manifest.json"), "--sampler", "x0"]) == 0


def test_an_output_name_collision_names_the_option_that_avoids_it(tmp_path, capsys):
    from brasyn.data.cases import discover

    for case in ("a", "b"):
        make_case(tmp_path / "in", case, pattern="shared_{m}.nii.gz")
    messages = [getattr(item, "message", "") for item in discover(tmp_path / "in")]
    assert any("--naming brats2023" in m for m in messages)


def test_random_weights_are_announced_in_the_log_and_the_report(tmp_path, capsys):
    import json

    from brasyn.weights.store import init_random

    make_case(tmp_path / "in", "BraTS-GLI-00001-000", seed=1)
    init_random(tmp_path / "w", "tiny", targets=["t2f"])
    report = tmp_path / "report.json"
    args = [
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--weights",
        str(tmp_path / "w"),
    ]
    assert main([*args, "--device", "cpu", "--sampler", "x0", "--report", str(report)]) == 0
    assert "weights in" in (err := capsys.readouterr().err) and "are RANDOM" in err
    assert json.loads(report.read_text())["weights_quality"] == "random"
    assert (
        main(
            [
                *LINEAR[:4],
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(tmp_path / "o2"),
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert json.loads(report.read_text())["weights_quality"] is None  # a baseline: no weights


def test_an_mlcube_weights_folder_with_files_but_no_manifest_is_refused(tmp_path, capsys):
    make_case(tmp_path / "in", "BraTS-GLI-00001-000", seed=1)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model_0001.pt").write_bytes(b"not read")
    args = ["infer", "--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")]
    assert main([*args, "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "holds model_0001.pt but no manifest.json and none of the official checkpoint names" in err
    assert "flair_gen.pt" in err and "import-official" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_mlcube_weights_folder_with_a_bad_official_file_is_refused_not_replaced(tmp_path, capsys):
    make_case(tmp_path / "in", "BraTS-GLI-00001-000", seed=1)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "flair_gen.pt").write_bytes(b"an interrupted download")
    args = ["infer", "--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")]
    assert main([*args, "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert "flair_gen.pt is a text file ('an interrupted download' ...), not a torch checkpoint" in err
    assert "baked into the image" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_threads_are_pinned_and_recorded_in_the_report(tmp_path):
    import json

    import torch

    make_case(tmp_path / "in", "BraTS-GLI-00001-000", seed=1)
    report = tmp_path / "report.json"
    before = torch.get_num_threads()
    try:
        assert _run(tmp_path / "in", tmp_path / "out", "--threads", "1", "--report", str(report)) == 0
        assert torch.get_num_threads() == 1
        assert json.loads(report.read_text())["settings"]["threads"] == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("fault", ["empty input", "bad weights", "no case"])
def test_a_run_that_cannot_start_creates_no_output_folder(tmp_path, fault, capsys):
    (tmp_path / "in").mkdir()
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out" / "sub")]
    if fault == "bad weights":
        make_case(tmp_path / "in", "BraTS-GLI-00001-000")
        args += ["--weights", str(tmp_path / "no-such-weights")]
    elif fault == "no case":
        (tmp_path / "in" / "notes.txt").write_text("not a case")
    assert main(args) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
