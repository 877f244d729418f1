"""The released cWDM checkpoints as downloaded: a folder of them works without a manifest, and
``import-official`` takes a folder of them or one file, mapping t1->t1n, t1ce->t1c, t2->t2w, flair->t2f."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch

import brasyn.weights.manifest as manifest
import brasyn.weights.official as official
from brasyn.commands.cli import main as brasyn_main
from brasyn.commands.weights import main as weights_main
from brasyn.common.errors import WeightsError
from brasyn.data.modalities import Modality
from brasyn.model.unet import PRESETS, Denoiser, DenoiserConfig
from brasyn.weights.official import OFFICIAL_NAMES, infer_config, official_target
from brasyn.weights.store import WeightStore, _randomise, init_random
from tests.helpers import make_case

TINY = PRESETS["tiny"]
MAPPING = {"t1_gen.pt": "t1n", "t1ce_gen.pt": "t1c", "t2_gen.pt": "t2w", "flair_gen.pt": "t2f"}


def _model(seed: int) -> Denoiser:
    model = Denoiser.from_config(TINY)
    _randomise(model, torch.Generator().manual_seed(seed))
    return model.eval()


def _save_official(folder: Path, names=tuple(MAPPING)) -> dict[str, Denoiser]:
    """Tiny models saved as the official code saves them (a plain state_dict) under the given names."""
    folder.mkdir(parents=True, exist_ok=True)
    models = {}
    for seed, name in enumerate(names):
        models[name] = _model(seed)
        torch.save(models[name].state_dict(), folder / name)
    return models


def _output(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(torch.randn(1, 32, 16, 16, 16, generator=g), torch.tensor([300]))


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    _save_official(folder)
    return folder


def test_official_names_map_to_contrasts_case_insensitively():
    assert {name: m.value for name, m in OFFICIAL_NAMES.items()} == MAPPING
    assert official_target("FLAIR_gen.pt") is Modality.T2F
    assert official_target("/some/where/T1ce_Gen.PT") is Modality.T1C
    assert official_target("t1_gen.pth") is None and official_target("brats_1200000.pt") is None


@pytest.mark.parametrize(
    "config",
    [
        *PRESETS.values(),
        DenoiserConfig(model_channels=16, channel_mult=(1, 3), num_res_blocks=3, num_groups=8),
    ],
    ids=[*PRESETS, "custom"],
)
def test_the_config_is_read_from_the_shapes_of_a_state_dict(config):
    with torch.device("meta"):
        state = Denoiser.from_config(config).state_dict()
    inferred = infer_config(state)
    assert inferred is not None
    assert {k: v for k, v in inferred.to_dict().items() if k != "num_groups"} == {
        k: v for k, v in config.to_dict().items() if k != "num_groups"
    }
    assert manifest._state_dict_problems(state, inferred) is None


def test_the_released_keys_and_shapes_are_read_as_the_official_size(shared_dir):
    state = {}
    for line in (shared_dir / "reference" / "official_state_dict_keys.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        dims = [int(n) for n in shape.strip("()").split(",") if n.strip()]
        state[key] = torch.empty(dims, device="meta")
    assert len(state) == 394
    assert infer_config(state) == PRESETS["official"]
    assert manifest._state_dict_problems(state, PRESETS["official"]) is None
    state["module.out.2.bias"] = state.pop("out.2.bias")  # a DataParallel prefix is not the released file
    assert "1 missing keys: out.2.bias" in manifest._state_dict_problems(state, infer_config(state))


def test_a_folder_of_official_files_is_used_without_a_manifest(downloads, caplog, monkeypatch):
    hashed = []
    for module in (official, manifest):
        real = module.sha256_file
        monkeypatch.setattr(
            module, "sha256_file", lambda p, real=real: hashed.append(Path(p).name) or real(p)
        )
    with caplog.at_level(logging.INFO, logger="brasyn"):
        store = WeightStore(downloads)
        models = {m: store.load(m) for m in ("t1n", "t1c", "t2w", "t2f")}
    assert store.targets() == list(Modality)
    for name, target in MAPPING.items():
        info = store.info(target)
        assert (info.file, info.format, info.config) == (name, "official", TINY)
        assert info.provenance["source_file"] == name
        assert f"recognised official cWDM checkpoint {name} as the {target} model" in caplog.text
    assert "is not of the official cWDM size" in caplog.text
    assert sorted(hashed) == sorted(MAPPING)  # each file hashed once, not again when loaded
    expected = {MAPPING[n]: m for n, m in _save_official(downloads.parent / "again").items()}
    for target, model in models.items():
        assert torch.equal(_output(model), _output(expected[target]))
    assert not (downloads / "manifest.json").exists()  # the download folder is never written


def test_some_official_names_are_used_and_the_rest_is_named_as_ignored(tmp_path, caplog):
    folder = tmp_path / "w"
    _save_official(folder, ["flair_gen.pt", "my_t1c_run.pt"])
    with caplog.at_level(logging.INFO, logger="brasyn"):
        store = WeightStore(folder)
    assert store.targets() == [Modality.T2F]
    assert "ignored my_t1c_run.pt" in caplog.text and "import-official --target T" in caplog.text


def test_a_wrong_key_is_refused_naming_the_file(downloads):
    state = torch.load(downloads / "t2_gen.pt", weights_only=True)
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, downloads / "t2_gen.pt")
    with pytest.raises(WeightsError) as caught:
        WeightStore(downloads)
    message = str(caught.value)
    assert (
        "t2_gen.pt is not an official cWDM checkpoint" in message
        and "1 unexpected keys: extra.weight" in message
    )


def test_a_folder_without_manifest_or_official_names_is_refused_naming_them(tmp_path):
    _save_official(tmp_path / "w", ["model.pt"])
    with pytest.raises(WeightsError, match=r"has no manifest\.json and none of the official") as caught:
        WeightStore(tmp_path / "w")
    assert "flair_gen.pt" in str(caught.value) and "import-official DIR --out" in str(caught.value)


def test_two_files_naming_one_contrast_are_refused(tmp_path):
    _save_official(tmp_path / "w", ["t1_gen.pt", "T1_GEN.pt"])
    with pytest.raises(WeightsError, match="both name the t1n checkpoint"):
        WeightStore(tmp_path / "w")


def _run_args(tmp_path: Path) -> list[str]:
    make_case(tmp_path / "in", "BraTS-GLI-00001-000", seed=1)  # lacks t2f: flair_gen.pt synthesises it
    return ["--device", "cpu", "--sampler", "x0", "--no-progress", "--report", str(tmp_path / "report.json")]


def test_the_cli_synthesises_with_a_folder_of_official_files(tmp_path, downloads, capsys):
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--weights", str(downloads)]
    assert brasyn_main([*args, *_run_args(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "recognised official cWDM checkpoint flair_gen.pt as the t2f model" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["BraTS-GLI-00001-000-t2f.nii.gz"]
    report = json.loads((tmp_path / "report.json").read_text())
    entry = report["checkpoints"]["t2f"]
    assert entry["file"] == entry["source_file"] == "flair_gen.pt" and entry["format"] == "official"
    assert entry["listed_by"] == "file name (no manifest.json)"
    assert report["weights_quality"] == "trained"
    import jsonschema

    schema = json.loads((Path(__file__).resolve().parents[2] / "docs" / "report.schema.json").read_text())
    jsonschema.validate(report, schema)


def test_the_mlcube_weights_mount_of_official_files_is_used(tmp_path, downloads, capsys):
    args = ["infer", "--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")]
    parameters = tmp_path / "parameters.yaml"
    parameters.write_text("sampler: x0\ndevice: cpu\n")
    _run_args(tmp_path)
    assert brasyn_main([*args, "--weights", str(downloads), "--parameters_file", str(parameters)]) == 0
    err = capsys.readouterr().err
    assert "recognised official cWDM checkpoint flair_gen.pt as the t2f model" in err
    assert "baked into the image" not in err
    assert (tmp_path / "out" / "BraTS-GLI-00001-000-t2f.nii.gz").is_file()


def test_weights_naming_one_checkpoint_file_uses_that_one_alone(tmp_path, downloads, capsys):
    """``--weights DOWNLOADS/flair_gen.pt``: that checkpoint synthesises t2f; a case missing another
    contrast fails naming the folder to give instead (the folder's other files are not used)."""
    _run_args(tmp_path)
    make_case(tmp_path / "in", "BraTS-GLI-00002-000", ("t1c", "t2w", "t2f"), seed=2)  # lacks t1n
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    code = brasyn_main([*args, "--weights", str(downloads / "flair_gen.pt"), *_run_args(tmp_path)])
    assert code == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["BraTS-GLI-00001-000-t2f.nii.gz"]
    err = capsys.readouterr().err
    assert f"the t2f checkpoint of {downloads} alone" in err
    assert (
        f"--weights names one checkpoint, {downloads / 'flair_gen.pt'} (t2f), and this case needs t1n" in err
    )
    # the same weights as the whole folder gives for t2f
    whole = tmp_path / "whole"
    assert (
        brasyn_main(
            [
                "--input",
                str(tmp_path / "in"),
                "--output",
                str(whole),
                "--weights",
                str(downloads),
                *_run_args(tmp_path),
            ]
        )
        == 0
    )
    one = (tmp_path / "out" / "BraTS-GLI-00001-000-t2f.nii.gz").read_bytes()
    assert one == (whole / "BraTS-GLI-00001-000-t2f.nii.gz").read_bytes()


def test_weights_naming_a_file_its_folder_does_not_list_is_refused(tmp_path, capsys):
    folder = tmp_path / "w"
    init_random(folder, "tiny")
    (folder / "mine.pt").write_bytes((folder / "t2f.pt").read_bytes())
    with pytest.raises(
        WeightsError, match=r"names the file .*mine.pt, which its folder's manifest does not list"
    ):
        WeightStore(folder / "mine.pt")
    args = [
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "out"),
        "--weights",
        str(folder / "mine.pt"),
    ]
    assert brasyn_main([*args, *_run_args(tmp_path)]) == 2
    assert "import-official --target T" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_import_official_of_a_folder_maps_every_file_by_name(tmp_path, downloads, capsys):
    (downloads / "notes.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "weights"
    assert weights_main(["import-official", str(downloads), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 4
    for name, target in MAPPING.items():
        assert any(
            line.startswith(f"{target}  {out / (target + '.pt')}")
            and f"(from {name}; release unproven" in line
            for line in lines
        )
    assert "ignored notes.pt" in captured.err
    entries = json.loads((out / "manifest.json").read_text())["checkpoints"]
    assert {t: e["provenance"]["source_file"] for t, e in entries.items()} == {
        t: n for n, t in MAPPING.items()
    }
    assert {e["provenance"]["target_from"] for e in entries.values()} == {"file name"}
    assert weights_main(["verify", str(out)]) == 0
    assert torch.equal(_output(WeightStore(out).load("t2w")), _output(_model(2)))


def test_import_official_into_the_download_folder_writes_only_a_manifest(downloads, capsys):
    before = sorted(p.name for p in downloads.iterdir())
    assert weights_main(["import-official", str(downloads), "--out", str(downloads)]) == 0
    assert sorted(p.name for p in downloads.iterdir()) == sorted([*before, "manifest.json"])
    assert WeightStore(downloads).info("t2f").file == "flair_gen.pt"


def test_import_official_of_a_folder_with_a_bad_file_writes_nothing(tmp_path, downloads, capsys):
    (downloads / "t1ce_gen.pt").write_bytes(b"truncated download")
    assert weights_main(["import-official", str(downloads), "--out", str(tmp_path / "w")]) == 2
    assert (
        "t1ce_gen.pt is a text file ('truncated download' ...), not a torch checkpoint"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "w").exists()


def test_a_file_whose_name_cannot_confirm_the_contrast_is_imported_with_a_warning(tmp_path, capsys):
    _save_official(tmp_path, ["brats_1200000.pt"])
    out = tmp_path / "w"
    assert weights_main(["import-official", str(tmp_path / "brats_1200000.pt"), "--out", str(out)]) == 2
    assert "does not say which contrast" in capsys.readouterr().err and not out.exists()
    assert (
        weights_main(
            ["import-official", "--target", "t1c", str(tmp_path / "brats_1200000.pt"), "--out", str(out)]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "WARNING" in err and "the contrast of" in err and "cannot be confirmed" in err
    provenance = WeightStore(out).info("t1c").provenance
    assert provenance["target_from"] == "--target (not confirmed by the file name)"


def test_a_target_that_contradicts_the_official_name_needs_force(tmp_path, downloads, capsys):
    out = tmp_path / "w"
    args = ["import-official", "--target", "t1n", str(downloads / "flair_gen.pt"), "--out", str(out)]
    assert weights_main(args) == 2
    assert "flair_gen.pt is the official t2f checkpoint, but --target says t1n" in capsys.readouterr().err
    assert not out.exists()
    assert weights_main([*args, "--force"]) == 0
    assert "imported as t1n (--force)" in capsys.readouterr().err
    assert WeightStore(out).targets() == [Modality.T1N]
    assert (
        weights_main(
            ["import-official", "--target", "t2f", str(downloads / "flair_gen.pt"), "--out", str(out)]
        )
        == 0
    )
    assert WeightStore(out).info("t2f").provenance["target_from"] == "file name and --target"


def test_import_official_of_a_folder_refuses_target(tmp_path, downloads, capsys):
    assert (
        weights_main(["import-official", "--target", "t1n", str(downloads), "--out", str(tmp_path / "w")])
        == 2
    )
    assert "is a folder: its files are mapped by name" in capsys.readouterr().err


@pytest.mark.parametrize(
    "message",
    [
        "but no manifest.json and none of the official checkpoint names",
        "and none of the official cWDM checkpoint names",
        "recognised official cWDM checkpoint",
        "not an official checkpoint name",
        "is not of the official cWDM size",
        "is not an official cWDM checkpoint",
        "which both name the",
        "cannot be confirmed",
        "does not say which contrast the checkpoint synthesises",
        "checkpoint, but --target says",
        "which its folder's",
        "--weights names one checkpoint",
    ],
)
def test_troubleshooting_covers_each_message_about_official_files(message):
    root = Path(__file__).resolve().parents[2]
    code = " ".join(
        (root / "brasyn" / name).read_text()
        for name in ("weights/official.py", "commands/options.py", "weights/store.py")
    )
    troubleshooting = (root / "docs" / "troubleshooting.md").read_text()
    joined = re.sub(r'"\s*\n\s*f?"', "", code)  # adjacent string literals, as Python joins them
    assert message in joined
    assert message in troubleshooting
