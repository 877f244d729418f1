"""Which user a container run writes as: the owner of its output folder, whoever started it.

An image started without ``docker run -u`` runs as root; its outputs would then belong to root on the
host. Started so, a run takes the uid and gid of the output folder's owner before it reads any case, so
the files belong to whoever owns OUT (a root-owned OUT is written as root). Started with ``-u`` (the BraTS
orchestrator, MedPerf), a run keeps the user it was given. The decision is :func:`choose_identity`, pure;
:func:`become` applies it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Identity", "become", "choose_identity", "folder_owner"]


@dataclass(frozen=True)
class Identity:
    """A uid and gid to run as."""

    uid: int
    gid: int


def choose_identity(euid: int, owner_uid: int | None, owner_gid: int | None) -> Identity | None:
    """The identity to switch to, None to stay as started.

    Only root switches (any other user cannot, and was chosen by whoever started the run), and only to a
    folder that exists (``owner_uid`` None: the run creates it, as root) and that a user other than root
    owns (a root-owned output is written as root).
    """
    if euid != 0 or owner_uid is None or owner_gid is None or owner_uid == 0:
        return None
    return Identity(owner_uid, owner_gid)


def folder_owner(folder: Path) -> tuple[int, int] | tuple[None, None]:
    """The uid and gid owning ``folder``; (None, None) where it is missing or not a folder."""
    try:
        stat = folder.stat()
    except OSError:
        return None, None
    if not folder.is_dir():
        return None, None
    return stat.st_uid, stat.st_gid


def become(identity: Identity) -> None:
    """Switch this process to ``identity`` for good: supplementary groups dropped first (root's would
    otherwise stay), then the gid (which needs root), then the uid (after which nothing can be undone)."""
    os.setgroups([])
    os.setgid(identity.gid)
    os.setuid(identity.uid)
