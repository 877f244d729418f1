import pytest

from brasyn.data.modalities import (
    NAMING_FAMILIES,
    AmbiguousNameError,
    ContrastName,
    Modality,
    conditions_for,
    modality_from_alias,
    naming_family,
    output_file_name,
    parse_contrast_name,
)

T1N, T1C, T2W, T2F = Modality.T1N, Modality.T1C, Modality.T2W, Modality.T2F


def _names(*file_names: str) -> list[ContrastName]:
    parsed = [parse_contrast_name(n) for n in file_names]
    assert all(p is not None for p in parsed)
    return parsed


def test_conditions_are_the_other_three_in_canonical_order():
    assert conditions_for("t1c") == (T1N, T2W, T2F)
    assert conditions_for(T1N) == (T1C, T2W, T2F)


@pytest.mark.parametrize(
    ("name", "modality", "prefix", "separator", "token", "suffix", "extension"),
    [
        ("BraTS-GLI-01667-000-t1c.nii.gz", T1C, "BraTS-GLI-01667-000", "-", "t1c", "", ".nii.gz"),
        ("BraTS-GLI-01667-000-t1n.nii.gz", T1N, "BraTS-GLI-01667-000", "-", "t1n", "", ".nii.gz"),
        ("BraTS-GLI-01667-000-t2w.nii.gz", T2W, "BraTS-GLI-01667-000", "-", "t2w", "", ".nii.gz"),
        ("BraTS-GLI-01667-000-t2f.nii.gz", T2F, "BraTS-GLI-01667-000", "-", "t2f", "", ".nii.gz"),
        ("BraTS2021_00000_flair.nii.gz", T2F, "BraTS2021_00000", "_", "flair", "", ".nii.gz"),
        ("BraTS2021_00000_t1.nii.gz", T1N, "BraTS2021_00000", "_", "t1", "", ".nii.gz"),
        ("BraTS2021_00000_t2.nii.gz", T2W, "BraTS2021_00000", "_", "t2", "", ".nii.gz"),
        ("Brats17_TCIA_105_1_t1ce.nii.gz", T1C, "Brats17_TCIA_105_1", "_", "t1ce", "", ".nii.gz"),
        ("BraTS20_Training_001_t1Gd.nii", T1C, "BraTS20_Training_001", "_", "t1Gd", "", ".nii"),
        ("TCGA-DU-7294_fla_bet.nii.gz", T2F, "TCGA-DU-7294", "_", "fla", "_bet", ".nii.gz"),
        ("TCGA-DU-7294_t1c_bet.nii.gz", T1C, "TCGA-DU-7294", "_", "t1c", "_bet", ".nii.gz"),
        ("TCGA-DU-7294_t1_bet.nii.gz", T1N, "TCGA-DU-7294", "_", "t1", "_bet", ".nii.gz"),
        ("T1.nii.gz", T1N, "", "", "T1", "", ".nii.gz"),
        ("T1c.nii.gz", T1C, "", "", "T1c", "", ".nii.gz"),
        ("T2.nii.gz", T2W, "", "", "T2", "", ".nii.gz"),
        ("Flair.nii.gz", T2F, "", "", "Flair", "", ".nii.gz"),
        ("t1n.nii.gz", T1N, "", "", "t1n", "", ".nii.gz"),
        ("case.t2w.nii.gz", T2W, "case", ".", "t2w", "", ".nii.gz"),
        ("sub-01_T1w.nii.gz", T1N, "sub-01", "_", "T1w", "", ".nii.gz"),
        ("x_t1post.nii", T1C, "x", "_", "t1post", "", ".nii"),
        ("x_t1contrast.nii", T1C, "x", "_", "t1contrast", "", ".nii"),
        ("x_t1native.nii", T1N, "x", "_", "t1native", "", ".nii"),
        ("x_t2flair.nii", T2F, "x", "_", "t2flair", "", ".nii"),
        ("SCAN.FLAIR.NII.GZ", T2F, "SCAN", ".", "FLAIR", "", ".NII.GZ"),
    ],
)
def test_file_name_is_cut_into_prefix_token_suffix(
    name, modality, prefix, separator, token, suffix, extension
):
    parsed = parse_contrast_name(name)
    assert parsed == ContrastName(modality, prefix, separator, token, suffix, extension)
    assert parsed.name == name


@pytest.mark.parametrize(
    ("name", "modality", "token"),
    [
        ("case_T1_Gd.nii.gz", T1C, "T1_Gd"),
        ("case-t1-ce.nii.gz", T1C, "t1-ce"),
        ("case_t2_flair.nii.gz", T2F, "t2_flair"),
        ("case_T2-FLAIR_bet.nii.gz", T2F, "T2-FLAIR"),
    ],
)
def test_two_token_contrast_names_are_one_contrast_not_ambiguous(name, modality, token):
    parsed = parse_contrast_name(name)
    assert parsed.modality is modality
    assert parsed.token == token
    assert parsed.prefix == "case"


@pytest.mark.parametrize(
    "name",
    [
        "BraTS-GLI-00001-000-seg.nii.gz",
        "x_t1_mask.nii.gz",
        "x_t1_brainmask.nii.gz",
        "BraTS2021_00000_t1_labels.nii.gz",
        "tumor_t2.nii.gz",
        "x_flair_prediction.nii.gz",
        "t1_t2_seg.nii.gz",
    ],
)
def test_segmentations_and_masks_are_not_contrasts(name):
    assert parse_contrast_name(name) is None


@pytest.mark.parametrize(
    "name",
    ["x_t1.raw", "x_t1.zraw", "x_t1.nii.gz.bak", "README.md", "t1.json", ".nii.gz", ".mha", "x_t1niigz"],
)
def test_files_that_are_not_images_are_not_contrasts(name):
    assert parse_contrast_name(name) is None


@pytest.mark.parametrize("extension", [".mha", ".MHA", ".mhd", ".nrrd", ".nii", ".nii.gz"])
def test_metaimage_and_nrrd_names_are_contrasts_and_name_their_output_in_their_format(extension):
    names = [parse_contrast_name(f"P7_{m}{extension}") for m in ("t1", "t1ce", "t2")]
    assert [n.modality.value for n in names] == ["t1n", "t1c", "t2w"]
    assert names[0].extension == extension
    expected = ".nii.gz" if extension.startswith(".nii") else extension.lower()
    assert output_file_name("P7", "t2f", names) == f"P7_flair{expected}"
    assert output_file_name("P7", "t2f", names, naming="brats2023") == f"P7-t2f{expected}"


@pytest.mark.parametrize(
    "name", ["anatomy.nii.gz", "x_t3.nii.gz", "x_t1gdx.nii.gz", "BraTS-GLI-00001-000.nii"]
)
def test_names_without_a_contrast_token_are_not_contrasts(name):
    assert parse_contrast_name(name) is None


@pytest.mark.parametrize(
    ("name", "tokens"),
    [("t1_t2_fusion.nii.gz", ("t1", "t2")), ("x-flair-t1ce.nii", ("flair", "t1ce"))],
)
def test_name_with_two_different_contrasts_is_ambiguous(name, tokens):
    with pytest.raises(AmbiguousNameError) as caught:
        parse_contrast_name(name)
    assert caught.value.tokens == tokens
    assert name in str(caught.value)


def test_same_contrast_named_twice_takes_the_last_token():
    parsed = parse_contrast_name("T1_scan_t1.nii.gz")
    assert parsed.modality is T1N
    assert (parsed.prefix, parsed.token) == ("T1_scan", "t1")


@pytest.mark.parametrize(
    ("text", "modality"),
    [("t1n", T1N), ("T1", T1N), ("t1ce", T1C), ("t1-Gd", T1C), ("FLAIR", T2F), ("t2", T2W), (T2F, T2F)],
)
def test_alias_names_a_contrast(text, modality):
    assert modality_from_alias(text) is modality


def test_unknown_alias_lists_the_canonical_names():
    with pytest.raises(ValueError, match="t1n, t1c, t2w, t2f"):
        modality_from_alias("pd")


@pytest.mark.parametrize(
    ("tokens", "family"),
    [
        ({T1N: "t1n", T1C: "t1c", T2W: "t2w"}, "brats2023"),
        ({T1N: "t1", T2W: "t2", T2F: "flair"}, "brats2021"),
        ({T1N: "t1", T1C: "t1ce", T2W: "t2"}, "brats2021"),
        ({T1N: "t1", T1C: "t1c", T2W: "t2"}, "toolkit"),
        ({T1N: "t1", T2W: "t2", T2F: "fla"}, "toolkit"),
        ({T1N: "t1", T1C: "t1Gd", T2W: "t2"}, "gd"),
        ({T1N: "T1", T2W: "T2", T2F: "FLAIR"}, "brats2021"),
        ({T1N: "t1n", T2W: "t2", T2F: "fla"}, "toolkit"),
        ({T1N: "t1w", T2W: "t2w", T2F: "t2flair"}, "brats2023"),
    ],
)
def test_naming_family_fits_the_present_tokens(tokens, family):
    assert naming_family(tokens) == family


def test_every_family_spells_all_four_contrasts():
    for spellings in NAMING_FAMILIES.values():
        assert set(spellings) == set(Modality)
        assert all(modality_from_alias(token) is m for m, token in spellings.items())


@pytest.mark.parametrize(
    ("inputs", "target", "expected"),
    [
        (
            [
                "BraTS-GLI-01667-000-t1n.nii.gz",
                "BraTS-GLI-01667-000-t1c.nii.gz",
                "BraTS-GLI-01667-000-t2w.nii.gz",
            ],
            T2F,
            "BraTS-GLI-01667-000-t2f.nii.gz",
        ),
        (
            ["BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t2.nii.gz", "BraTS2021_00000_flair.nii.gz"],
            T1C,
            "BraTS2021_00000_t1ce.nii.gz",
        ),
        (
            ["BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t1ce.nii.gz", "BraTS2021_00000_t2.nii.gz"],
            T2F,
            "BraTS2021_00000_flair.nii.gz",
        ),
        (
            ["TCGA-DU-7294_t1_bet.nii.gz", "TCGA-DU-7294_t1c_bet.nii.gz", "TCGA-DU-7294_t2_bet.nii.gz"],
            T2F,
            "TCGA-DU-7294_fla_bet.nii.gz",
        ),
        (
            ["BraTS20_Training_001_t1.nii", "BraTS20_Training_001_t1Gd.nii", "BraTS20_Training_001_t2.nii"],
            T2F,
            "BraTS20_Training_001_flair.nii.gz",
        ),
        (["P7_T1.nii.gz", "P7_T2.nii.gz", "P7_Flair.nii.gz"], T1C, "P7_T1ce.nii.gz"),
        (["P7_T1.nii.gz", "P7_T2.nii.gz", "P7_FLAIR.nii.gz"], T1C, "P7_T1CE.nii.gz"),
        (["P7_T1.nii.gz", "P7_T1c.nii.gz", "P7_T2.nii.gz"], T2F, "P7_Fla.nii.gz"),
        (["case.t1n.nii", "case.t1c.nii", "case.t2f.nii"], T2W, "case.t2w.nii.gz"),
    ],
)
def test_output_is_named_like_the_inputs(inputs, target, expected):
    assert output_file_name("folder", target, _names(*inputs)) == expected


def test_output_of_present_contrast_reuses_its_own_token():
    names = _names("B_001_t1.nii", "B_001_t1Gd.nii", "B_001_t2.nii", "B_001_flair.nii")
    assert output_file_name("folder", T1C, names) == "B_001_t1Gd.nii.gz"


def test_bare_input_names_give_case_id_and_canonical_name():
    names = _names("T1.nii.gz", "T2.nii.gz", "Flair.nii.gz")
    assert output_file_name("patient7", T1C, names) == "patient7-t1c.nii.gz"


def test_inputs_with_different_prefixes_give_case_id_and_canonical_name():
    names = _names("A_t1.nii.gz", "B_t2.nii.gz", "A_flair.nii.gz")
    assert output_file_name("patient7", T1C, names) == "patient7-t1c.nii.gz"


def test_inputs_with_different_suffixes_give_case_id_and_canonical_name():
    names = _names("A_t1_bet.nii.gz", "A_t2.nii.gz", "A_flair_bet.nii.gz")
    assert output_file_name("patient7", T1C, names) == "patient7-t1c.nii.gz"


def test_brats2023_naming_ignores_the_input_names():
    names = _names("BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t2.nii.gz", "BraTS2021_00000_flair.nii.gz")
    assert output_file_name("BraTS-GLI-00000-000", "t1ce", names, naming="brats2023") == (
        "BraTS-GLI-00000-000-t1c.nii.gz"
    )


def test_unknown_naming_scheme_is_refused():
    with pytest.raises(ValueError, match="naming"):
        output_file_name("c", T1C, _names("c_t1.nii", "c_t2.nii", "c_flair.nii"), naming="bids")


def test_output_name_must_be_flat():
    with pytest.raises(ValueError, match="flat"):
        output_file_name("a/b", T1C, [], naming="brats2023")


def test_a_case_id_holding_contrast_or_mask_words_does_not_confuse_the_reading():
    from brasyn.data.modalities import parse_contrast_name

    parsed = parse_contrast_name("needs-t2f-t1c.nii.gz", case_id="needs-t2f")
    assert parsed is not None and parsed.modality is Modality.T1C
    assert (parsed.prefix, parsed.separator, parsed.token) == ("needs-t2f", "-", "t1c")
    assert parsed.name == "needs-t2f-t1c.nii.gz"
    tumor = parse_contrast_name("tumor-study_7_flair.nii.gz", case_id="tumor-study")
    assert tumor is not None and tumor.modality is Modality.T2F and tumor.prefix == "tumor-study_7"
    assert parse_contrast_name("needs-t2f-t1c_seg.nii.gz", case_id="needs-t2f") is None
    with pytest.raises(AmbiguousNameError):
        parse_contrast_name("needs-t2f-t1c.nii.gz")
