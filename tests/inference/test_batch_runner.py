"""The batch runner's promises that only show under stress: a stop in the middle of a write, temporaries a
killed run left behind, and reading the next case while this one is synthesised."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from brasyn.common.errors import ExitCode
from brasyn.data.cases import discover
from brasyn.data.modalities import Modality
from brasyn.data.volumes import HOST, TEMP_PREFIX
from brasyn.inference import synthesize as synthesize_module
from brasyn.inference.batch import run_batch
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import Synthesizer
from brasyn.model.diffusion import Sampling
from brasyn.weights.manifest import DEFAULT_INTENSITY_RATIOS
from brasyn.weights.store import WeightStore
from tests.helpers import FirstCondition, make_case

CASES = ("BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000")


@pytest.fixture()
def three_cases(tmp_path: Path) -> Path:
    for seed, case in enumerate(CASES):
        make_case(tmp_path / "in", case, ("t1n", "t1c", "t2w"), seed=seed, shape=(40, 44, 36))
    return tmp_path / "in"


def _synthesizer(predictor=None) -> Synthesizer:
    predictor = predictor or FirstCondition(lambda target: DEFAULT_INTENSITY_RATIOS[target])
    return Synthesizer(predictor, progress=False)


def _dead_pid() -> int:
    """A process id that no process has now (taken from a child that has exited)."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_a_stop_inside_a_write_keeps_finished_cases_and_leaves_nothing_of_the_one_cut_short(
    three_cases, tmp_path, monkeypatch
):
    """SIGTERM arrives while the second case's bytes are on disk under the temporary name, before the
    rename: the first case stays whole, the second has no file under any name, the third is not begun,
    and the report says the run was interrupted and lists the two cases not run."""
    output, report = tmp_path / "out", tmp_path / "report.json"
    real_fsync = os.fsync
    writes: list[int] = []

    def fsync_then_stop_on_the_second_write(fd: int) -> None:
        real_fsync(fd)
        writes.append(fd)
        if len(writes) == 2:
            assert any(p.name.startswith(TEMP_PREFIX) for p in output.iterdir())  # inside the write
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "fsync", fsync_then_stop_on_the_second_write)
    batch = run_batch(discover(three_cases), _synthesizer(), output, report=report)

    assert len(writes) == 2
    assert batch.exit_code == ExitCode.TERMINATED
    assert [p.name for p in output.iterdir()] == [f"{CASES[0]}-t2f.nii.gz"]
    assert nib.load(output / f"{CASES[0]}-t2f.nii.gz").get_fdata().shape == (40, 44, 36)
    saved = json.loads(report.read_text())
    assert saved["interrupted"] is True
    # the cases the stop left are listed: the one it cut short, then the one never begun
    assert [(c["case"], c["status"]) for c in saved["cases"]] == [
        (CASES[0], "written"),
        (CASES[1], "not run"),
        (CASES[2], "not run"),
    ]
    assert saved["cases"][1]["message"].startswith("stopped by SIGTERM while it was synthesised")
    assert saved["cases"][2]["message"].startswith("not started: the run was stopped by SIGTERM")
    assert saved["summary"] == {"written": 1, "skipped": 0, "failed": 0, "not_run": 2}
    # the stop that has begun ends with its report: a repeated signal no longer stops this process
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN


def test_the_next_run_removes_the_temporary_a_killed_run_left_and_no_one_elses(three_cases, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    killed = output / f"{TEMP_PREFIX}{_dead_pid()}.{HOST}.abc123.tmp"
    killed.write_bytes(b"half an image")
    live = output / f"{TEMP_PREFIX}1.{HOST}.def456.tmp"  # pid 1 is alive: another run's write in progress
    live.write_bytes(b"being written")
    batch = run_batch(discover(three_cases), _synthesizer(), output)
    assert batch.exit_code == ExitCode.OK
    assert not killed.exists()
    assert live.read_bytes() == b"being written"
    assert sorted(p.name for p in output.iterdir() if p != live) == [f"{c}-t2f.nii.gz" for c in CASES]


class _WaitsForTheNextLoad(FirstCondition):
    """Synthesises the first case only once the second has been loaded (or gives up after a while)."""

    def __init__(self, second_loaded: threading.Event, patience: float) -> None:
        super().__init__(lambda target: DEFAULT_INTENSITY_RATIOS[target])
        self.second_loaded = second_loaded
        self.patience = patience
        self.saw_second_loaded: list[bool] = []

    def predict(self, images, target, generator=None, progress=None):
        patience = 0 if self.saw_second_loaded else self.patience
        self.saw_second_loaded.append(self.second_loaded.wait(timeout=patience))
        return super().predict(images, target, generator, progress)


@pytest.mark.parametrize("prefetch", [True, False])
def test_the_next_case_is_read_on_a_background_thread_while_this_one_is_synthesised(
    three_cases, tmp_path, monkeypatch, prefetch
):
    loads: list[tuple[str, str]] = []
    second_loaded = threading.Event()
    real_load = synthesize_module.Synthesizer.load

    def recording_load(self, case, grid_of=None):
        loaded = real_load(self, case, grid_of)
        loads.append((case.id, threading.current_thread().name))
        if case.id == CASES[1]:
            second_loaded.set()
        return loaded

    monkeypatch.setattr(synthesize_module.Synthesizer, "load", recording_load)
    # read one by one, the second case cannot load while the first waits: no point waiting then
    predictor = _WaitsForTheNextLoad(second_loaded, patience=20 if prefetch else 0)
    batch = run_batch(discover(three_cases), _synthesizer(predictor), tmp_path / "out", prefetch=prefetch)

    assert batch.exit_code == ExitCode.OK
    assert [case for case, _ in loads] == list(CASES)
    threads = [thread for _, thread in loads]
    if prefetch:
        assert predictor.saw_second_loaded[0] is True  # case 2 was in memory before case 1 was synthesised
        assert all(t.startswith("brasyn-prefetch") for t in threads)
    else:
        assert predictor.saw_second_loaded[0] is False
        assert threads == [threading.main_thread().name] * 3
    outputs = sorted((tmp_path / "out").iterdir())
    assert len(outputs) == 3 and all(np.isfinite(nib.load(p).get_fdata()).all() for p in outputs)


class _SwallowsTheStop(torch.nn.Module):
    """A denoiser whose third call receives SIGTERM inside a library's ``except BaseException`` (as a
    ``__del__`` or a weakref callback would lose it): the handler's exception never reaches the batch."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # the handler runs between two bytecodes of this loop
                    pass
            except BaseException:  # what such a library does
                pass
        return self.model(x, t)


def test_a_stop_whose_exception_a_library_swallowed_still_ends_the_case_at_the_next_step(
    three_cases, tmp_path, tiny_weights
):
    predictor = DiffusionPredictor(WeightStore(tiny_weights), torch.device("cpu"), Sampling("ddim", 20))
    wrapped = _SwallowsTheStop(predictor.model_for(Modality.T2F))
    predictor._models[Modality.T2F] = wrapped
    batch = run_batch(discover(three_cases), _synthesizer(predictor), tmp_path / "out")
    assert batch.exit_code == ExitCode.TERMINATED
    assert wrapped.calls == 3  # not the 20 steps of the case, nor the cases after it
    assert list((tmp_path / "out").iterdir()) == []
    assert [r.status for r in batch.results] == ["not run"] * 3
