"""Inputs as hospitals and other pipelines hand them over: contrasts named by --map patterns, one case given
file by file (--t1n ... --out), and several cases' images side by side in one folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brasyn.commands.cli import main
from brasyn.commands.options import MLCUBE_PARAMETERS, read_parameters
from brasyn.common.errors import CaseError
from brasyn.data.cases import Case, discover
from brasyn.data.contrast_map import ContrastMap, MapError, parse_map
from brasyn.data.flat_cases import group_flat
from brasyn.data.modalities import Modality
from brasyn.data.phantom import phantom
from tests.helpers import save_nifti

T1N, T1C, T2W, T2F = Modality.T1N, Modality.T1C, Modality.T2W, Modality.T2F
FAST = ["--device", "cpu", "--no-progress", "--method", "linear"]
SAMPLED = ["--device", "cpu", "--no-progress", "--sampler", "x0"]  # the bundled weights: draws from the seed


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).touch()
    return folder


def _images(folder: Path, *names: str) -> dict[str, Path]:
    """Phantom volumes under ``names``, a different scale each (so a swapped file changes the output)."""
    return {
        name: save_nifti(folder / name, phantom((40, 48, 32), seed=i, scale=200.0 * (i + 1)))
        for i, name in enumerate(names)
    }


def _only(results: list) -> Case | CaseError:
    assert len(results) == 1
    return results[0]


# --- --map: contrasts named by patterns -------------------------------------------------------------

HOSPITAL = ("T1_MPRAGE.nii.gz", "T1_MPRAGE_post.nii.gz", "T2_TSE.nii.gz")


def test_a_hospital_export_fails_by_name_and_runs_with_a_map(tmp_path):
    _touch(tmp_path / "in" / "patient7", *HOSPITAL)
    error = _only(discover(tmp_path / "in"))
    assert isinstance(error, CaseError) and "more than one file for the same contrast" in error.message
    case = _only(discover(tmp_path / "in", mapping=parse_map("t1c=*mprage_POST*")))  # letter case ignored
    assert isinstance(case, Case)
    assert {m: p.name for m, p in case.files.items()} == {
        T1N: "T1_MPRAGE.nii.gz",
        T1C: "T1_MPRAGE_post.nii.gz",
        T2W: "T2_TSE.nii.gz",
    }
    assert case.target is T2F and case.output_name == "patient7-t2f.nii.gz"


def test_bids_names_with_a_mapping_file(tmp_path):
    names = (
        "sub-01_T1w.nii.gz",
        "sub-01_ce-gadolinium_T1w.nii.gz",
        "sub-01_FLAIR.nii.gz",
        "sub-01_dseg.nii.gz",
    )
    _touch(tmp_path / "in" / "sub-01", *names)
    mapping_file = tmp_path / "names.yaml"
    mapping_file.write_text('t1c: "*ce-gadolinium_T1w*"\nflair: ["*_FLAIR.*", "*_T2starFLAIR.*"]\n')
    case = _only(discover(tmp_path / "in", mapping=parse_map(str(mapping_file))))
    assert isinstance(case, Case)
    assert case.files[T1C].name == "sub-01_ce-gadolinium_T1w.nii.gz"
    assert case.files[T1N].name == "sub-01_T1w.nii.gz"
    assert case.target is T2W and case.output_name == "sub-01-t2w.nii.gz"


def test_a_file_two_contrasts_patterns_match_fails_its_case_naming_file_and_patterns(tmp_path):
    _touch(tmp_path / "in" / "a", *HOSPITAL)
    _touch(tmp_path / "in" / "b", "b_t1.nii.gz", "b_t1ce.nii.gz", "b_t2.nii.gz")
    found = discover(tmp_path / "in", mapping=parse_map(["t1c=*post*", "t1n=*MPRAGE*"]))
    error, other = found
    assert isinstance(error, CaseError) and error.case == "a"
    assert "T1_MPRAGE_post.nii.gz matches t1c='*post*', t1n='*MPRAGE*'" in error.message
    assert [p.name for p in error.files] == ["T1_MPRAGE_post.nii.gz"]
    assert isinstance(other, Case) and other.target is T2F  # the other case goes on


def test_two_t1_files_suggest_the_map_lines_with_their_names_filled_in(tmp_path):
    # the most common hospital pair: a native and a post-contrast MPRAGE, both read as t1n by name
    _touch(tmp_path / "in" / "patient7", *HOSPITAL)
    error = _only(discover(tmp_path / "in"))
    assert isinstance(error, CaseError)
    assert error.message == (
        "more than one file for the same contrast (t1n: T1_MPRAGE.nii.gz, T1_MPRAGE_post.nii.gz); name each "
        "file's contrast with --map, e.g. --map t1n='T1_MPRAGE.nii.gz' --map t1c='T1_MPRAGE_post.nii.gz' "
        "(or rename or remove one of them)"
    )
    # the lines as suggested make the case run, keeping its t1c
    case = _only(
        discover(tmp_path / "in", mapping=parse_map(["t1n=T1_MPRAGE.nii.gz", "t1c=T1_MPRAGE_post.nii.gz"]))
    )
    assert isinstance(case, Case) and case.target is T2F and case.files[T1C].name == "T1_MPRAGE_post.nii.gz"


def test_suggested_map_lines_replace_the_case_id_so_they_fit_every_case(tmp_path):
    for case in ("P1", "P2"):
        _touch(tmp_path / "in" / case, f"{case}_t1.nii.gz", f"{case}_t1_vibe_KM.nii.gz", f"{case}_t2.nii.gz")
    errors = discover(tmp_path / "in")
    assert [e.case for e in errors] == ["P1", "P2"]
    assert all(isinstance(e, CaseError) for e in errors)
    assert "--map t1n='*_t1.nii.gz' --map t1c='*_t1_vibe_KM.nii.gz'" in errors[1].message


def test_a_pattern_matching_two_files_names_the_pattern(tmp_path):
    _touch(tmp_path / "in" / "a", *HOSPITAL)
    error = _only(discover(tmp_path / "in", mapping=parse_map("t1c=*MPRAGE*")))
    assert isinstance(error, CaseError)
    assert (
        "T1_MPRAGE.nii.gz (--map t1c='*MPRAGE*'), T1_MPRAGE_post.nii.gz (--map t1c='*MPRAGE*')"
        in error.message
    )
    assert "make the --map pattern match one file per case" in error.message


def test_patterns_never_take_a_mask(tmp_path):
    _touch(tmp_path / "in" / "a", *HOSPITAL, "T1_MPRAGE_post_brainmask.nii.gz", "T1_MPRAGE_post.json")
    case = _only(discover(tmp_path / "in", mapping=parse_map("t1c=*MPRAGE_post*")))
    assert isinstance(case, Case) and case.files[T1C].name == "T1_MPRAGE_post.nii.gz"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("pd=*PD*", "unknown contrast 'pd'"),
        ("t1c=", "must be text"),
        ("t1c=sub/*post*", "holds a folder"),
        ("nothing-here.yaml", "neither CONTRAST=PATTERN"),
        ({"t1c": 3}, "must be text"),
    ],
)
def test_bad_map_values_are_refused_with_what_is_expected(value, message):
    with pytest.raises(MapError, match=message):
        parse_map(value)


def test_map_flag_and_parameters_file_run_the_case(tmp_path, capsys):
    _images(tmp_path / "in" / "patient7", *HOSPITAL)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "none"), *FAST]) == 1
    report = tmp_path / "report.json"
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--report", str(report)]
    assert main([*args, "--map", "t1c=*MPRAGE_post*", *FAST]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["patient7-t2f.nii.gz"]
    assert json.loads(report.read_text())["settings"]["map"] == "t1c='*MPRAGE_post*'"
    # the MLCube form takes the same mapping from its parameters file
    params = tmp_path / "parameters.yaml"
    params.write_text('method: linear\ndevice: cpu\nmap: {t1c: "*MPRAGE_post*"}\n')
    assert read_parameters(params, MLCUBE_PARAMETERS)["map"] == ContrastMap(((T1C, "*MPRAGE_post*"),))
    ml = ["infer", "--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "ml")]
    assert main([*ml, "--parameters_file", str(params)]) == 0
    assert (tmp_path / "ml" / "patient7-t2f.nii.gz").read_bytes() == (
        tmp_path / "out" / "patient7-t2f.nii.gz"
    ).read_bytes()
    assert main([*args, "--map", "t1c", *FAST]) == 2
    assert "neither CONTRAST=PATTERN" in capsys.readouterr().err


# --- one case by its files -------------------------------------------------------------------------


def test_single_case_form_writes_what_the_folder_form_writes(tmp_path):
    files = _images(
        tmp_path / "in" / "BraTS-X-001", *(f"BraTS-X-001-{m}.nii.gz" for m in ("t1n", "t2w", "t2f"))
    )
    # sampled, so that the case's random draws (from the seed and the case id) count too
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *SAMPLED]) == 0
    t1n, t2w, t2f = files.values()
    out = tmp_path / "single" / "BraTS-X-001-t1c.nii.gz"
    assert main(["--t2f", str(t2f), "--t1n", str(t1n), "--t2w", str(t2w), "--out", str(out), *SAMPLED]) == 0
    assert out.read_bytes() == (tmp_path / "out" / "BraTS-X-001-t1c.nii.gz").read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    # a second run keeps the output, as a batch does, and --overwrite replaces it
    assert main(["--t2f", str(t2f), "--t1n", str(t1n), "--t2w", str(t2w), "--out", str(out), *FAST]) == 0
    # beside the inputs is allowed: the inputs themselves are never written
    beside = t1n.parent / "synthetic-t1c.nii.gz"
    before = {p: p.read_bytes() for p in files.values()}
    assert main(["--t1n", str(t1n), "--t2w", str(t2w), "--t2f", str(t2f), "--out", str(beside), *FAST]) == 0
    assert beside.is_file() and {p: p.read_bytes() for p in files.values()} == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input", "somewhere"], "--input cannot be combined with the single-case form"),
        (["--map", "t1c=*x*"], "--map cannot be combined with the single-case form"),
        (["--t2f", "{t1n}"], "takes three of --t1n, --t1c, --t2w, --t2f"),
        (["--out", "{dir}/x-t2w.nii.gz"], "says t2w, but the contrast synthesised from t1n, t1c, t2w is t2f"),
        (["--out", "{dir}/x.txt"], "is not an image file name"),
        (["--out", "{t1n}"], "is one of the inputs"),
        (["--t1c", "{dir}/missing.nii.gz"], "input {dir}/missing.nii.gz does not exist"),
    ],
)
def test_single_case_form_refuses_a_bad_command_line(tmp_path, capsys, extra, message):
    files = _images(tmp_path, "a-t1n.nii.gz", "a-t1c.nii.gz", "a-t2w.nii.gz")
    given = {"--t1n": str(files["a-t1n.nii.gz"]), "--t1c": str(files["a-t1c.nii.gz"])}
    given["--t2w"] = str(files["a-t2w.nii.gz"])
    given["--out"] = str(tmp_path / "o" / "a-t2f.nii.gz")
    subs = {"t1n": given["--t1n"], "dir": str(tmp_path)}
    extra = [e.format(**subs) for e in extra]
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        given[flag] = value
    assert main([x for pair in given.items() for x in pair] + FAST) == 2
    assert message.format(**subs) in capsys.readouterr().err
    assert not (tmp_path / "o" / "a-t2f.nii.gz").exists()


def test_single_case_form_without_out_and_a_broken_input(tmp_path, capsys):
    files = _images(tmp_path, "a-t1n.nii.gz", "a-t1c.nii.gz")
    broken = tmp_path / "a-t2w.nii.gz"
    broken.write_bytes(b"\x1f\x8b broken")
    assert main(["--t1n", str(files["a-t1n.nii.gz"]), *FAST]) == 2
    assert "given without --out FILE" in capsys.readouterr().err
    args = ["--t1n", str(files["a-t1n.nii.gz"]), "--t1c", str(files["a-t1c.nii.gz"]), "--t2w", str(broken)]
    assert (
        main([*args, "--out", str(tmp_path / "o" / "a-t2f.nii.gz"), *FAST]) == 1
    )  # a failed case, as a batch
    assert "a-t2w.nii.gz" in capsys.readouterr().err
    assert list((tmp_path / "o").iterdir()) == []


# --- several cases side by side in one folder ------------------------------------------------------


def test_group_flat_by_case_id():
    names = ["A-t1n.nii.gz", "A-t1c.nii.gz", "A-seg.nii.gz", "B_1-t1n.nii.gz", "T1.nii.gz", "notes.txt"]
    prefixes = {"A-t1n.nii.gz": "A", "A-t1c.nii.gz": "A", "B_1-t1n.nii.gz": "B_1", "T1.nii.gz": ""}
    groups = group_flat(names, prefixes, [*prefixes])
    assert [(g.case_id, g.names, g.problem is None) for g in groups] == [
        ("A", ["A-seg.nii.gz", "A-t1c.nii.gz", "A-t1n.nii.gz"], True),
        ("B_1", ["B_1-t1n.nii.gz"], True),
        ("T1.nii.gz", ["T1.nii.gz"], False),
    ]
    assert "put one sub-folder per case" in (groups[2].problem or "")


@pytest.mark.parametrize("naming", ["input", "brats2023"])
def test_a_flat_folder_of_cases_gives_what_sub_folders_give(tmp_path, naming):
    for case, contrasts in (
        ("BraTS-GLI-00001-000", ("t1n", "t1c", "t2w")),
        ("BraTS-GLI-00002-000", ("t1n", "t2w", "t2f")),
    ):
        for layout in ("flat", f"folders/{case}"):
            _images(tmp_path / layout, *(f"{case}-{m}.nii.gz" for m in contrasts))
    _images(
        tmp_path / "flat",
        "BraTS2021_00003_t1.nii.gz",
        "BraTS2021_00003_t2.nii.gz",
        "BraTS2021_00003_flair.nii.gz",
    )
    _images(
        tmp_path / "folders" / "BraTS2021_00003",
        "BraTS2021_00003_t1.nii.gz",
        "BraTS2021_00003_t2.nii.gz",
        "BraTS2021_00003_flair.nii.gz",
    )
    (tmp_path / "flat" / "BraTS-GLI-00001-000-seg.nii.gz").touch()  # a segmentation beside them is ignored
    for layout in ("flat", "folders"):
        args = [
            "--input",
            str(tmp_path / layout),
            "--output",
            str(tmp_path / f"out-{layout}"),
            "--naming",
            naming,
        ]
        assert main([*args, *FAST]) == 0
    flat = sorted((tmp_path / "out-flat").iterdir())
    assert [p.name for p in flat] == sorted(p.name for p in (tmp_path / "out-folders").iterdir())
    expected = {"BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00002-000-t1c.nii.gz"}
    expected.add("BraTS2021_00003_t1ce.nii.gz" if naming == "input" else "BraTS2021_00003-t1c.nii.gz")
    assert {p.name for p in flat} == expected
    for path in flat:
        assert path.read_bytes() == (tmp_path / "out-folders" / path.name).read_bytes()


def test_files_that_fit_no_case_or_two_say_one_sub_folder_per_case(tmp_path, capsys):
    flat = tmp_path / "flat"
    _images(
        flat,
        *(f"A-{m}.nii.gz" for m in ("t1n", "t1c", "t2w")),
        *(f"B-{m}.nii.gz" for m in ("t1n", "t1c", "t2w")),
    )
    _touch(flat, "T1.nii.gz")  # a bare name: no case id
    _touch(
        flat,
        "sub-01_T1w.nii.gz",
        "sub-01_ce-gadolinium_T1w.nii.gz",
        "sub-01_T2w.nii.gz",
        "sub-01_FLAIR.nii.gz",
    )
    found = {(r.case if isinstance(r, CaseError) else r.id): r for r in discover(flat)}
    assert isinstance(found["A"], Case) and isinstance(found["B"], Case)
    assert "T1.nii.gz starts with no case id" in found["T1.nii.gz"].message
    for case in ("sub-01", "sub-01_ce-gadolinium"):
        assert "could belong to case sub-01 or sub-01_ce-gadolinium" in found[case].message
    assert all("put one sub-folder per case" in r.message for r in found.values() if isinstance(r, CaseError))
    # the command writes the cases it can and fails the rest
    assert main(["--input", str(flat), "--output", str(tmp_path / "out"), *FAST]) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["A-t2f.nii.gz", "B-t2f.nii.gz"]
    assert "put one sub-folder per case" in capsys.readouterr().err


def test_a_map_resolves_what_the_names_leave_open_in_a_flat_folder(tmp_path):
    flat = _touch(tmp_path / "flat")
    for subject in ("sub-01", "sub-02"):
        _touch(flat, *(f"{subject}_{s}.nii.gz" for s in ("T1w", "ce-gadolinium_T1w", "FLAIR")))
    found = discover(flat, mapping=parse_map("t1c=*ce-gadolinium*"))
    assert [(c.id, c.target, c.files[T1C].name) for c in found if isinstance(c, Case)] == [
        ("sub-01", T2W, "sub-01_ce-gadolinium_T1w.nii.gz"),
        ("sub-02", T2W, "sub-02_ce-gadolinium_T1w.nii.gz"),
    ]


def test_one_case_in_a_flat_folder_stays_one_case_and_duplicates_say_what_to_do(tmp_path):
    _touch(tmp_path / "p7", "p7_t1.nii.gz", "p7_t2.nii.gz", "scan_flair.nii.gz")  # names that disagree
    case = _only(discover(tmp_path / "p7"))
    assert isinstance(case, Case) and case.id == "p7" and case.target is T1C
    _touch(tmp_path / "dup", "p_t1.nii.gz", "p_T1w.nii.gz", "p_t2.nii.gz", "p_flair.nii.gz")
    error = _only(discover(tmp_path / "dup"))
    assert isinstance(error, CaseError)
    assert "more than one file for the same contrast" in error.message
    assert "if the folder holds several cases, put one sub-folder per case" in error.message


def test_drop_of_a_flat_folder_copies_each_case_its_own_files(tmp_path):
    from brasyn.commands.evaluate import main as evaluate_main

    names = [f"{c}-{m}.nii.gz" for c in ("A", "B") for m in ("t1n", "t1c", "t2w", "t2f", "seg")]
    _touch(tmp_path / "truth", *names)
    args = [
        "drop",
        "--input",
        str(tmp_path / "truth"),
        "--output",
        str(tmp_path / "test"),
        "--protocol",
        "brasyn",
    ]
    assert evaluate_main(args) == 0
    for case in ("A", "B"):
        kept = sorted(p.name for p in (tmp_path / "test" / case).iterdir())
        assert len(kept) == 4 and all(name.startswith(f"{case}-") for name in kept)
        assert f"{case}-seg.nii.gz" in kept


def test_infer_single_writes_the_bytes_of_the_command_and_keeps_an_output_when_told(tmp_path):
    import brasyn

    files = _images(tmp_path / "in", "p9-t1n.nii.gz", "p9-t1c.nii.gz", "p9-t2f.nii.gz")
    t1n, t1c, t2f = (str(p) for p in files.values())
    command = tmp_path / "cmd" / "p9-t2w.nii.gz"
    assert main(["--t1n", t1n, "--t1c", t1c, "--t2f", t2f, "--out", str(command), *SAMPLED]) == 0
    out = tmp_path / "api" / "p9-t2w.nii.gz"
    written = brasyn.infer_single(t1n=t1n, t1c=t1c, t2f=t2f, output_file=out, sampler="x0", device="cpu")
    assert written == out and out.read_bytes() == command.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        brasyn.infer_single(t1n=t1n, t1c=t1c, t2f=t2f, output_file=out, overwrite=False, device="cpu")


# --- nnU-Net folders: channel files named by --map ----------------------------------------------------

NNUNET = ["t1n=*_0000.nii.gz", "t1c=*_0001.nii.gz", "t2w=*_0002.nii.gz"]


def test_one_nnunet_case_is_named_after_its_case_id_not_the_folder(tmp_path):
    _touch(tmp_path / "imagesTs", *(f"BraTS_001_{c:04d}.nii.gz" for c in range(3)))
    case = _only(discover(tmp_path / "imagesTs", mapping=parse_map(NNUNET)))
    assert isinstance(case, Case)
    assert (case.id, case.target, case.output_name) == ("BraTS_001", T2F, "BraTS_001-t2f.nii.gz")


def test_two_nnunet_cases_in_one_folder_are_split_by_the_case_id_the_patterns_read(tmp_path):
    names = [f"BraTS_{i:03d}_{c:04d}.nii.gz" for i in (1, 2) for c in range(3)]
    _touch(tmp_path / "imagesTs", *names, "dataset.json")
    found = discover(tmp_path / "imagesTs", mapping=parse_map(NNUNET))
    assert [(c.id, c.output_name, c.files[T1C].name) for c in found] == [
        ("BraTS_001", "BraTS_001-t2f.nii.gz", "BraTS_001_0001.nii.gz"),
        ("BraTS_002", "BraTS_002-t2f.nii.gz", "BraTS_002_0001.nii.gz"),
    ]


def test_nnunet_channel_files_without_a_map_suggest_the_map_lines(tmp_path, capsys):
    folder = tmp_path / "imagesTs"
    for c in range(3):
        save_nifti(folder / f"BraTS_001_{c:04d}.nii.gz", phantom((40, 48, 32), seed=c))
    assert main(["--input", str(folder), "--output", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert (
        f"the input folder {folder} holds BraTS_001_0000.nii.gz, BraTS_001_0001.nii.gz, BraTS_001_0002.nii.gz: "
        "nnU-Net channel files (case_0000.nii.gz ...) name no contrast; name each channel's contrast with --map "
        "as your dataset.json maps the channel numbers, e.g. --map t1n='*_0000.nii.gz' --map t1c='*_0001.nii.gz' "
        "--map t2w='*_0002.nii.gz' --map t2f='*_0003.nii.gz' (cases side by side are told apart by the id "
        "before _0000)"
    ) in err
    assert "rename" not in err and "Traceback" not in err
    # the suggested lines run it, and the output is named after the case
    maps = [a for rule in NNUNET for a in ("--map", rule)]
    assert main(["--input", str(folder), "--output", str(tmp_path / "out"), *FAST, *maps]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["BraTS_001-t2f.nii.gz"]
