"""What is known of the released cWDM checkpoints, and whether a checkpoint is one of them.

The released files live in the Hub repository :data:`RELEASE_REPO`, one per target contrast under the
names of :data:`brasyn.weights.official.OFFICIAL_NAMES`. A checkpoint is called the *released file* only
on evidence: its sha256 equals one pinned here (:data:`RELEASED_SHA256`), or one the Hub published for that
file name when ``fetch-official`` downloaded it (recorded in the manifest entry as ``published_sha256``,
with the commit). Without either, brasyn says it cannot tell; it never infers release from a file name or
from shapes alone. Architecture is judged separately (:func:`is_official_architecture`): a file of another
size under a released name is not "official".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from brasyn.data.modalities import Modality
from brasyn.model.unet import PRESETS, DenoiserConfig
from brasyn.weights.manifest import CheckpointInfo

__all__ = [
    "RELEASED_SHA256",
    "RELEASE_COMMIT",
    "RELEASE_REPO",
    "Release",
    "ReleaseCheck",
    "default_revision",
    "is_official_architecture",
    "is_sha256",
    "release_check",
    "released_sha256",
]

RELEASE_REPO = "pfriedri/cwdm"
"""The Hub model repository of the released checkpoints (linked from the official code's README)."""

RELEASE_COMMIT: str | None = None
"""The Hub commit the released files are fetched from by default, once known. None: the repository's
``main``, resolved to a commit at download time and recorded, so that ``--revision COMMIT`` repeats that
download exactly. (No commit of the repository is on record here: fill this in from the commit a
``fetch-official`` run prints, together with :data:`RELEASED_SHA256`.)"""

RELEASED_SHA256: dict[Modality, str] = {}
"""Target contrast -> sha256 of the released checkpoint for it. Empty while no digest of the released
files is on record; every ``fetch-official`` run prints the digests the Hub published, which belong here."""

_SHA256 = re.compile(r"[0-9a-f]{64}")


def released_sha256(target: Modality) -> str | None:
    """The pinned sha256 of the released checkpoint for ``target``, None where none is on record."""
    return RELEASED_SHA256.get(target)


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 in lower-case hex (as the Hub publishes for large files)."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def default_revision() -> str:
    """The Hub revision ``fetch-official`` takes when none is given."""
    return RELEASE_COMMIT or "main"


def is_official_architecture(config: DenoiserConfig) -> bool:
    """Whether a denoiser has exactly the size of the released models."""
    return config == PRESETS["official"]


class Release(str, Enum):
    """Whether a checkpoint is the released file for its contrast."""

    RELEASED = "released file"
    NOT_RELEASED = "not the released file"
    UNKNOWN = "release unproven"


@dataclass(frozen=True)
class ReleaseCheck:
    """The answer and what it rests on (printed together: ``released file (sha256 pinned in brasyn)``)."""

    state: Release
    basis: str

    def __str__(self) -> str:
        return f"{self.state.value} ({self.basis})"


def release_check(info: CheckpointInfo, sha256: str | None = None) -> ReleaseCheck | None:
    """Whether the checkpoint ``info`` describes (its file's digest ``sha256``, by default the recorded
    one) is the released file for its target; None for checkpoints in brasyn's own format, which no
    release contains."""
    if info.format != "official":
        return None
    digest = sha256 or info.sha256
    pinned = RELEASED_SHA256.get(info.target)
    other = next((t for t, d in RELEASED_SHA256.items() if d == digest and t != info.target), None)
    if other is not None:
        return ReleaseCheck(
            Release.NOT_RELEASED,
            f"it is the released {other.value} checkpoint, listed here for {info.target.value}",
        )
    if pinned is not None:
        if digest == pinned:
            return ReleaseCheck(Release.RELEASED, "sha256 pinned in brasyn")
        return ReleaseCheck(Release.NOT_RELEASED, f"the released file has sha256 {pinned[:12]}...")
    published = info.provenance.get("published_sha256")
    if is_sha256(published):
        commit = str(info.provenance.get("revision", "?"))[:12]
        where = f"{info.provenance.get('repository', RELEASE_REPO)}@{commit}"
        if digest == published:
            return ReleaseCheck(Release.RELEASED, f"sha256 the Hub published at {where}, recorded by fetch")
        return ReleaseCheck(
            Release.NOT_RELEASED, f"the Hub published sha256 {str(published)[:12]}... at {where}"
        )
    return ReleaseCheck(
        Release.UNKNOWN,
        "no sha256 of the released file is on record: fetch it with python -m brasyn.weights fetch-official",
    )
