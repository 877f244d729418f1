import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import brasyn.weights.manifest as manifest
from brasyn.commands.weights import main
from brasyn.common.errors import WeightsError
from brasyn.common.files import sha256_file
from brasyn.data.modalities import MODALITIES, Modality, conditions_for
from brasyn.model.diffusion import Diffusion, DiffusionConfig
from brasyn.model.unet import PRESETS, Denoiser, DenoiserConfig
from brasyn.weights.manifest import DEFAULT_INTENSITY_RATIOS, CheckpointInfo
from brasyn.weights.official import import_official
from brasyn.weights.store import WeightStore, init_random, save_checkpoint

TINY = PRESETS["tiny"]
BUNDLED = Path(__file__).resolve().parents[2] / "weights"


def _input(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 32, 16, 16, 16, generator=g), torch.tensor([417])


def _output(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(*_input())


def _perturbed_tiny(seed: int = 1) -> Denoiser:
    model = Denoiser.from_config(TINY)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _set_manifest_sha(folder: Path, target: str) -> None:
    manifest = _manifest(folder)
    entry = manifest["checkpoints"][target]
    entry["sha256"] = sha256_file(folder / entry["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    init_random(folder, "tiny", seed=3)
    return folder


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_saved_model_loads_back_with_identical_outputs(tmp_path):
    model = _perturbed_tiny().eval()
    info = save_checkpoint(tmp_path, model, "t2w", provenance={"source": "unit test"})
    loaded = WeightStore(tmp_path).load("t2w")
    assert loaded is not model
    assert not loaded.training
    assert loaded.config == TINY
    expected = _output(model)
    assert expected.abs().max() > 0
    assert torch.equal(_output(loaded), expected)
    assert info.file == "t2w.pt" and info.format == "brasyn"
    saved = torch.load(tmp_path / "t2w.pt", weights_only=True)
    assert saved["target"] == "t2w" and saved["config"] == TINY.to_dict()


def test_random_init_makes_every_layer_random_so_outputs_are_not_zero(tiny_folder):
    store = WeightStore(tiny_folder)
    model = store.load("t1n")
    for name, p in model.named_parameters():
        assert (p != 0).any(), f"{name} is all zero"
    # the layers a fresh Denoiser zero-initialises are random too
    assert (model.out[2].weight != 0).all()
    out = _output(model)
    assert out.shape == (1, 8, 16, 16, 16)
    assert torch.isfinite(out).all()
    assert out.abs().mean() > 1e-3


def test_random_init_is_seeded_and_differs_per_target(tmp_path):
    a = init_random(tmp_path / "a", "tiny", seed=5, targets=["t1n", "t2f"])
    init_random(tmp_path / "b", "tiny", seed=5, targets=["t2f"])
    c = init_random(tmp_path / "c", "tiny", seed=6, targets=["t2f"])
    assert [i.target for i in a] == [Modality.T1N, Modality.T2F]
    t1n, t2f = (WeightStore(tmp_path / "a").load(t) for t in ("t1n", "t2f"))
    t2f_again = WeightStore(tmp_path / "b").load("t2f")
    t2f_other_seed = WeightStore(tmp_path / "c").load("t2f")
    assert torch.equal(_output(t2f), _output(t2f_again))
    assert not torch.equal(_output(t2f), _output(t1n))
    assert not torch.equal(_output(t2f), _output(t2f_other_seed))
    assert a[1].sha256 != c[0].sha256


def test_manifest_lists_each_checkpoint_with_hash_config_and_ratios(tiny_folder):
    manifest = _manifest(tiny_folder)
    assert manifest["format_version"] == 1
    assert list(manifest["checkpoints"]) == ["t1n", "t1c", "t2w", "t2f"]
    for target, entry in manifest["checkpoints"].items():
        assert entry["file"] == f"{target}.pt"
        assert entry["target"] == target
        assert entry["sha256"] == sha256_file(tiny_folder / entry["file"])
        assert entry["format"] == "brasyn"
        assert entry["config"] == TINY.to_dict()
        assert entry["diffusion"] == {"steps": 1000, "schedule": "linear", "prediction": "x0", "clip": True}
        assert list(entry["intensity_ratios"]) == [m.value for m in conditions_for(target)]
        assert entry["intensity_ratios"] == {
            m.value: r for m, r in DEFAULT_INTENSITY_RATIOS[Modality(target)].items()
        }
        assert entry["provenance"]["seed"] == 3
        assert entry["provenance"]["created"]
    assert sorted(p.name for p in tiny_folder.iterdir()) == sorted(
        ["manifest.json", "t1n.pt", "t1c.pt", "t2w.pt", "t2f.pt"]
    ), "no temporary files are left behind"


def test_checkpoint_info_round_trips_through_its_dict(tiny_folder):
    info = WeightStore(tiny_folder).info("t2f")
    assert CheckpointInfo.from_dict(info.to_dict()) == info
    assert json.loads(json.dumps(info.to_dict())) == info.to_dict()
    assert info.target is Modality.T2F
    assert set(info.intensity_ratios) == {Modality.T1N, Modality.T1C, Modality.T2W}


def test_manifest_entry_without_ratios_gets_the_defaults(tiny_folder):
    manifest = _manifest(tiny_folder)
    del manifest["checkpoints"]["t1c"]["intensity_ratios"]
    (tiny_folder / "manifest.json").write_text(json.dumps(manifest))
    assert WeightStore(tiny_folder).info("t1c").intensity_ratios == DEFAULT_INTENSITY_RATIOS[Modality.T1C]


def test_manifest_entry_without_diffusion_or_with_the_old_two_keys_gets_the_defaults(tiny_folder):
    manifest = _manifest(tiny_folder)
    del manifest["checkpoints"]["t1c"]["diffusion"]
    manifest["checkpoints"]["t2w"]["diffusion"] = {"steps": 1000, "schedule": "linear"}
    manifest["checkpoints"]["t2f"]["diffusion"] = {"steps": 500}
    (tiny_folder / "manifest.json").write_text(json.dumps(manifest))
    store = WeightStore(tiny_folder)
    assert store.info("t1c").diffusion == DiffusionConfig()
    assert store.info("t2w").diffusion == DiffusionConfig()
    assert store.info("t2f").diffusion == DiffusionConfig(steps=500)
    assert isinstance(store.info("t1n").diffusion, DiffusionConfig)


def test_bundled_manifest_with_two_diffusion_keys_still_loads_as_the_defaults():
    store = WeightStore(BUNDLED)
    assert store.targets() == list(MODALITIES)
    for target in store.targets():
        assert store.info(target).diffusion == DiffusionConfig()


def test_saved_diffusion_settings_are_written_with_all_four_keys_and_read_back(tmp_path):
    config = DiffusionConfig(steps=250, schedule="cosine", clip=False)
    info = save_checkpoint(tmp_path, _perturbed_tiny(), "t2f", diffusion=config)
    assert info.diffusion == config
    entry = _manifest(tmp_path)["checkpoints"]["t2f"]
    assert entry["diffusion"] == {"steps": 250, "schedule": "cosine", "prediction": "x0", "clip": False}
    assert WeightStore(tmp_path).info("t2f").diffusion == config
    with pytest.raises(ValueError, match="diffusion must be a DiffusionConfig"):
        save_checkpoint(tmp_path / "other", _perturbed_tiny(), "t2f", diffusion={"steps": 250})
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize(
    ("diffusion", "message"),
    [
        ({"steps": 1000, "schedule": "linear", "eta": 0}, r"unknown diffusion setting\(s\) 'eta'"),
        ({"steps": 1000, "prediction": "eps"}, r"prediction 'eps' is not supported"),
        ({"steps": "1000"}, r"steps must be a whole number"),
        ({"schedule": "quadratic"}, r"schedule 'quadratic'"),
        ({"clip": "yes"}, r"clip must be true or false"),
        ([1000, "linear"], r"must be an object"),
    ],
)
def test_invalid_diffusion_entry_is_refused_naming_the_entry_and_the_field(tiny_folder, diffusion, message):
    manifest = _manifest(tiny_folder)
    manifest["checkpoints"]["t1c"]["diffusion"] = diffusion
    (tiny_folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        WeightsError, match=r"the entry 't1c' is invalid: diffusion (is invalid: )?" + message
    ):
        WeightStore(tiny_folder)


def test_the_diffusion_predictor_samples_with_the_diffusion_settings_of_the_manifest(tmp_path, monkeypatch):
    from brasyn.inference.predictors import DiffusionPredictor
    from brasyn.model.diffusion import Sampling

    config = DiffusionConfig(steps=50, schedule="cosine", clip=False)
    save_checkpoint(tmp_path, _perturbed_tiny(), "t2f", diffusion=config)
    save_checkpoint(tmp_path, _perturbed_tiny(), "t1n")
    predictor = DiffusionPredictor(WeightStore(tmp_path), torch.device("cpu"), Sampling(sampler="x0"))
    diffusion = predictor.diffusion_for(Modality.T2F)
    assert diffusion.config == config and diffusion.num_steps == 50 and diffusion.schedule == "cosine"
    assert predictor.diffusion_for(Modality.T2F) is diffusion  # built once per config
    assert predictor.diffusion_for(Modality.T1N).config == DiffusionConfig()

    clips = []
    sample = Diffusion.sample

    def spy(self, *args, **kwargs):
        clips.append(kwargs.get("clip"))
        return sample(self, *args, **kwargs)

    monkeypatch.setattr(Diffusion, "sample", spy)
    images = torch.rand(1, 3, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    for target in (Modality.T2F, Modality.T1N):
        assert predictor.predict(images, target).shape == (1, 1, 32, 32, 32)
    assert clips == [False, True]


def test_default_ratios_cover_the_three_conditions_of_every_target():
    assert set(DEFAULT_INTENSITY_RATIOS) == set(MODALITIES)
    for target, ratios in DEFAULT_INTENSITY_RATIOS.items():
        assert tuple(ratios) == conditions_for(target)
        assert all(0.1 < r < 10 for r in ratios.values())


def test_saving_again_replaces_only_that_targets_entry(tiny_folder):
    before = _manifest(tiny_folder)["checkpoints"]
    info = save_checkpoint(
        tiny_folder, _perturbed_tiny(), "t1c", intensity_ratios={"t1n": 2.0, "t2w": 3.0, "t2f": 4.0}
    )
    after = _manifest(tiny_folder)["checkpoints"]
    assert list(after) == list(before)
    assert after["t1c"]["sha256"] == info.sha256 != before["t1c"]["sha256"]
    assert after["t1c"]["intensity_ratios"] == {"t1n": 2.0, "t2w": 3.0, "t2f": 4.0}
    assert {k: v for k, v in after.items() if k != "t1c"} == {k: v for k, v in before.items() if k != "t1c"}


def test_invalid_ratios_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="exactly the keys"):
        save_checkpoint(tmp_path, _perturbed_tiny(), "t1n", intensity_ratios={"t1c": 1.0})
    with pytest.raises(ValueError, match="positive"):
        save_checkpoint(tmp_path, _perturbed_tiny(), "t1n", intensity_ratios={"t1c": 1, "t2w": 0, "t2f": 1})
    assert list(tmp_path.iterdir()) == []


def test_nothing_is_written_into_a_folder_whose_manifest_is_broken(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"format_version": 1, "checkpoints": {"t1n": {}}}')
    with pytest.raises(WeightsError, match="'file' is missing"):
        save_checkpoint(folder, _perturbed_tiny(), "t2w")
    source = tmp_path / "src.pt"
    torch.save(_perturbed_tiny().state_dict(), source)
    with pytest.raises(WeightsError, match="'file' is missing"):
        import_official(source, "t2w", folder, config=TINY)
    assert [p.name for p in folder.iterdir()] == ["manifest.json"]


def test_tampered_checkpoint_is_refused_with_its_expected_hash(tiny_folder):
    path = tiny_folder / "t2w.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    expected = _manifest(tiny_folder)["checkpoints"]["t2w"]["sha256"]
    with pytest.raises(WeightsError, match="sha256") as caught:
        WeightStore(tiny_folder).load("t2w")
    assert str(path) in str(caught.value)
    assert expected in str(caught.value)
    WeightStore(tiny_folder).load("t1n")  # the other checkpoints are unaffected


def test_missing_folder_or_manifest_says_how_to_create_one(tmp_path):
    with pytest.raises(WeightsError, match="does not exist") as caught:
        WeightStore(tmp_path / "nowhere")
    assert "python -m brasyn.weights init" in str(caught.value)
    assert "import-official" in str(caught.value)
    with pytest.raises(WeightsError, match=r"has no manifest\.json") as caught:
        WeightStore(tmp_path)
    assert "python -m brasyn.weights init" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot be read as JSON"),
        ("[]", "must hold a JSON object"),
        ('{"format_version": 2, "checkpoints": {}}', "format_version 2"),
        ('{"format_version": 1}', "no 'checkpoints'"),
        ('{"format_version": 1, "checkpoints": {"t1n": {"file": "t1n.pt"}}}', "'target' is missing"),
    ],
)
def test_invalid_manifest_is_refused_with_the_reason(tmp_path, text, message):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(WeightsError, match=message):
        WeightStore(tmp_path)


def test_manifest_entry_under_the_wrong_key_is_refused(tiny_folder):
    manifest = _manifest(tiny_folder)
    manifest["checkpoints"]["t1n"]["target"] = "t2f"
    (tiny_folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="entry 't1n' names target 't2f'"):
        WeightStore(tiny_folder)


def test_manifest_file_outside_the_folder_is_refused(tiny_folder):
    manifest = _manifest(tiny_folder)
    manifest["checkpoints"]["t1n"]["file"] = "../elsewhere.pt"
    (tiny_folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="plain file name"):
        WeightStore(tiny_folder)


def test_absent_target_is_named_with_the_folder(tmp_path):
    init_random(tmp_path, "tiny", targets=["t1n"])
    store = WeightStore(tmp_path)
    assert store.targets() == [Modality.T1N]
    for call in (store.info, store.load):
        with pytest.raises(WeightsError, match="no checkpoint for target t2f") as caught:
            call("t2f")
        assert str(tmp_path) in str(caught.value)
        assert "(it has: t1n)" in str(caught.value)
    with pytest.raises(WeightsError, match="not a contrast"):
        store.info("flair")


def test_missing_checkpoint_file_is_reported(tiny_folder):
    (tiny_folder / "t1c.pt").unlink()
    store = WeightStore(tiny_folder)  # the manifest alone is fine
    with pytest.raises(WeightsError, match="is missing") as caught:
        store.load("t1c")
    assert str(tiny_folder / "t1c.pt") in str(caught.value)


def test_corrupt_checkpoint_with_a_matching_hash_is_reported_as_unreadable(tiny_folder):
    (tiny_folder / "t1n.pt").write_bytes(b"PK\x03\x04 definitely not a zip archive")
    _set_manifest_sha(tiny_folder, "t1n")
    with pytest.raises(WeightsError, match="could not be read as a safe torch checkpoint"):
        WeightStore(tiny_folder).load("t1n")


def test_checkpoint_that_disagrees_with_the_manifest_is_refused(tiny_folder):
    torch.save(
        {"state_dict": Denoiser.from_config(TINY).state_dict(), "config": TINY.to_dict(), "target": "t2f"},
        tiny_folder / "t1n.pt",
    )
    _set_manifest_sha(tiny_folder, "t1n")
    with pytest.raises(WeightsError, match="target 't2f'"):
        WeightStore(tiny_folder).load("t1n")


def test_state_dict_of_another_size_does_not_load(tiny_folder):
    small = Denoiser.from_config(PRESETS["small"])
    torch.save(
        {"state_dict": small.state_dict(), "config": TINY.to_dict(), "target": "t1n"}, tiny_folder / "t1n.pt"
    )
    _set_manifest_sha(tiny_folder, "t1n")
    with pytest.raises(WeightsError, match="does not fit its config"):
        WeightStore(tiny_folder).load("t1n")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_checkpoint_holding_an_arbitrary_object_is_refused_without_running_it(tmp_path, tiny_folder):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": _RunsCodeWhenUnpickled(marker)}, tiny_folder / "t1n.pt")
    _set_manifest_sha(tiny_folder, "t1n")
    with pytest.raises(WeightsError, match="holds code or objects other than tensors") as refused:
        WeightStore(tiny_folder).load("t1n")
    assert "weights_only=False" not in str(refused.value)  # never suggest the unsafe way round
    with pytest.raises(WeightsError, match="brasyn refuses to load it"):
        import_official(tiny_folder / "t1n.pt", "t1n", tmp_path / "imported", config=TINY)
    assert not marker.exists()


def test_verify_reports_a_checkpoint_that_matches_its_hash_but_is_not_safe(tmp_path, tiny_folder, capsys):
    from brasyn.commands.weights import main

    marker = tmp_path / "code-ran"
    torch.save({"state_dict": _RunsCodeWhenUnpickled(marker)}, tiny_folder / "t1n.pt")
    _set_manifest_sha(tiny_folder, "t1n")
    assert main(["verify", str(tiny_folder)]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "UNSAFE" in lines["t1n"] and lines["t2f"].endswith("OK")
    assert not marker.exists()


def test_load_returns_the_cached_model_and_hashes_each_file_once(tiny_folder, monkeypatch):
    hashed, read = [], []
    real_sha, real_load = manifest.sha256_file, torch.load
    monkeypatch.setattr(manifest, "sha256_file", lambda p: hashed.append(Path(p).name) or real_sha(p))
    monkeypatch.setattr(torch, "load", lambda *a, **k: read.append(a[0]) or real_load(*a, **k))
    store = WeightStore(tiny_folder)
    first = store.load("t2f")
    assert store.load("t2f") is first
    assert store.load(Modality.T2F, torch.device("cpu")) is first
    assert hashed == ["t2f.pt"]
    assert len(read) == 1
    # another store of the same folder reads the file again but trusts this process's hash check
    other = WeightStore(tiny_folder).load("t2f")
    assert other is not first
    assert hashed == ["t2f.pt"]
    assert len(read) == 2


def test_official_state_dict_is_imported_and_loads_with_the_official_outputs(tmp_path, golden, golden_model):
    config = DenoiserConfig.from_dict(golden["config"])
    source = tmp_path / "download" / "brats_1200000.pt"
    source.parent.mkdir()
    torch.save(golden["state_dict"], source)  # the format the official code writes: a plain state_dict
    folder = tmp_path / "weights"
    info = import_official(source, "t2f", folder, config=config)
    assert info.file == "t2f.pt" and info.format == "official"
    assert info.sha256 == sha256_file(source) == sha256_file(folder / "t2f.pt")
    assert info.intensity_ratios == DEFAULT_INTENSITY_RATIOS[Modality.T2F]
    # the official code's format at a smaller size: the shapes say it is not the released model
    assert info.provenance["source"].startswith("not the released architecture (model_channels 8")
    assert info.provenance["source_file"] == "brats_1200000.pt"
    entry = _manifest(folder)["checkpoints"]["t2f"]
    assert entry["format"] == "official" and entry["config"] == config.to_dict()
    loaded = WeightStore(folder).load("t2f")
    x = torch.cat([golden["x_t"], golden["conditioning"]["cond"]], dim=1)
    with torch.no_grad():
        assert torch.equal(loaded(x, torch.tensor([417])), golden_model(x, torch.tensor([417])))


def test_official_file_already_in_the_folder_is_not_copied(tmp_path):
    model = _perturbed_tiny()
    torch.save(model.state_dict(), tmp_path / "cwdm_t1c.pt")
    info = import_official(tmp_path / "cwdm_t1c.pt", "t1c", tmp_path, config=TINY)
    assert info.file == "cwdm_t1c.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwdm_t1c.pt", "manifest.json"]
    assert torch.equal(_output(WeightStore(tmp_path).load("t1c")), _output(model.eval()))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (lambda: [torch.zeros(3)], "holds a list, not a state_dict"),
        (
            lambda: {"state_dict": Denoiser.from_config(TINY).state_dict(), "config": TINY.to_dict()},
            "'state_dict' entry",
        ),
        (
            lambda: Denoiser.from_config(PRESETS["small"]).state_dict(),
            "wrong shapes: time_embed.0.weight (64, 16) != (32, 8)",
        ),
        (
            lambda: {**Denoiser.from_config(TINY).state_dict(), "extra.weight": torch.zeros(1)},
            "1 unexpected keys",
        ),
        (lambda: dict(list(Denoiser.from_config(TINY).state_dict().items())[1:]), "1 missing keys"),
    ],
    ids=["list", "brasyn-format", "wrong-shapes", "extra-key", "missing-key"],
)
def test_import_refuses_what_is_not_an_official_state_dict(tmp_path, content, message):
    source = tmp_path / "candidate.pt"
    torch.save(content(), source)
    folder = tmp_path / "weights"
    with pytest.raises(WeightsError, match="is not an official cWDM checkpoint") as caught:
        import_official(source, "t1n", folder, config=TINY)
    assert message in str(caught.value)
    assert not folder.exists()


def test_import_of_a_missing_file_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        import_official(tmp_path / "absent.pt", "t1n", tmp_path / "weights", config=TINY)


def test_cli_init_verify_list(tmp_path, capsys):
    folder = tmp_path / "w"
    assert (
        main(["init", "--config", "tiny", "--out", str(folder), "--seed", "2", "--targets", "t1n", "t2f"])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["t1n", "t2f"]
    assert WeightStore(folder).targets() == [Modality.T1N, Modality.T2F]
    assert _manifest(folder)["checkpoints"]["t2f"]["provenance"]["seed"] == 2

    assert main(["verify", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert all(line.endswith("OK") for line in out)
    assert out[0].split()[:2] == ["t1n", "t1n.pt"]

    assert main(["list", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in out] == [["t1n", "t1n.pt", "brasyn"], ["t2f", "t2f.pt", "brasyn"]]
    assert "channels=8" in out[0] and "t1c=0.7" in out[0]


def test_cli_verify_reports_a_tampered_checkpoint(tiny_folder, capsys):
    with open(tiny_folder / "t1c.pt", "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert main(["verify", str(tiny_folder)]) == 1
    captured = capsys.readouterr()
    lines = dict(line.split(maxsplit=1) for line in captured.out.splitlines())
    assert "MISMATCH" in lines["t1c"]
    assert all(lines[t].endswith("OK") for t in ("t1n", "t2w", "t2f"))
    assert "1 checkpoint(s)" in captured.err


def test_cli_errors_are_one_message_and_exit_code_2(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "ERROR The weights folder" in err and "Traceback" not in err

    bad = tmp_path / "bad.pt"
    torch.save([1, 2], bad)
    assert main(["import-official", "--target", "t2f", str(bad), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "is not an official cWDM checkpoint" in err and "Traceback" not in err

    assert main(["init", "--config", "huge", "--out", str(tmp_path / "w")]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_demo_quality_checkpoints_say_so_when_loaded(tmp_path):
    import logging

    from brasyn.model.unet import PRESETS, Denoiser
    from brasyn.weights.store import WeightStore, save_checkpoint

    save_checkpoint(tmp_path, Denoiser.from_config(PRESETS["tiny"]), "t2f", provenance={"quality": "demo"})
    save_checkpoint(tmp_path, Denoiser.from_config(PRESETS["tiny"]), "t1n")
    save_checkpoint(tmp_path, Denoiser.from_config(PRESETS["tiny"]), "t2w", provenance={"quality": "demo"})
    store = WeightStore(tmp_path)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    weights_log = logging.getLogger("brasyn.weights")
    weights_log.addHandler(handler)
    try:
        store.load("t1n")
        assert not records
        store.load("t2f")
    finally:
        weights_log.removeHandler(handler)
    assert len(records) == 1
    message = records[0].getMessage()
    assert "demo quality" in message and "fetch-official" in message
    records.clear()
    weights_log.addHandler(handler)
    try:
        store.load("t2w")  # another demo target of the same run: said once is enough
        other = WeightStore(tmp_path, quality_notice=False)  # a benchmark's own weights: nothing said
        other.load("t2f")
    finally:
        weights_log.removeHandler(handler)
    assert records == []
