"""What the README promises of ``python -m brasyn.train``: --save-every, resume after SIGTERM or from a
periodic save, --val, --batch-size, --clip-grad and bf16, each through the real command on tiny runs."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch

from brasyn.commands.train import main as train_main
from brasyn.train.trainer import Trainer
from brasyn.weights.store import WeightStore
from tests.helpers import make_case, tiny_train_args, tiny_training_cache

ALL = ("t1n", "t1c", "t2w", "t2f")
STEPS = 5


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tiny_training_cache(tmp_path_factory.mktemp("train-data"), seed_step=7)


def _args(cache: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return tiny_train_args(cache, out, steps, "1e-3", *extra)


def _records(out: Path) -> list[dict]:
    lines = (out / "training" / "t2f" / "log.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _steps(out: Path) -> list[dict]:
    return [r for r in _records(out) if "loss" in r]


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _steps(out)}


@pytest.fixture(scope="module")
def straight(cache, tmp_path_factory) -> Path:
    """An uninterrupted run of STEPS steps: what every interrupted run must end as."""
    out = tmp_path_factory.mktemp("straight")
    assert train_main(_args(cache, out, STEPS)) == 0
    return out


def _after_step(monkeypatch, step: int, action) -> None:
    """Call ``action()`` once the optimiser step ``step`` of the next run is done."""
    original = Trainer.train_step

    def train_step(self, batch=None):
        loss = original(self, batch)
        if self.step == step:
            action()
        return loss

    monkeypatch.setattr(Trainer, "train_step", train_step)


def _saved_step(out: Path) -> int:
    return int(torch.load(out / "training" / "t2f" / "state.pt", weights_only=True)["step"])


def test_save_every_writes_the_training_state_every_n_steps(cache, tmp_path, monkeypatch):
    out, saved = tmp_path / "w", []
    original = Trainer.save_state

    def save_state(self):
        original(self)
        saved.append(_saved_step(out))

    monkeypatch.setattr(Trainer, "save_state", save_state)
    assert train_main(_args(cache, out, STEPS, "--save-every", "2")) == 0
    assert saved == [2, 4, STEPS]  # every 2 steps, and the last


def test_sigterm_then_resume_ends_as_the_uninterrupted_run(cache, straight, tmp_path, monkeypatch):
    out = tmp_path / "w"
    _after_step(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert train_main(_args(cache, out, STEPS)) == 143
    assert _saved_step(out) == 3
    monkeypatch.undo()
    assert train_main(_args(cache, out, STEPS, "--resume")) == 0
    # the signal came after step 3's update, before its log line: the line is written on the way out
    assert [r["step"] for r in _steps(out)] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in _steps(out) if r.get("stopped")] == [3]
    assert _losses(out) == pytest.approx(_losses(straight), rel=1e-6)
    assert WeightStore(out).info("t2f").sha256 == WeightStore(straight).info("t2f").sha256


def test_a_run_killed_after_a_periodic_save_resumes_from_it_exactly(cache, straight, tmp_path, monkeypatch):
    out = tmp_path / "w"

    def crash() -> None:  # no SIGTERM: nothing is saved beyond the periodic state
        raise KeyboardInterrupt

    _after_step(monkeypatch, 3, crash)
    assert train_main(_args(cache, out, STEPS, "--save-every", "2")) == 130
    assert _saved_step(out) == 2
    monkeypatch.undo()
    assert train_main(_args(cache, out, STEPS, "--save-every", "2", "--resume")) == 0
    # step 3 crashed before its log line and ran again from the state of step 2
    assert [r["step"] for r in _steps(out)] == [1, 2, 3, 4, 5]
    assert _losses(out) == pytest.approx(_losses(straight), rel=1e-6)
    assert WeightStore(out).info("t2f").sha256 == WeightStore(straight).info("t2f").sha256


def test_val_records_the_validation_ssim_every_val_every_steps(cache, tmp_path):
    val = tmp_path / "val"
    make_case(val, "held-out", ALL, seed=21, shape=(32, 32, 32))
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 3, "--val", str(val), "--val-every", "2", "--val-steps", "1")) == 0
    records = _steps(out)
    assert [r["step"] for r in records if "val_ssim" in r] == [2]
    ssim = records[1]["val_ssim"]
    assert math.isfinite(ssim) and -1.0 <= ssim <= 1.0


def test_batch_size_trains_each_step_on_that_many_examples(cache, tmp_path, monkeypatch):
    seen = []
    original = Trainer.loss

    def loss(self, batch):
        seen.append(tuple(batch.shape))
        return original(self, batch)

    monkeypatch.setattr(Trainer, "loss", loss)
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 2, "--batch-size", "3")) == 0
    assert seen == [(3, 4, 32, 32, 32)] * 2
    assert [len(r["draws"][0]) for r in _steps(out)] == [3, 3]


def _grad_norms(monkeypatch) -> list[float]:
    """The gradient norm each optimiser step of the next run applies."""
    norms: list[float] = []
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)

        def record(optimizer, args, kwargs):
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

        self.optimizer.register_step_pre_hook(record)

    monkeypatch.setattr(Trainer, "__init__", init)
    return norms


def test_clip_grad_bounds_the_gradient_norm_of_each_step(cache, tmp_path, monkeypatch):
    norms = _grad_norms(monkeypatch)
    assert train_main(_args(cache, tmp_path / "free", 2)) == 0
    free = list(norms)
    norms.clear()
    limit = min(free) / 10
    assert train_main(_args(cache, tmp_path / "clipped", 2, "--clip-grad", f"{limit!r}")) == 0
    assert len(free) == len(norms) == 2
    assert max(norms) <= limit * (1 + 1e-4)
    assert min(norms) >= limit * (1 - 1e-4)  # clipped down to the limit, not zeroed


def test_bf16_trains_under_bfloat16_autocast_close_to_fp32(cache, straight, tmp_path, monkeypatch):
    dtypes: set[torch.dtype] = set()
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        for module in self.model.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))

    monkeypatch.setattr(Trainer, "__init__", init)
    out = tmp_path / "w"
    assert train_main(_args(cache, out, 1, "--precision", "bf16")) == 0
    assert torch.bfloat16 in dtypes
    bf16, fp32 = _steps(out)[0]["loss"], _steps(straight)[0]["loss"]
    assert math.isfinite(bf16) and bf16 == pytest.approx(fp32, rel=0.05)
    assert WeightStore(out).info("t2f").provenance["recipe"]["precision"] == "bf16"


def test_sigterm_during_the_optimiser_update_still_resumes_exactly(cache, straight, tmp_path, monkeypatch):
    out = tmp_path / "w"
    original = Trainer.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)

        def term(optimizer, args, kwargs):  # the weights of step 3 are updated, the step not yet counted
            if self.step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

        self.optimizer.register_step_post_hook(term)

    monkeypatch.setattr(Trainer, "__init__", init)
    assert train_main(_args(cache, out, STEPS)) == 143
    monkeypatch.undo()
    assert train_main(_args(cache, out, STEPS, "--resume")) == 0
    assert WeightStore(out).info("t2f").sha256 == WeightStore(straight).info("t2f").sha256
    assert [r["step"] for r in _steps(out)] == [1, 2, 3, 4, 5]  # step 3's line too, written on the way out
    assert _losses(out) == pytest.approx(_losses(straight), rel=1e-6)


def test_checkpointing_trains_the_same_numbers_and_auto_turns_it_on_for_whole_volumes_on_the_cpu(
    cache, straight, tmp_path, monkeypatch
):
    on = tmp_path / "on"
    assert train_main(_args(cache, on, STEPS, "--checkpointing", "on")) == 0
    assert _losses(on) == pytest.approx(_losses(straight), rel=1e-5)
    recipe = WeightStore(on).info("t2f").provenance["recipe"]
    assert recipe["checkpointing"] is True
    assert WeightStore(straight).info("t2f").provenance["recipe"]["checkpointing"] is False  # auto, patches

    seen = []
    original = Trainer.train_step

    def train_step(self, batch=None):
        seen.append(self.model.checkpointing)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step)
    whole = [a for a in _args(cache, tmp_path / "whole", 1) if a not in ("--patch", "32")]
    assert train_main(whole) == 0  # auto, whole volumes, CPU
    assert train_main([*whole, "--restart", "--checkpointing", "off"]) == 0
    assert seen == [True, False]


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_entry_broken_during_training_stops_it_with_the_file_and_the_state_saved(
    cache, tmp_path, monkeypatch, capsys, workers
):
    """A cache array truncated after the start (its JSON was read then): one message naming the file and
    what to do, the state saved at the last step taken, exit 2; no worker traceback in the log."""
    import shutil

    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)

    def truncate() -> None:
        for array in copy.glob("*.npy"):
            array.write_bytes(array.read_bytes()[:1000])

    _after_step(monkeypatch, 2, truncate)
    out = tmp_path / "w"
    args = [a if a != "0" else workers for a in _args(copy, out, STEPS)]  # --workers 0 -> the parameter
    assert train_main(args) == 2
    err = capsys.readouterr().err
    message = next(line for line in err.splitlines() if "ERROR" in line and "cannot be read" in line)
    assert str(copy) in message and ".npy cannot be read" in message
    assert "Traceback" not in err and "prepare the cache again" in err and "--resume" in err
    # the loader's workers ignore SIGTERM: one left behind by the error would block this process's exit
    import multiprocessing

    assert not multiprocessing.active_children()
    # the state of the last step taken (with workers, batches cut ahead of the truncation still ran)
    taken = [r["step"] for r in _steps(out)]
    assert _saved_step(out) == taken[-1] and taken[-1] >= 2 and taken[-1] < STEPS
