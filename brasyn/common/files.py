"""Writing a file so that a reader sees the old one or the whole new one, never a part; and its sha256.

Every writer of brasyn (outputs, reports, previews, manifests, checkpoints, baselines, cache entries,
training states) goes through :func:`atomic_write`: a temporary beside the destination (same file system,
so the rename is atomic), the bytes flushed to disk, the umask's permissions, then one ``os.replace``. A
failure or a stop at any point removes the temporary and leaves the destination as it was.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from brasyn.common.errors import UsageError

__all__ = [
    "CHUNK",
    "NAME_MAX",
    "atomic_write",
    "current_umask",
    "long_name",
    "own_folder",
    "permitted_mode",
    "private_folder",
    "publish",
    "sha256_file",
    "write_problem",
]

_UMASK_LOCK = threading.Lock()

CHUNK = 1 << 20
"""Bytes read at a time when hashing."""
NAME_MAX = 255
"""Bytes one file or folder name may have (ext4, XFS, Btrfs, tmpfs, overlayfs; NTFS and APFS count 255
characters)."""


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux's
    ``/proc/self/status``): setting it to 0 and back, the only other way, leaves a moment in which a file
    another thread creates (the read-ahead of the next case, a worker) gets mode 0666. Elsewhere that way,
    under a lock, so at least brasyn's own threads cannot interleave and lose the umask."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        umask = os.umask(0o077)  # the briefest window is the least permissive one
        os.umask(umask)
    return umask


def permitted_mode() -> int:
    """``0o666`` less the umask: what ``open()`` would give a new file. mkstemp's 0600 would hide an
    output, a report or weights from a job system or a container running as another user."""
    return 0o666 & ~current_umask()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish(tmp: Path, path: Path, *, durable: bool = True) -> None:
    """Give the finished temporary ``tmp`` the umask's permissions and rename it to ``path``; with
    ``durable``, its bytes reach the disk first (a power cut then leaves the old file or the new one)."""
    if durable:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(tmp, permitted_mode())
    os.replace(tmp, path)


def atomic_write(
    path: Path,
    write: Callable[[BinaryIO], object],
    *,
    prefix: str | None = None,
    suffix: str = ".tmp",
    durable: bool = True,
    checksum: bool = False,
) -> str | None:
    """``write`` the contents into a temporary beside ``path`` (named ``prefix``, random letters,
    ``suffix``: a folder's clean-up of stale temporaries recognises its own), then :func:`publish` it.

    Returns the sha256 of what was written with ``checksum``, else None. ``durable=False`` skips the
    fsync, for large files that can be rebuilt (the case cache)."""
    fd, name = tempfile.mkstemp(prefix=prefix or f".{path.name}.", suffix=suffix, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        digest = sha256_file(tmp) if checksum else None
        publish(tmp, path, durable=durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def long_name(path: Path) -> str | None:
    """The first part of ``path`` longer than :data:`NAME_MAX` bytes, which no file system here can hold;
    None when every part fits. Asked before the path is touched: the system refuses such a name with
    ENAMETOOLONG wherever it is used, even in a mere existence check."""
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            return part
    return None


def write_problem(path: Path) -> str | None:
    """Why a file could not be written at ``path`` now, in words (``it is a folder``, ``Read-only file
    system`` ...), or None when it could. Asked at start-up, so that a report named on the command line
    fails before the work, not after it. A probe file is made and removed in the nearest folder that exists
    (the folders above ``path`` are made when it is written); nothing stays behind."""
    too_long = long_name(path)
    if too_long is not None:
        return f"the name {too_long[:40]}... is {len(os.fsencode(too_long))} bytes, more than {NAME_MAX}"
    try:
        if path.is_dir():
            return "it is a folder"
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            return f"{folder} is a file, not a folder"
        fd, probe = tempfile.mkstemp(prefix=".brasyn-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def own_folder(path: Path) -> Path:
    """``path`` as a folder of this user's: made (0700) where absent, then refused with a
    :class:`UsageError` where it is a link, not a folder, or another user's. A work folder in a place
    others may write (``/tmp``) could otherwise be a link another user planted, and brasyn would write
    into, or clear, that user's files."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(
            f"cannot create the folder {path}: {exc.strerror or exc}; choose another folder"
        ) from exc
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise UsageError(
            f"{path} is a symbolic link; brasyn writes only into folders it can trust, never through a "
            "link: remove the link or choose another folder"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{path} is not a folder; remove it or choose another folder")
    if info.st_uid != os.geteuid():
        raise UsageError(
            f"{path} belongs to another user (uid {info.st_uid}); brasyn writes only into this user's "
            "folders: remove it or choose another folder"
        )
    return path


def private_folder(path: Path) -> Path:
    """``path`` as this user's private work folder: its parents made where absent, itself an
    :func:`own_folder` that only this user may enter (0700), below folders that belong to this user or
    root and in which no other user may rename it (or a folder above it) and put a link in its place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        above = path.parent.resolve()
        for folder in (above, *above.parents):
            info = os.stat(folder)
            open_to_all = info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX
            if info.st_uid not in (0, os.geteuid()) or open_to_all:
                raise UsageError(
                    f"{folder} belongs to another user or may be changed by every user (uid {info.st_uid}, "
                    f"mode {stat.filemode(info.st_mode)}), so a work folder below it could be swapped for "
                    "another user's: choose another folder"
                )
    except OSError as exc:
        raise UsageError(
            f"cannot create the folder {path.parent}: {exc.strerror or exc}; choose another folder"
        ) from exc
    own_folder(path)
    os.chmod(path, 0o700)
    return path
