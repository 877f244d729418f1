"""Training: the loss falls, a resumed run is the uninterrupted one, the result loads in the pipeline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brasyn.commands.cli import main as synthesize_main
from brasyn.commands.train import main as train_main
from brasyn.common.errors import BrasynError
from brasyn.data.modalities import Modality
from brasyn.model.diffusion import DiffusionConfig
from brasyn.train.settings import TrainSettings
from brasyn.train.trainer import Trainer
from brasyn.train.training_data import TrainingSet, find_training_cases, load_training_case
from brasyn.weights.store import WeightStore
from tests.helpers import TORCHRUN_TWO, make_case

ROOT = Path(__file__).resolve().parents[2]
ALL = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    for i in range(2):
        make_case(root, f"case{i}", ALL, seed=10 * i, shape=(40, 48, 36))
    make_case(root, "incomplete", ("t1n", "t1c", "t2w"), seed=99, shape=(40, 48, 36))
    return root


def _args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--data",
        str(data),
        "--target",
        "t2f",
        "--out",
        str(out),
        "--config",
        "tiny",
        "--steps",
        str(steps),
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--no-progress",
        "--patch",
        "32",
        "32",
        "32",
        *extra,
    ]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training" / "t2f" / "log.jsonl").read_text().splitlines()]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in _records(out) if "loss" in r]


@pytest.mark.slow
def test_loss_falls_and_the_checkpoint_synthesises_a_case(data, tmp_path):
    out = tmp_path / "w"
    assert train_main(_args(data, out, 40)) == 0
    losses = _losses(out)
    assert len(losses) == 40
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:8]) / 8
    info = WeightStore(out).info("t2f")
    assert info.provenance["steps"] == 40 and info.provenance["data"]["cases"] == ["case0", "case1"]
    assert "python -m brasyn.train" in info.provenance["command"]
    assert set(info.intensity_ratios) == {"t1n", "t1c", "t2w"}
    entry = json.loads((out / "manifest.json").read_text())["checkpoints"]["t2f"]
    assert entry["diffusion"] == {"steps": 1000, "schedule": "linear", "prediction": "x0", "clip": True}
    assert info.diffusion == DiffusionConfig()
    cases = tmp_path / "in"
    make_case(cases, "new", ("t1n", "t1c", "t2w"), seed=5, shape=(40, 48, 36))
    code = synthesize_main(
        [
            "--input",
            str(cases),
            "--output",
            str(tmp_path / "o"),
            "--weights",
            str(out),
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["new-t2f.nii.gz"]


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(data, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_main(_args(data, straight, 12, "--flip", "--ema", "0.9")) == 0
    assert train_main(_args(data, split, 5, "--flip", "--ema", "0.9")) == 0
    assert train_main([*_args(data, split, 12, "--flip", "--ema", "0.9"), "--resume"]) == 0
    a, b = _losses(straight), _losses(split)
    assert len(a) == len(b) == 12
    assert a == pytest.approx(b, rel=1e-6, abs=1e-9)
    assert WeightStore(straight).info("t2f").sha256 == WeightStore(split).info("t2f").sha256


def _trainer(data: Path, out: Path, steps: int, diffusion: DiffusionConfig) -> Trainer:
    cases = [load_training_case(c, Modality.T2F) for c in find_training_cases([data])]
    settings = TrainSettings(
        target=Modality.T2F, config="tiny", steps=steps, lr=1e-3, patch=(32, 32, 32), diffusion=diffusion
    )
    return Trainer(settings, TrainingSet(cases, settings.patch), out, torch.device("cpu"))


def test_trained_checkpoint_records_its_diffusion_settings_and_resume_keeps_them(data, tmp_path):
    out = tmp_path / "w"
    config = DiffusionConfig(steps=200, schedule="cosine", clip=False)
    trainer = _trainer(data, out, 2, config)
    assert trainer.diffusion.config == config and trainer.diffusion.num_steps == 200
    trainer.run(progress=False)
    trainer.export()
    entry = json.loads((out / "manifest.json").read_text())["checkpoints"]["t2f"]
    assert entry["diffusion"] == {"steps": 200, "schedule": "cosine", "prediction": "x0", "clip": False}
    assert entry["provenance"]["recipe"]["diffusion"] == entry["diffusion"]
    assert WeightStore(out).info("t2f").diffusion == config
    state_path = out / "training" / "t2f" / "state.pt"
    assert torch.load(state_path, weights_only=True)["diffusion"] == config.to_dict()

    # another chain than the one the state was trained on is refused; the same one resumes
    with pytest.raises(
        BrasynError, match=r"trained with the diffusion settings .*'steps': 200.*same settings"
    ):
        _trainer(data, out, 4, DiffusionConfig()).load_state()
    resumed = _trainer(data, out, 4, config)
    resumed.load_state()
    assert resumed.step == 2

    # a state written before the settings were recorded was trained with the defaults
    state = torch.load(state_path, weights_only=True)
    del state["diffusion"]
    torch.save(state, state_path)
    with pytest.raises(BrasynError, match="trained with the diffusion settings"):
        _trainer(data, out, 4, config).load_state()
    _trainer(data, out, 4, DiffusionConfig()).load_state()


def test_cli_resume_refuses_a_state_trained_with_other_diffusion_settings(data, tmp_path, capsys):
    out = tmp_path / "w"
    assert train_main(_args(data, out, 2)) == 0
    state_path = out / "training" / "t2f" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    assert state["diffusion"] == DiffusionConfig().to_dict()
    state["diffusion"] = DiffusionConfig(steps=500).to_dict()
    torch.save(state, state_path)
    capsys.readouterr()
    assert train_main([*_args(data, out, 4), "--resume"]) == 2
    assert "trained with the diffusion settings" in capsys.readouterr().err
    state["diffusion"] = {"steps": 1000, "noise": "x"}
    torch.save(state, state_path)
    assert train_main([*_args(data, out, 4), "--resume"]) == 2
    assert "invalid diffusion settings: unknown diffusion setting(s) 'noise'" in capsys.readouterr().err


def test_bad_data_folders_are_refused_with_a_sentence(tmp_path, capsys):
    assert train_main(_args(tmp_path / "missing", tmp_path / "w", 2)) == 2
    assert "missing" in capsys.readouterr().err
    only_incomplete = tmp_path / "partial"
    make_case(only_incomplete, "c", ("t1n", "t1c", "t2w"), shape=(32, 32, 32))
    assert train_main(_args(only_incomplete, tmp_path / "w", 2)) == 2
    err = capsys.readouterr().err
    assert "no usable training case" in err and "all four contrasts" in err
    assert train_main([*_args(only_incomplete, tmp_path / "w", 2), "--resume"]) == 2
    assert (
        train_main(
            [
                "--data",
                str(only_incomplete),
                "--target",
                "t2f",
                "--out",
                str(tmp_path),
                "--patch",
                "30",
                "32",
                "32",
            ]
        )
        == 2
    )


def test_sigterm_writes_the_training_state(data, tmp_path):
    out = tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "brasyn.train", *_args(data, out, 100000)],
        env=env,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    log = out / "training" / "t2f" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count('"loss"') >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    state = out / "training" / "t2f" / "state.pt"
    assert state.is_file()
    import torch

    assert torch.load(state, weights_only=True)["step"] >= 3


@pytest.mark.slow
def test_two_process_torchrun_on_cpu_writes_one_checkpoint(data, tmp_path):
    out = tmp_path / "w"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [
        *TORCHRUN_TWO,
        "-m",
        "brasyn.train",
        *_args(data, out, 4),
        *("--val", str(data), "--val-every", "2", "--val-steps", "1"),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "t2f.pt", "training"]
    info = WeightStore(out).info("t2f")
    assert info.provenance["data"]["world_size"] == 2
    assert len(_losses(out)) == 4  # rank 0 alone logs
    # rank 0 validates while the other waits in its next step
    validated = [r for r in _records(out) if "val_ssim" in r]
    assert [r["step"] for r in validated] == [2, 4] and all(r["val_ssim"] > 0 for r in validated)
    assert (out / "training" / "t2f" / "best" / "t2f.pt").is_file()
    # every rank's cases, and the intensity ratios of all of them, as one process computes them
    assert info.provenance["data"]["cases"] == ["case0", "case1"]
    single = tmp_path / "single"
    assert train_main(_args(data, single, 1)) == 0
    assert info.intensity_ratios == WeightStore(single).info("t2f").intensity_ratios
    shutil.rmtree(out)


@pytest.mark.slow
def test_two_process_torchrun_from_the_cache_draws_per_rank_and_resumes_exactly(data, tmp_path):
    cache = tmp_path / "cache"
    assert train_main(["prepare", "--data", str(data), "--cache", str(cache), "--no-progress"]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def run(out: Path, steps: int, *extra: str) -> None:
        args = ["--cache", str(cache), "--target", "t2f", "--out", str(out), "--config", "tiny"]
        args += ["--steps", str(steps), "--lr", "1e-3", "--device", "cpu", "--no-progress", "--flip"]
        args += ["--patch", "32", "32", "32", "--workers", "1", "--save-every", "0", *extra]
        cmd = [*TORCHRUN_TWO, "-m", "brasyn.train", *args]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    straight, split = tmp_path / "straight", tmp_path / "split"
    run(straight, 6)
    run(split, 3)
    run(split, 6, "--resume")
    a = [r for r in _records(straight) if "loss" in r]
    b = [r for r in _records(split) if "loss" in r]
    assert [r["draws"] for r in a] == [r["draws"] for r in b]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-6, abs=1e-9)
    assert WeightStore(straight).info("t2f").sha256 == WeightStore(split).info("t2f").sha256
    # each rank its own stream, each from all cases (not a fixed share)
    assert all(len(r["draws"]) == 2 and r["draws"][0] != r["draws"][1] for r in a)
    for rank in (0, 1):
        assert {d.split("@")[0] for r in a for d in r["draws"][rank]} == {"case0", "case1"}
    assert all(r["data_wait_s"] >= 0 for r in a)


def test_a_case_whose_contrasts_lie_on_different_grids_trains_as_inference_takes_it(tmp_path):
    """Inference resamples contrasts that share a world space but not a 1 mm grid; training, through the
    same transform into model space, must accept that case too (it used to be skipped)."""
    import SimpleITK as sitk

    data = tmp_path / "data"
    files = make_case(data, "mixed", ALL, seed=3, shape=(40, 48, 36))
    coarse = sitk.ReadImage(str(files["t2w"]))
    spacing = (1.5, 1.5, 2.0)
    size = [int(n * s / t) for n, s, t in zip(coarse.GetSize(), coarse.GetSpacing(), spacing, strict=True)]
    resampled = sitk.Resample(
        coarse,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        coarse.GetOrigin(),
        spacing,
        coarse.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )
    sitk.WriteImage(resampled, str(files["t2w"]))
    out = tmp_path / "w"
    assert train_main(_args(data, out, 2)) == 0
    info = WeightStore(out).info("t2f")
    assert info.provenance["data"]["cases"] == ["mixed"]
    assert len(_losses(out)) == 2


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_rerun_without_resume_refuses_and_changes_nothing_and_restart_keeps_a_backup(
    data, tmp_path, capsys
):
    out = tmp_path / "w"
    assert train_main(_args(data, out, 2)) == 0
    before = _tree(out)
    assert train_main(_args(data, out, 3)) == 2
    err = capsys.readouterr().err
    assert "add --resume to continue from step 2, or --restart to start over" in err
    assert _tree(out) == before
    assert train_main(_args(data, out, 3, "--resume", "--restart")) == 2
    assert train_main(_args(data, out, 1, "--restart")) == 0
    work = out / "training" / "t2f"
    assert (work / "state.pt.bak").read_bytes() == before["training/t2f/state.pt"]
    assert (work / "log.jsonl.bak").read_bytes() == before["training/t2f/log.jsonl"]
    assert [r.get("event") for r in _records(out)] == ["start", None, "end"]


def test_a_resumed_run_marks_its_place_in_the_log(data, tmp_path):
    out = tmp_path / "w"
    assert train_main(_args(data, out, 2)) == 0
    assert train_main(_args(data, out, 3, "--resume")) == 0
    events = [(r.get("event"), r["step"]) for r in _records(out)]
    assert events == [("start", 0), (None, 1), (None, 2), ("end", 2), ("resume", 2), (None, 3), ("end", 3)]


def test_settings_that_need_no_data_are_refused_before_any_case_is_read(data, tmp_path, monkeypatch, capsys):
    import brasyn.commands.train

    def never(*args, **kwargs):
        raise AssertionError("data was read before the arguments were checked")

    monkeypatch.setattr(brasyn.commands.train, "find_training_cases", never)
    args = _args(data, tmp_path / "w", 2)
    patch = args.index("--patch")
    args[patch + 1 : patch + 4] = ["30", "30", "30"]
    start = time.perf_counter()
    assert train_main(args) == 2
    assert time.perf_counter() - start < 2.0
    assert "--patch sizes must be positive multiples of 32" in capsys.readouterr().err
    assert train_main(_args(tmp_path / "missing", tmp_path / "w", 2)) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_official_recipe_states_the_published_settings_and_refuses_a_conflict(capsys):
    from brasyn.commands.train import OFFICIAL_RECIPE, _apply_recipe, build_parser

    parser = build_parser()
    args = parser.parse_args(["--data", "d", "--target", "t2f", "--out", "o", "--recipe", "official"])
    _apply_recipe(args, parser)
    assert {k: getattr(args, k) for k in OFFICIAL_RECIPE} == OFFICIAL_RECIPE
    assert args.steps == 1_200_000 and args.lr == 1e-5 and args.batch_size == 1 and args.patch is None
    args = parser.parse_args(
        ["--data", "d", "--target", "t2f", "--out", "o", "--recipe", "official", "--flip"]
    )
    with pytest.raises(Exception, match="--recipe official sets --flip False"):
        _apply_recipe(args, parser)
    assert "(default: 1000)" in " ".join(parser.format_help().split())
