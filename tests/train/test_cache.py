"""The preprocessed case cache and the loader over it: the batches of the in-memory path within the
quantisation step, a killed prepare resumed, a bad case named while the rest are prepared."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from brasyn.commands.train import main as train_main
from brasyn.data.modalities import Modality
from brasyn.train.cache import SCALE, dequantise, load_entries, prepare_cache, quantise
from brasyn.train.loader import CacheDataset, StepBatches, decode, make_loader
from brasyn.train.training_data import TrainingSet, find_training_cases, load_training_case
from tests.helpers import linked_cache, make_case

ROOT = Path(__file__).resolve().parents[2]
ALL = ("t1n", "t1c", "t2w", "t2f")


@pytest.fixture(scope="module")
def real_cache(shared_dir, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("real-cache")
    result = prepare_cache(find_training_cases([shared_dir / "data" / "real"]), cache, 2, progress=False)
    assert not result.errors and len(result.prepared) == 4
    return cache


def test_quantisation_keeps_every_non_zero_voxel_within_one_step():
    values = np.array([0.0, 1e-9, 0.3 / SCALE, 0.5, 1.0 - 1e-7, 1.0], dtype=np.float32)
    q = quantise(values)
    assert q.dtype == np.uint16
    assert (q[1:] > 0).all() and q[0] == 0
    assert np.abs(dequantise(q) - values).max() <= 1.0 / SCALE


@pytest.mark.slow
def test_prepared_entries_give_the_in_memory_batches_within_the_quantisation_step(shared_dir, real_cache):
    """t1n is the fourth channel here: the cache (canonical order) must be permuted like the in-memory
    stack, whose conditions come first."""
    target = Modality.T1N
    cases = find_training_cases([shared_dir / "data" / "real"])
    memory = TrainingSet([load_training_case(c, target) for c in cases], (64, 64, 64), flip=True)
    entries = load_entries(real_cache)
    assert [e.id for e in entries] == sorted(c.id for c in cases)
    assert [c.id for c in memory.cases] == [e.id for e in entries]
    cached = CacheDataset(entries, target, (64, 64, 64), flip=True)
    assert cached.shapes == memory.shapes
    for a, b in zip(cached.brain_slices, memory.brain_slices, strict=True):
        np.testing.assert_array_equal(a, b)
    for rank in (0, 1):
        one, other = StepBatches(memory, 2, seed=3, rank=rank), StepBatches(cached, 2, seed=3, rank=rank)
        for step in range(6):
            (x, dx), (y, dy) = one[step], other[step]
            assert dx == dy
            assert x.shape == y.shape == (2, 4, 64, 64, 64)
            assert x.dtype == torch.float32 and y.dtype == torch.uint16
            assert (x - decode(y)).abs().max() <= 1.0 / SCALE
    whole = StepBatches(CacheDataset(entries, target), 1, seed=0)[0]
    drawn = StepBatches(TrainingSet(memory.cases), 1, seed=0)[0]
    assert whole[1] == drawn[1] and whole[0].shape == (1, 4, 224, 224, 160)
    assert (decode(whole[0]) - drawn[0]).abs().max() <= 1.0 / SCALE


def _copy_real(shared_dir: Path, dest: Path) -> Path:
    shutil.copytree(shared_dir / "data" / "real", dest, ignore=shutil.ignore_patterns("*.md"))
    return dest


@pytest.mark.slow
def test_a_killed_prepare_continues_where_it_stopped_and_never_uses_a_half_entry(shared_dir, tmp_path):
    data, cache = _copy_real(shared_dir, tmp_path / "data"), tmp_path / "cache"
    command = [sys.executable, "-m", "brasyn.train", "prepare", "--data", str(data), "--cache", str(cache)]
    proc = subprocess.Popen(
        [*command, "--no-progress"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list(cache.glob("*.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    done = {p.stem: p.stat().st_mtime_ns for p in cache.glob("*.json")}
    assert 1 <= len(done) < 4
    # what a kill while writing leaves: a temporary file, an array whose JSON never came
    missing = next(c.id for c in find_training_cases([data]) if c.id not in done)
    (cache / f"{missing}.npy.part").write_bytes(b"half")
    (cache / "removed-case.json.part").write_text("{")
    (cache / f"{missing}.npy").write_bytes(b"not an array")
    assert sorted(e.id for e in load_entries(cache)) == sorted(done)

    result = prepare_cache(find_training_cases([data]), cache, progress=False)
    assert sorted(result.kept) == sorted(done) and len(result.prepared) == 4 - len(done)
    assert {p.stem: p.stat().st_mtime_ns for p in cache.glob("*.json") if p.stem in done} == done
    assert not list(cache.glob("*.part"))
    entries = load_entries(cache)
    assert len(entries) == 4
    assert np.load(cache / f"{missing}.npy", mmap_mode="r").shape == entries[0].shape

    # a changed source is prepared again, the others kept
    changed = next(iter(done))
    source = next(f for f in (data / changed).iterdir())
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    result = prepare_cache(find_training_cases([data]), cache, progress=False)
    assert result.prepared == [changed] and len(result.kept) == 3


def test_a_corrupt_case_is_named_with_its_file_while_the_rest_are_prepared(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    for i in range(2):
        make_case(data, f"good{i}", ALL, seed=i, shape=(40, 48, 36))
    files = make_case(data, "bad", ALL, seed=7, shape=(40, 48, 36))
    files["t2w"].write_bytes(files["t2w"].read_bytes()[:200])
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    code = train_main(
        ["prepare", "--data", str(data), "--cache", str(cache), "--workers", "2", "--no-progress"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "bad" in err and "bad-t2w.nii.gz" in err
    assert sorted(p.name for p in cache.iterdir()) == ["good0.json", "good0.npy", "good1.json", "good1.npy"]
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before
    # the command that trains on --data skips the bad case with its reason and trains on the rest
    out = tmp_path / "w"
    args = ["--data", str(data), "--target", "t2f", "--out", str(out), "--config", "tiny", "--steps", "1"]
    assert train_main([*args, "--device", "cpu", "--no-progress", "--patch", "32", "32", "32"]) == 0
    assert "bad-t2w.nii.gz" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["checkpoints"]["t2f"]["provenance"]["data"]["cases"] == ["good0", "good1"]
    # a prepared case whose source is now broken loses its entry (not trained on from an old one)
    files = {p.name: p for p in (data / "good1").iterdir()}
    files["good1-t1n.nii.gz"].write_bytes(b"broken")
    assert train_main(["prepare", "--data", str(data), "--cache", str(cache), "--no-progress"]) == 1
    assert "good1-t1n.nii.gz" in capsys.readouterr().err
    assert [e.id for e in load_entries(cache)] == ["good0"]


def test_a_full_disk_stops_prepare_with_one_message_and_a_rerun_continues(tmp_path, capsys, monkeypatch):
    import errno

    data, cache = tmp_path / "data", tmp_path / "cache"
    for i in range(3):
        make_case(data, f"c{i}", ALL, seed=i, shape=(40, 48, 36))
    original = np.lib.format.write_array
    calls = []

    def write_array(handle, array, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second case's array: part of it written, then the disk is full
            handle.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(handle, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", write_array)
    prepare = ["prepare", "--data", str(data), "--cache", str(cache), "--no-progress"]
    assert train_main(prepare) == 2
    err = capsys.readouterr().err
    assert f"the disk of the cache {cache} is full (No space left on device) while preparing c1" in err
    assert err.count("is full") == 1  # not one error per remaining case
    assert sorted(p.name for p in cache.iterdir()) == ["c0.json", "c0.npy"]  # nothing partial
    monkeypatch.undo()
    assert train_main(prepare) == 0
    assert [e.id for e in load_entries(cache)] == ["c0", "c1", "c2"]
    assert "1 already up to date" in capsys.readouterr().err


def test_prepare_warns_when_the_cases_will_not_fit_on_the_cache_disk(tmp_path, capsys, monkeypatch):
    import brasyn.train.cache

    data, cache = tmp_path / "data", tmp_path / "cache"
    make_case(data, "c0", ALL, shape=(40, 48, 36))
    real = shutil.disk_usage
    monkeypatch.setattr(brasyn.train.cache.shutil, "disk_usage", lambda path: real(path)._replace(free=10**6))
    assert train_main(["prepare", "--data", str(data), "--cache", str(cache), "--no-progress"]) == 0
    assert "1 case(s) to prepare need about 0.1 GB" in capsys.readouterr().err
    assert [e.id for e in load_entries(cache)] == ["c0"]  # a warning: small cases still fit


def test_a_loader_with_workers_gives_the_batches_of_the_main_thread_from_a_thousand_entries(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    for i in range(3):
        make_case(data, f"c{i}", ALL, seed=i, shape=(40, 48, 36))
    prepare_cache(find_training_cases([data]), cache, progress=False)
    big = linked_cache(cache, tmp_path / "big", 1000)
    entries = load_entries(big)
    assert len(entries) == 1000 and entries[0].array.stat().st_nlink > 1
    batches = StepBatches(CacheDataset(entries, Modality.T2F, (32, 32, 32), flip=True), 2, seed=5, rank=1)
    threaded = [batches[s] for s in range(4, 10)]
    streamed = list(make_loader(batches, 4, 10, workers=2, pin_memory=False))
    assert len(streamed) == 6
    for (x, dx), (y, dy) in zip(threaded, streamed, strict=True):
        assert dx == dy
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    names = {d.split("@")[0] for _, draws in streamed for d in draws}
    assert len(names) >= 10 and all(n.startswith("gen-") for n in names)
    assert StepBatches(batches.source, 2, seed=5, rank=0)[4][1] != threaded[0][1]


def test_the_loader_benchmark_prints_its_rate_and_the_wait_per_step(tmp_path, capsys):
    from brasyn.commands.bench import main as bench_main

    data, cache = tmp_path / "data", tmp_path / "cache"
    make_case(data, "c0", ALL, seed=1, shape=(40, 48, 36))
    prepare_cache(find_training_cases([data]), cache, progress=False)
    out = tmp_path / "loader.json"
    args = ["loader", "--cache", str(cache), "--workers", "1", "--steps", "3", "--warmup", "1"]
    assert bench_main([*args, "--patch", "32", "32", "32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["entries"] == 1 and result["steps"] == 3 and result["workers"] == 1
    assert result["batch_shape"] == [1, 4, 32, 32, 32]
    assert result["samples_per_s"] > 0 and set(result["wait_ms"]) == {"mean", "median", "p95"}
    assert result["peak_rss_mib"]["main"] > 0
    assert bench_main(["loader", "--cache", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_quantisation_benchmark_states_the_error_of_the_stored_values(tmp_path, capsys):
    from brasyn.commands.bench import main as bench_main

    make_case(tmp_path / "data", "c0", ALL, seed=2, shape=(40, 48, 36))
    assert (
        bench_main(["quantisation", "--data", str(tmp_path / "data"), "--json", str(tmp_path / "q.json")])
        == 0
    )
    case = json.loads((tmp_path / "q.json").read_text())["cases"]["c0"]
    assert 0 < case["model_space_max_abs"] <= 1.0 / SCALE
    assert 0 < case["model_space_mean_abs"] <= 0.5 / SCALE + 1e-9
    assert case["restored_max_abs_of_p999"] <= 2.0 / SCALE
    assert case["loss_relative_difference"] < 1e-4 and case["loss_exact"] > 0
