"""``prepare`` when things go wrong for real: a disk that fills up, a read-only cache, two runs into one
cache, Ctrl-C and SIGTERM with workers, a worker killed, and the naming rules of training data."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from brasyn.commands.train import main as train_main
from brasyn.train import cache as cache_module
from brasyn.train.cache import load_entries, prepare_cache
from brasyn.train.training_data import find_training_cases
from tests.helpers import make_case
from tests.train.faults import children, remount_read_only, session_processes, start, tmpfs

ALL = ("t1n", "t1c", "t2w", "t2f")
SMALL = (40, 48, 36)
"""A phantom whose entry is 2.1 MB (its model space is 64x64x64)."""


def _cases(data: Path, count: int, shape=SMALL) -> Path:
    for i in range(count):
        make_case(data, f"c{i:02d}", ALL, seed=i, shape=shape)
    return data


def _prepare(data: Path, cache: Path, *extra: str) -> list[str]:
    return ["prepare", "--data", str(data), "--cache", str(cache), "--no-progress", *extra]


def _leftovers(cache: Path) -> list[str]:
    """Anything in the cache that is not a complete entry (an array and its JSON)."""
    names = {p.name for p in cache.iterdir()}
    whole = {Path(n).stem for n in names if n.endswith(".json") and Path(n).stem + ".npy" in names}
    return sorted(names - {f"{stem}{suffix}" for stem in whole for suffix in (".json", ".npy")})


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_stops_prepare_at_the_first_case_it_cannot_write(tmp_path, capsys, workers):
    data = _cases(tmp_path / "data", 6)
    with tmpfs(tmp_path / "cache", "5m") as cache:  # room for two entries
        code = train_main(_prepare(data, cache, "--workers", workers))
        err = capsys.readouterr().err
        assert code == 2
        assert err.count(f"the disk of the cache {cache} is full (No space left on device)") == 1
        assert "could not be prepared" not in err and "Traceback" not in err
        ids = sorted(e.id for e in load_entries(cache))
        # one at a time the third case finds the disk full; two at a time, either of two cases may
        assert ids == ["c00", "c01"] if workers == "1" else 1 <= len(ids) <= 2
        assert _leftovers(cache) == []  # nothing partial, no lock


def test_a_read_only_cache_is_refused_before_any_case_is_read(tmp_path, capsys):
    data = _cases(tmp_path / "data", 2)
    broken = make_case(data, "broken", ALL, seed=9, shape=SMALL)
    broken["t2w"].write_bytes(b"not an image")  # read, it would be reported
    with tmpfs(tmp_path / "ro", "5m", read_only=True) as mount:
        for cache in (mount, mount / "cache"):  # the folder itself, or one to make on the mount
            assert train_main(_prepare(data, cache, "--workers", "2")) == 2
            err = capsys.readouterr().err
            assert f"the cache folder {cache} cannot be written (Read-only file system)" in err
            assert "broken" not in err and "could not be prepared" not in err and "Traceback" not in err


def test_a_read_only_cache_that_is_up_to_date_is_used_as_it_is(tmp_path, capsys):
    data = _cases(tmp_path / "data", 2)
    with tmpfs(tmp_path / "cache", "10m") as cache:
        assert train_main(_prepare(data, cache)) == 0
        remount_read_only(cache)
        assert train_main(_prepare(data, cache)) == 0
        assert "2 already up to date" in capsys.readouterr().err


def test_two_prepares_into_one_cache_take_turns(tmp_path, caplog, monkeypatch):
    """The first run is held while an entry's temporary file is open; the second, started then, must not
    remove that file or write beside it, and both end with every entry complete."""
    data = _cases(tmp_path / "data", 3)
    cache = tmp_path / "cache"
    cases = find_training_cases([data])
    writing, go_on = threading.Event(), threading.Event()
    original = np.lib.format.write_array

    def held(handle, array, **kwargs):
        if threading.current_thread().name == "first" and not writing.is_set():
            writing.set()
            go_on.wait(60)
        return original(handle, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", held)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = prepare_cache(cases, cache, progress=False)
        except Exception as exc:
            results[name] = exc

    first = threading.Thread(target=run, args=("first",), name="first")
    first.start()
    assert writing.wait(60) and list(cache.glob("*.part"))
    second = threading.Thread(target=run, args=("second",), name="second")
    second.start()
    time.sleep(1.5)  # long enough for the second to clean the cache or prepare a case, were it let
    go_on.set()
    first.join(60)
    second.join(60)
    one, two = results["first"], results["second"]
    assert not isinstance(one, Exception) and not isinstance(two, Exception), results
    assert one.errors == [] and two.errors == []
    assert sorted(one.prepared) == ["c00", "c01", "c02"] and sorted(two.kept) == ["c00", "c01", "c02"]
    assert "another prepare" in caplog.text
    assert sorted(e.id for e in load_entries(cache)) == ["c00", "c01", "c02"]
    assert _leftovers(cache) == []


def _wait_for_entries(cache: Path, count: int, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while len(list(cache.glob("*.json"))) < count:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("signum", "group", "status"), [(signal.SIGINT, True, 130), (signal.SIGTERM, False, 143)]
)
def test_a_stop_ends_prepare_and_its_workers_at_once(tmp_path, signum, group, status):
    """Ctrl-C reaches the whole process group, a job system's SIGTERM may reach the main process alone:
    either way the run ends within seconds, its workers with it, and writes nothing more."""
    data = _cases(tmp_path / "data", 12, shape=(72, 80, 64))
    cache = tmp_path / "cache"
    proc = start(_prepare(data, cache, "--workers", "2"))
    _wait_for_entries(cache, 2, proc)
    at_signal = len(list(cache.glob("*.json")))
    (os.killpg if group else os.kill)(proc.pid, signum)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert time.time() - sent < 10
    time.sleep(0.5)
    assert session_processes(proc.pid) == [], "workers outlived the run"
    assert len(list(cache.glob("*.json"))) <= at_signal + 2  # at most the cases being renamed then
    assert _leftovers(cache) == [] and "Traceback" not in err
    assert len(load_entries(cache)) == len(list(cache.glob("*.json")))


def test_a_killed_worker_loses_its_case_alone(tmp_path):
    """The out-of-memory killer at an arbitrary moment: the case its worker held is reported lost and
    absent, or (killed between writing its entry and saying so) kept; every other case is prepared."""
    data = _cases(tmp_path / "data", 6, shape=(72, 80, 64))
    cache = tmp_path / "cache"
    proc = start(_prepare(data, cache, "--workers", "2"))
    _wait_for_entries(cache, 1, proc)
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer does
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "BrokenProcessPool" not in err
    lost = [line for line in err.splitlines() if "its prepare worker was killed by SIGKILL" in line]
    lost_cases = [line.split("ERROR ", 1)[1].split(":", 1)[0] for line in lost if "ERROR " in line]
    kept_after_writing = [line for line in lost if "after writing it: kept" in line]
    assert len(lost) == 1, err  # one worker died, one line says so: lost or kept
    assert proc.returncode == (1 if lost_cases else 0), err
    ids = sorted(e.id for e in load_entries(cache))
    assert ids == sorted(f"c{i:02d}" for i in range(6) if f"c{i:02d}" not in lost_cases)
    assert len(lost_cases) + len(kept_after_writing) == 1
    assert _leftovers(cache) == []
    assert session_processes(proc.pid) == []


def _killed_while_preparing(victim: str, after_writing: bool):
    """``prepare_case`` whose worker is SIGKILLed on ``victim``: before it writes anything, or after its
    entry is in place but before the result goes back (the workers are forked: they see this patch)."""
    real = cache_module.prepare_case

    def prepare(case, cache):
        if case.id == victim and not after_writing:
            os.kill(os.getpid(), signal.SIGKILL)
        done = real(case, cache)
        if case.id == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return done

    return prepare


@pytest.mark.parametrize("after_writing", [False, True], ids=["before-writing", "after-writing"])
def test_a_worker_killed_before_its_entry_loses_the_case_and_after_it_keeps_it(
    tmp_path, monkeypatch, caplog, after_writing
):
    data = _cases(tmp_path / "data", 4)
    cache = tmp_path / "cache"
    monkeypatch.setattr(cache_module, "prepare_case", _killed_while_preparing("c01", after_writing))
    caplog.set_level("INFO", logger="brasyn.cache")
    result = prepare_cache(find_training_cases([data]), cache, workers=2, progress=False)
    ids = sorted(e.id for e in load_entries(cache))
    if after_writing:
        assert result.errors == [] and sorted(result.prepared) == ["c00", "c01", "c02", "c03"]
        assert ids == ["c00", "c01", "c02", "c03"]
        assert "c01: its prepare worker was killed by SIGKILL after writing it: kept" in caplog.text
    else:
        assert [e.case for e in result.errors] == ["c01"] and sorted(result.prepared) == ["c00", "c02", "c03"]
        assert (
            "killed by SIGKILL" in result.errors[0].message and "fewer --workers" in result.errors[0].message
        )
        assert ids == ["c00", "c02", "c03"]
    assert _leftovers(cache) == []


def test_training_data_has_its_own_naming_rules_and_words(tmp_path, capsys):
    """Two complete cases whose files share one name prefix are two training cases (only inference
    writes an output named after it); an incomplete case is skipped in training's words."""
    data = tmp_path / "data"
    for i, case in enumerate(("A", "B")):
        make_case(data, case, ALL, seed=i, shape=SMALL, pattern="brain-{m}.nii.gz")
    make_case(data, "partial", ("t1n", "t1c", "t2w"), seed=5, shape=SMALL)
    assert train_main(_prepare(data, tmp_path / "cache")) == 0
    err = capsys.readouterr().err
    assert [e.id for e in load_entries(tmp_path / "cache")] == ["A", "B"]
    assert "skipping partial: it holds t1n, t1c, t2w but no t2f; training needs all four contrasts" in err
    assert "--target" not in err and "output" not in err
