"""What a person watching a batch sees: a bar for the whole batch (cases, elapsed, time left) on a terminal
and no bar at all in a log file; after Ctrl-C or SIGTERM, the cases that did not run, counted and listed."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import jsonschema
import pytest

from tests.helpers import make_case

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "report.schema.json").read_text())


def _command(inputs: Path, output: Path, weights: Path, *extra: str) -> list[str]:
    return [
        *(sys.executable, "-m", "brasyn", "--input", str(inputs), "--output", str(output)),
        *("--weights", str(weights), "--device", "cpu", "--threads", "1", *extra),
    ]


def _cases(folder: Path, count: int) -> Path:
    for i in range(count):
        make_case(folder, f"c{i}", shape=(32, 32, 32), seed=i)
    return folder


def _read_all(fd: int, proc: subprocess.Popen, timeout: float = 180) -> bytes:
    """Everything the child writes to the terminal ``fd`` until it exits."""
    out, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_a_terminal_gets_a_batch_bar_with_elapsed_and_eta_and_a_log_file_gets_no_bar(tmp_path, tiny_weights):
    inputs = _cases(tmp_path / "in", 2)
    fast = ("--sampler", "x0", "--steps", "1")
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 160, 0, 0))  # a terminal's size
    try:
        proc = subprocess.Popen(
            _command(inputs, tmp_path / "tty", tiny_weights, *fast),
            stdout=subprocess.DEVNULL,
            stderr=child,
            cwd=ROOT,
        )
        os.close(child)
        child = -1
        seen = _read_all(main, proc).decode(errors="replace")
        assert proc.wait(timeout=60) == 0, seen
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)
    # the batch bar: cases done of the share, the time since the start and the time left
    assert re.search(r"batch: +\d+%\|.*\| [012]/2 cases \[\d\d:\d\d elapsed, ETA [?0-9:]+\]", seen), seen
    assert "c0 t2f" in seen  # the steps of the case being sampled, below it

    log = tmp_path / "run.log"
    with log.open("wb") as handle:
        done = subprocess.run(
            _command(inputs, tmp_path / "file", tiny_weights, *fast),
            stdout=subprocess.DEVNULL,
            stderr=handle,
            cwd=ROOT,
            timeout=180,
        )
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "cases [" not in text and "%|" not in text  # no frames of any bar
    assert "[written] c1 (case 2 of 2)" in text  # the log lines say how far it came


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)],  # one fast, one slow
)
@pytest.mark.slow
def test_a_stop_counts_and_lists_the_cases_not_run(tmp_path, tiny_weights, signum, code):
    inputs = _cases(tmp_path / "in", 4)
    report = tmp_path / "report.json"
    cmd = _command(inputs, tmp_path / "out", tiny_weights, "--sampler", "ddim", "--steps", "120")
    proc = subprocess.Popen(
        [*cmd, "--no-progress", "--report", str(report)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    seen, deadline = "", time.time() + 180
    while time.time() < deadline and "[written] c0" not in seen:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    time.sleep(1.0)  # the second case is being sampled (each takes some seconds)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode == code, err
    name = signal.Signals(signum).name
    written = sorted(p.name.split("-")[0] for p in (tmp_path / "out").iterdir())
    assert written and len(written) < 4, err
    left = [f"c{i}" for i in range(4) if f"c{i}" not in written]
    summary = f"{len(written)} written, 0 skipped, 0 failed, {len(left)} not run: stopped by {name}"
    assert summary in err, err
    # the table lists every case of the batch, the ones not run with why
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert sorted(rows) == ["c0", "c1", "c2", "c3"], out
    for case in left:
        assert re.match(rf"{case} +not run +t2f +0\.0 +", rows[case]), out
    assert f"stopped by {name} while it was synthesised" in rows[left[0]]
    assert all(f"not started: the run was stopped by {name}" in rows[c] for c in left[1:])
    saved = json.loads(report.read_text())
    jsonschema.validate(saved, SCHEMA)
    assert saved["summary"] == {"written": len(written), "skipped": 0, "failed": 0, "not_run": len(left)}
    assert [c["case"] for c in saved["cases"] if c["status"] == "not run"] == left
