"""The container forms' first act: a run started as root writes as the owner of its output folder.

Called by the main job and MLCube's ``infer`` once their arguments are read and before any case is, so
that every file the run writes belongs to the owner of OUT (:mod:`brasyn.common.identity` decides).
``brasyn demo`` and ``brasyn doctor`` run as they were started: the demo writes where its user asked, and
the doctor reports what a run would do (its user check names the switch) without making it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from brasyn.common.identity import Identity, become, choose_identity, folder_owner
from brasyn.common.runtime import writable_cache_environment

__all__ = ["run_as_output_owner"]

log = logging.getLogger(__name__)


def run_as_output_owner(output: Path) -> Identity | None:
    """Switch to the uid and gid owning ``output`` where this process is root and that owner is not;
    return the identity taken, None where the process stays as started (not root, a root-owned or a
    missing output folder). The caches are pointed anew at writable places, since root's home is not."""
    owner_uid, owner_gid = folder_owner(output)
    identity = choose_identity(os.geteuid(), owner_uid, owner_gid)
    if identity is None:
        return None
    become(identity)
    os.environ.update(writable_cache_environment())
    log.info(
        "started as root: running as uid %d, gid %d, the owner of the output folder %s, so that its "
        "files belong to that owner",
        identity.uid,
        identity.gid,
        output,
    )
    return identity
