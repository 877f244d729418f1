"""One writer at a time in a case cache: two ``prepare`` runs (or two trainings with ``--data`` sharing a
cache) take turns instead of removing each other's temporary files and entries.

The lock is an ``flock`` on a file in the cache, which the kernel releases when its holder ends however it
ends, so a killed run never leaves the cache locked. The holder removes the file when it is done, so a
finished cache holds its entries alone; a run that was waiting on the removed file notices and locks the
new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_NAME", "CacheLock", "NotWritable"]

log = logging.getLogger("brasyn.cache")

LOCK_NAME = ".brasyn-prepare.lock"

NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


class NotWritable(OSError):
    """The cache folder cannot be written by this process (read-only mount, no permission)."""


class CacheLock:
    """``with CacheLock(cache):`` waits for any other writer of ``cache`` to finish, then holds the cache
    until the block ends. :class:`NotWritable` when the lock file cannot be made there."""

    def __init__(self, cache: Path) -> None:
        self.path = cache / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> CacheLock:
        waited = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno in NOT_WRITABLE:
                    raise NotWritable(exc.errno, exc.strerror, str(self.path)) from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log.warning(
                        "another prepare (process %s) is writing into %s: waiting for it to finish",
                        _holder(fd),
                        self.path.parent,
                    )
                    waited = True
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file as it finished: lock the one there now
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):  # while still locked: a waiter then sees a removed file
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        mine, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip() or "unknown"
    except (OSError, UnicodeDecodeError):
        return "unknown"
