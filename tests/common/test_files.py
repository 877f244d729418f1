"""The permissions of what brasyn writes follow the umask, which is read without ever being changed, so a
file another thread creates meanwhile cannot get looser permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from brasyn.common.files import atomic_write, current_umask, permitted_mode

LINUX_STATUS = Path("/proc/self/status")


@pytest.mark.skipif(
    not LINUX_STATUS.exists() or "Umask:" not in LINUX_STATUS.read_text(),
    reason="the system does not report the umask in /proc/self/status",
)
def test_the_umask_is_read_without_being_changed(monkeypatch):
    previous = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("os.umask called: the umask was changed"))
        assert current_umask() == 0o027
        assert permitted_mode() == 0o640
    finally:
        monkeypatch.undo()
        os.umask(previous)


def test_files_written_while_another_thread_asks_for_the_mode_keep_the_umask(tmp_path):
    # a writer thread creates files with plain open() while the main thread publishes atomically, as the
    # read-ahead thread and the batch do; under umask 077 nothing may come out readable by others
    script = f"""
import os, sys, threading
sys.setswitchinterval(1e-6)  # switch threads often, as a busy process does
from pathlib import Path
from brasyn.common.files import atomic_write, permitted_mode
os.umask(0o077)
root = Path({str(tmp_path)!r})
stop = threading.Event()
def create():
    i = 0
    while not stop.is_set():
        with open(root / f"plain-{{i}}", "wb"):
            pass
        i += 1
thread = threading.Thread(target=create)
thread.start()
for i in range(20):
    atomic_write(root / f"atomic-{{i}}", lambda f: f.write(b"x"), durable=False)
    for _ in range(5000):
        permitted_mode()
stop.set()
thread.join()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {0o600}, [oct(m) for m in modes]


def test_without_proc_the_umask_is_still_right_and_restored(monkeypatch, tmp_path):
    real_open = open

    def no_proc(path, *args, **kwargs):
        if str(path) == "/proc/self/status":
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", no_proc)
    previous = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        assert os.umask(0o022) == 0o022  # put back as it was
        atomic_write(tmp_path / "f", lambda f: f.write(b"x"), durable=False)
        assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644
    finally:
        os.umask(previous)
