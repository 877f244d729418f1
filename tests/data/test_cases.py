import logging
from pathlib import Path

import pytest

from brasyn.common.errors import BrasynError, CaseError
from brasyn.data.cases import Case, discover
from brasyn.data.modalities import Modality

T1N, T1C, T2W, T2F = Modality.T1N, Modality.T1C, Modality.T2W, Modality.T2F
REAL = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "real"


def _case(root: Path, case_id: str, *names: str) -> Path:
    """A case folder with empty placeholder files: discovery reads names only."""
    folder = root / case_id
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).touch()
    return folder


def _only(results: list) -> Case | CaseError:
    assert len(results) == 1
    return results[0]


@pytest.mark.parametrize(
    ("case_id", "names", "target", "output"),
    [
        (
            "BraTS-GLI-01667-000",
            [
                "BraTS-GLI-01667-000-t1n.nii.gz",
                "BraTS-GLI-01667-000-t2w.nii.gz",
                "BraTS-GLI-01667-000-t2f.nii.gz",
            ],
            T1C,
            "BraTS-GLI-01667-000-t1c.nii.gz",
        ),
        (
            "BraTS2021_00000",
            ["BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t1ce.nii.gz", "BraTS2021_00000_t2.nii.gz"],
            T2F,
            "BraTS2021_00000_flair.nii.gz",
        ),
        (
            "Brats17_TCIA_105_1",
            [
                "Brats17_TCIA_105_1_t1.nii.gz",
                "Brats17_TCIA_105_1_t2.nii.gz",
                "Brats17_TCIA_105_1_flair.nii.gz",
            ],
            T1C,
            "Brats17_TCIA_105_1_t1ce.nii.gz",
        ),
        (
            "BraTS20_Training_001",
            [
                "BraTS20_Training_001_t1Gd.nii",
                "BraTS20_Training_001_t2.nii",
                "BraTS20_Training_001_flair.nii",
            ],
            T1N,
            "BraTS20_Training_001_t1.nii.gz",
        ),
        (
            "TCGA-DU-7294",
            ["TCGA-DU-7294_t1_bet.nii.gz", "TCGA-DU-7294_t1c_bet.nii.gz", "TCGA-DU-7294_t2_bet.nii.gz"],
            T2F,
            "TCGA-DU-7294_fla_bet.nii.gz",
        ),
        ("patient7", ["T1.nii.gz", "T1c.nii.gz", "Flair.nii.gz"], T2W, "patient7-t2w.nii.gz"),
        ("patient8", ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz"], T2F, "patient8-t2f.nii.gz"),
        ("c", ["case.t1n.nii.gz", "case.t1c.nii.gz", "case.t2f.nii.gz"], T2W, "case.t2w.nii.gz"),
    ],
)
def test_three_contrasts_make_the_fourth_the_target(tmp_path, case_id, names, target, output):
    folder = _case(tmp_path, case_id, *names)
    case = _only(discover(tmp_path))
    assert isinstance(case, Case)
    assert (case.id, case.folder, case.target, case.output_name) == (case_id, folder, target, output)
    assert set(case.files) == set(Modality) - {target}
    assert sorted(p.name for p in case.files.values()) == sorted(names)
    assert case.skip_reason is None


def test_names_too_long_for_the_files_made_from_them_fail_their_case_alone(tmp_path):
    _case(tmp_path, "L" * 236, "t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz")
    _case(tmp_path, "M" * 235, "t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz")
    prefix = "P" * 243  # its inputs fit (..._t1ce.nii.gz: 255 bytes), its output ..._flair.nii.gz does not
    _case(tmp_path, "p", *(f"{prefix}_{m}.nii.gz" for m in ("t1", "t1ce", "t2")))
    found = {item.id if isinstance(item, Case) else item.case: item for item in discover(tmp_path)}
    assert isinstance(found["M" * 235], Case) and found["M" * 235].output_name == "M" * 235 + "-t2f.nii.gz"
    assert isinstance(found["L" * 236], CaseError)
    assert "the case name is 236 bytes long" in found["L" * 236].message
    assert isinstance(found["p"], CaseError)
    assert f"its output name {prefix}_flair.nii.gz would be 256 bytes long" in found["p"].message


def test_conditions_follow_model_order(tmp_path):
    _case(tmp_path, "c", "c_flair.nii.gz", "c_t2.nii.gz", "c_t1ce.nii.gz")
    case = _only(discover(tmp_path))
    assert list(case.conditions) == [T1C, T2W, T2F]
    assert case.conditions[T2F].name == "c_flair.nii.gz"


def test_four_contrasts_are_skipped_with_a_reason(tmp_path):
    _case(tmp_path, "c", "c-t1n.nii.gz", "c-t1c.nii.gz", "c-t2w.nii.gz", "c-t2f.nii.gz")
    case = _only(discover(tmp_path))
    assert isinstance(case, Case)
    assert (case.target, case.output_name, case.conditions) == (None, None, {})
    assert "all four contrasts present" in case.skip_reason
    assert len(case.files) == 4


def test_forced_target_on_four_contrasts_leaves_its_file_out_of_the_conditions(tmp_path):
    _case(tmp_path, "c", "c-t1n.nii.gz", "c-t1c.nii.gz", "c-t2w.nii.gz", "c-t2f.nii.gz")
    case = _only(discover(tmp_path, target="flair"))
    assert case.target is T2F
    assert case.output_name == "c-t2f.nii.gz"
    assert list(case.conditions) == [T1N, T1C, T2W]
    assert all(p.name != "c-t2f.nii.gz" for p in case.conditions.values())


def test_forced_target_that_is_not_the_missing_one_fails_the_case(tmp_path):
    _case(tmp_path, "c", "c-t1n.nii.gz", "c-t2w.nii.gz", "c-t2f.nii.gz")
    error = _only(discover(tmp_path, target=T2F))
    assert isinstance(error, CaseError)  # nothing it can write: a failure, not a silent skip
    assert "lacks t1c" in error.message and "holds t2f" in error.message


def test_forced_target_equal_to_the_missing_one_is_synthesised(tmp_path):
    _case(tmp_path, "c", "c-t1n.nii.gz", "c-t2w.nii.gz", "c-t2f.nii.gz")
    assert _only(discover(tmp_path, target="t1c")).target is T1C


def test_segmentations_masks_and_other_files_are_ignored_and_logged(tmp_path, caplog):
    _case(
        tmp_path,
        "BraTS-GLI-00001-000",
        "BraTS-GLI-00001-000-t1n.nii.gz",
        "BraTS-GLI-00001-000-t1c.nii.gz",
        "BraTS-GLI-00001-000-t2w.nii.gz",
        "BraTS-GLI-00001-000-seg.nii.gz",
        "BraTS-GLI-00001-000-t1n_brainmask.nii.gz",
        "BraTS-GLI-00001-000-t2f.json",
        "notes.txt",
        "._BraTS-GLI-00001-000-t2f.nii.gz",
    )
    with caplog.at_level(logging.DEBUG, logger="brasyn.cases"):
        case = _only(discover(tmp_path))
    assert case.target is T2F
    logged = caplog.text
    for name in ["-seg.nii.gz", "t1n_brainmask.nii.gz", "t2f.json", "notes.txt"]:
        assert name in logged
    assert any(r.name == "brasyn.cases" and r.levelno == logging.DEBUG for r in caplog.records)


def test_hidden_folders_and_stray_root_files_are_not_cases(tmp_path):
    _case(tmp_path, ".cache", "x_t1.nii.gz", "x_t2.nii.gz", "x_flair.nii.gz")
    _case(tmp_path, "a", "a_t1.nii.gz", "a_t2.nii.gz", "a_flair.nii.gz")
    (tmp_path / "README.txt").touch()
    (tmp_path / "all_seg.nii.gz").touch()
    assert [r.id for r in discover(tmp_path)] == ["a"]


def test_results_are_sorted_by_case_id(tmp_path):
    for case_id in ["c3", "a1", "b2"]:
        _case(tmp_path, case_id, "t1.nii", "t2.nii", "flair.nii")
    assert [r.id for r in discover(tmp_path)] == ["a1", "b2", "c3"]


def test_root_holding_images_is_one_case_named_after_the_root(tmp_path):
    root = _case(
        tmp_path, "BraTS-GLI-00002-000", "BraTS-GLI-00002-000-t1n.nii.gz", "BraTS-GLI-00002-000-t1c.nii.gz"
    )
    (root / "BraTS-GLI-00002-000-t2f.nii.gz").touch()
    case = _only(discover(root))
    assert (case.id, case.folder, case.target) == ("BraTS-GLI-00002-000", root, T2W)
    assert case.output_name == "BraTS-GLI-00002-000-t2w.nii.gz"


def test_root_holding_images_and_folders_is_refused(tmp_path):
    root = _case(tmp_path, "in", "x_t1.nii.gz", "x_t2.nii.gz", "x_flair.nii.gz")
    _case(root, "sub")
    with pytest.raises(BrasynError, match=r"x_flair\.nii\.gz.*sub"):
        discover(root)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(BrasynError, match="does not exist"):
        discover(tmp_path / "nowhere")


def test_root_that_is_a_file_is_a_clear_error(tmp_path):
    file = tmp_path / "x_t1.nii.gz"
    file.touch()
    with pytest.raises(BrasynError, match="not a folder"):
        discover(file)


def test_empty_root_has_no_cases(tmp_path):
    assert discover(tmp_path) == []


def test_fewer_than_three_contrasts_is_a_case_error_naming_the_files(tmp_path):
    _case(tmp_path, "c", "c_t1.nii.gz", "c_t2.nii.gz", "c_extra.nii.gz")
    error = _only(discover(tmp_path))
    assert isinstance(error, CaseError)
    assert error.case == "c"
    assert "c_t1.nii.gz" in error.message and "c_t2.nii.gz" in error.message
    assert "c_extra.nii.gz" in error.message
    assert "three of t1n, t1c, t2w, t2f" in error.message
    assert {p.name for p in error.files} == {"c_t1.nii.gz", "c_t2.nii.gz", "c_extra.nii.gz"}


def test_a_folder_without_images_is_not_a_case(tmp_path, caplog):
    _case(tmp_path, "empty")
    _case(tmp_path, "notes", "readme.txt")
    with caplog.at_level("WARNING", logger="brasyn.cases"):
        assert discover(tmp_path) == []
    assert "ignored the folder empty: it holds no image" in caplog.text


@pytest.mark.parametrize(
    ("names", "duplicates"),
    [
        (("x_t1.nii", "x_t1.nii.gz", "x_t2.nii.gz", "x_flair.nii.gz"), {"x_t1.nii", "x_t1.nii.gz"}),
        (
            ("x_t1.nii.gz", "x_t1ce.nii.gz", "x_t1gd.nii.gz", "x_t2.nii.gz"),
            {"x_t1ce.nii.gz", "x_t1gd.nii.gz"},
        ),
    ],
)
def test_two_files_for_one_contrast_is_a_case_error(tmp_path, names, duplicates):
    _case(tmp_path, "x", *names)
    error = _only(discover(tmp_path))
    assert isinstance(error, CaseError)
    for name in duplicates:
        assert name in error.message
    assert {p.name for p in error.files} == duplicates
    assert "rename or remove one of them" in error.message


def test_ambiguous_name_is_a_case_error_naming_the_file(tmp_path):
    _case(tmp_path, "x", "x_t1.nii.gz", "x_t2.nii.gz", "x_flair.nii.gz", "t1_t2_fusion.nii.gz")
    error = _only(discover(tmp_path))
    assert isinstance(error, CaseError)
    assert "t1_t2_fusion.nii.gz" in error.message
    assert "rename" in error.message
    assert [p.name for p in error.files] == ["t1_t2_fusion.nii.gz"]


def test_one_bad_case_does_not_stop_the_others(tmp_path):
    _case(tmp_path, "a", "a_t1.nii.gz")
    _case(tmp_path, "b", "b_t1.nii.gz", "b_t2.nii.gz", "b_flair.nii.gz")
    first, second = discover(tmp_path)
    assert isinstance(first, CaseError)
    assert isinstance(second, Case) and second.target is T1C


def test_files_with_different_prefixes_are_accepted_and_named_after_the_folder(tmp_path):
    _case(tmp_path, "patient9", "scanA_t1.nii.gz", "scanB_t2.nii.gz", "scanA_flair.nii.gz")
    case = _only(discover(tmp_path))
    assert case.target is T1C
    assert case.output_name == "patient9-t1c.nii.gz"


def test_brats2023_naming_uses_the_folder_name(tmp_path):
    _case(
        tmp_path,
        "BraTS-GLI-00000-000",
        "BraTS2021_00000_t1.nii.gz",
        "BraTS2021_00000_t2.nii.gz",
        "BraTS2021_00000_flair.nii.gz",
    )
    assert _only(discover(tmp_path, naming="brats2023")).output_name == "BraTS-GLI-00000-000-t1c.nii.gz"
    assert _only(discover(tmp_path, naming="input")).output_name == "BraTS2021_00000_t1ce.nii.gz"


def test_colliding_output_names_give_the_later_case_an_error(tmp_path):
    names = ("BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t2.nii.gz", "BraTS2021_00000_flair.nii.gz")
    _case(tmp_path, "copy-b", *names)
    _case(tmp_path, "copy-a", *names)
    first, second = discover(tmp_path)
    assert isinstance(first, Case) and first.id == "copy-a"
    assert isinstance(second, CaseError) and second.case == "copy-b"
    assert "BraTS2021_00000_t1ce.nii.gz" in second.message
    assert "copy-a" in second.message
    assert all(isinstance(r, Case) for r in discover(tmp_path, naming="brats2023"))


def test_output_names_differing_only_in_letter_case_collide(tmp_path):
    _case(tmp_path, "a", "P1_T1.nii.gz", "P1_T2.nii.gz", "P1_FLAIR.nii.gz")
    _case(tmp_path, "b", "p1_t1.nii.gz", "p1_t2.nii.gz", "p1_flair.nii.gz")
    first, second = discover(tmp_path)
    assert first.output_name == "P1_T1CE.nii.gz"
    assert isinstance(second, CaseError)


def test_skipped_cases_do_not_claim_an_output_name(tmp_path):
    names = ("c-t1n.nii.gz", "c-t1c.nii.gz", "c-t2w.nii.gz")
    _case(tmp_path, "a", *names, "c-t2f.nii.gz")
    _case(tmp_path, "b", *names)
    first, second = discover(tmp_path)
    assert first.target is None
    assert isinstance(second, Case) and second.output_name == "c-t2f.nii.gz"


def test_unknown_naming_scheme_is_refused(tmp_path):
    with pytest.raises(ValueError, match="naming"):
        discover(tmp_path, naming="bids")


def test_unknown_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown contrast"):
        discover(tmp_path, target="pd")


REAL_OUTPUTS = {
    "BraTS-GLI-00001-000": {m: f"BraTS-GLI-00001-000-{m.value}.nii.gz" for m in Modality},
    "BraTS-MET-00110-000": {m: f"BraTS-MET-00110-000-{m.value}.nii.gz" for m in Modality},
    "TCGA-DU-7294": {
        T1N: "TCGA-DU-7294_t1_bet.nii.gz",
        T1C: "TCGA-DU-7294_t1c_bet.nii.gz",
        T2W: "TCGA-DU-7294_t2_bet.nii.gz",
        T2F: "TCGA-DU-7294_fla_bet.nii.gz",
    },
    "preprocessed_case": {m: f"preprocessed_case-{m.value}.nii.gz" for m in Modality},
}


@pytest.fixture
def real_root() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"the real example cases {REAL} are absent (they live beside the project, not in it)")
    return REAL


def test_real_cases_are_found_with_all_four_contrasts(real_root):
    results = discover(real_root)
    assert [r.id for r in results] == sorted(REAL_OUTPUTS)
    for case in results:
        assert isinstance(case, Case)
        assert set(case.files) == set(Modality)
        assert all(p.parent == real_root / case.id for p in case.files.values())
        assert case.target is None


@pytest.mark.parametrize("target", list(Modality))
def test_real_cases_with_forced_target_are_named_like_their_inputs(real_root, target):
    results = discover(real_root, target=target)
    assert {r.id: r.output_name for r in results} == {
        c: outputs[target] for c, outputs in REAL_OUTPUTS.items()
    }
    for case in results:
        assert case.files[target] not in case.conditions.values()
        assert len(case.conditions) == 3


def test_complete_cases_keeps_four_contrast_cases_and_says_what_the_others_lack(tmp_path):
    from brasyn.data.cases import complete_cases
    from tests.helpers import make_case

    make_case(tmp_path, "full", ("t1n", "t1c", "t2w", "t2f"))
    make_case(tmp_path, "three", ("t1n", "t2w", "t2f"))
    make_case(tmp_path, "two", ("t1n", "t2w"))
    complete, rest = complete_cases(discover(tmp_path), "training")
    assert [c.id for c in complete] == ["full"]
    assert {e.case: e.message for e in rest} == {
        "three": "no t1c; training needs all four contrasts (t1n, t1c, t2w, t2f)",
        "two": rest[1].message,
    }
    assert "needs three of" in rest[1].message  # discovery's own error passes through unchanged


# --- output names that may surprise: the log says the rule and the plain alternative --------------------


def test_an_abbreviated_output_name_is_explained_with_the_plain_alternative(tmp_path, caplog):
    _case(tmp_path, "P003", "P003_T1.mha", "P003_T1c.mha", "P003_T2.mha")
    with caplog.at_level(logging.INFO, logger="brasyn.cases"):
        (case,) = discover(tmp_path)
    assert case.output_name == "P003_Fla.mha"  # named as the inputs are, as before
    assert (
        "P003: the output is named P003_Fla.mha after its inputs (P003_T1.mha, P003_T1c.mha, P003_T2.mha): "
        "the BraTS-Toolkit's names (t1, t1c, t2, fla) in their letter case; --naming brats2023 names it "
        "P003-t2f.mha"
    ) in caplog.messages
    (plain,) = discover(tmp_path, naming="brats2023")
    assert plain.output_name == "P003-t2f.mha"


def test_an_output_named_after_an_awkward_folder_name_suggests_a_plain_one(tmp_path, caplog):
    _case(tmp_path, "Patient 002 (Müller)", "T1.nii.gz", "T1c.nii.gz", "Flair.nii.gz")
    _case(tmp_path, "P004", "T1.nii.gz", "T1c.nii.gz", "Flair.nii.gz")
    with caplog.at_level(logging.INFO, logger="brasyn.cases"):
        found = discover(tmp_path)
    assert [c.output_name for c in found] == ["P004-t2w.nii.gz", "Patient 002 (Müller)-t2w.nii.gz"]
    notes = [m for m in caplog.messages if "the output is named" in m]
    assert notes == [
        "Patient 002 (Müller): the output is named Patient 002 (Müller)-t2w.nii.gz after the case folder, as "
        "its input names hold no case id (T1.nii.gz, T1c.nii.gz, Flair.nii.gz); for a plain file name rename "
        "the folder, e.g. to Patient_002_Muller"
    ]


def test_usual_output_names_get_no_note(tmp_path, caplog):
    _case(tmp_path, "BraTS2021_00000", *(f"BraTS2021_00000_{m}.nii.gz" for m in ("t1", "t1ce", "t2")))
    _case(
        tmp_path, "BraTS-GLI-00001-000", *(f"BraTS-GLI-00001-000-{m}.nii.gz" for m in ("t1n", "t2w", "t2f"))
    )
    with caplog.at_level(logging.INFO, logger="brasyn.cases"):
        found = discover(tmp_path)
    assert [c.output_name for c in found] == [
        "BraTS-GLI-00001-000-t1c.nii.gz",
        "BraTS2021_00000_flair.nii.gz",
    ]
    assert not [m for m in caplog.messages if "the output is named" in m]
