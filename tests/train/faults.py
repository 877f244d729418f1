"""Real faults for the tests of training and its cache: small tmpfs disks (full, read-only) and the
processes a run leaves behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    """``folder`` as a tmpfs disk of ``size`` (e.g. ``5m``): a disk that really fills up, or a read-only
    mount (root writes through chmod, not through a read-only mount). Skips where mounting is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root with mount rights"
        )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def remount_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def _stat(pid: str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def session_processes(session: int) -> list[int]:
    """The live (not zombie) processes of a session: a command started with ``start_new_session`` and
    every process it started, orphans included."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            # fields: state, ppid, pgrp, session, ...
            if fields is not None and fields[0] != "Z" and int(fields[3]) == session:
                found.append(int(entry))
    return found


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if fields is not None and fields[0] != "Z" and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def start(args: list[str]) -> subprocess.Popen:
    """``python -m brasyn.train ARGS`` in a session of its own, its stderr captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "brasyn.train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
