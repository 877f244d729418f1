"""Download the released cWDM checkpoints from the Hub into a weights folder, with proof of what came.

All four files are taken from one commit: the revision asked for (a branch, tag or commit; by default
:func:`~brasyn.weights.release.default_revision`) is resolved once, and every file is fetched at that
commit. Each download lands in a private staging folder inside the target folder and is checked before
anything is moved: its bytes against the sha256 the Hub publishes for the file (a mismatch is a damaged
download) and against :data:`~brasyn.weights.release.RELEASED_SHA256` where a digest is pinned; then its
shapes, as ``import-official`` checks them. Only then are the files moved in under their released names
and entered in the manifest, with the repository, the commit, the published sha256 and the time of the
download. A failure leaves the folder as it was; a file already in the folder with the published digest
is not downloaded again.

``huggingface_hub`` does the transfer (proxies, ``HF_TOKEN``, ``HF_ENDPOINT`` mirrors); it is imported
only here, so nothing else needs it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from brasyn.common.errors import WeightsError
from brasyn.common.files import sha256_file
from brasyn.data.modalities import Modality
from brasyn.model.unet import DenoiserConfig
from brasyn.weights.manifest import CheckpointInfo, _existing_manifest, _now
from brasyn.weights.official import OFFICIAL_NAMES, check_official, import_official
from brasyn.weights.release import RELEASE_REPO, default_revision, is_sha256, released_sha256

__all__ = ["FetchedFile", "fetch_official"]

logger = logging.getLogger("brasyn.fetch")

_INSTALL = "pip install huggingface_hub (or pip install 'brasyn[fetch]')"


@dataclass(frozen=True)
class FetchedFile:
    """One released file as it arrived: its name, the contrast, where it lies now and its digests."""

    name: str
    target: Modality
    path: Path
    sha256: str
    published_sha256: str | None
    commit: str


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError as exc:
        raise WeightsError(f"fetch-official needs the package huggingface_hub: {_INSTALL}.") from exc
    return huggingface_hub


def _unreachable(name: str, url: str, exc: BaseException) -> WeightsError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return WeightsError(
        f"Could not download {name} from {url}: {reason}. Check the network (a proxy through HTTPS_PROXY, "
        f"a mirror through --endpoint or HF_ENDPOINT, a token through HF_TOKEN for a gated copy), or "
        f"download the four files by hand from https://huggingface.co/{RELEASE_REPO} and run "
        "python -m brasyn.weights import-official DOWNLOADS --out DIR."
    )


class _Hub:
    """The three calls made to the Hub, each turning its failures into one WeightsError."""

    def __init__(self, endpoint: str | None, token: str | None) -> None:
        self.module = _hub()
        self.endpoint = endpoint
        self.token = token

    def url(self, name: str, revision: str) -> str:
        return str(self.module.hf_hub_url(RELEASE_REPO, name, revision=revision, endpoint=self.endpoint))

    def metadata(self, name: str, revision: str) -> Any:
        url = self.url(name, revision)
        try:
            return self.module.get_hf_file_metadata(url, token=self.token, endpoint=self.endpoint)
        except Exception as exc:  # the client raises many kinds (HTTP, connection, timeout, offline)
            raise _unreachable(name, url, exc) from exc

    def download(self, name: str, commit: str, folder: Path) -> Path:
        try:
            path = self.module.hf_hub_download(
                RELEASE_REPO,
                name,
                revision=commit,
                local_dir=folder,
                endpoint=self.endpoint,
                token=self.token,
            )
        except Exception as exc:
            raise _unreachable(name, self.url(name, commit), exc) from exc
        return Path(path)


def _check_digest(name: str, target: Modality, digest: str, published: str | None, url: str) -> None:
    if published is not None and digest != published:
        raise WeightsError(
            f"The download of {name} is damaged: its sha256 is {digest}, the Hub publishes {published} "
            f"for {url}. Run fetch-official again; nothing was written."
        )
    pinned = released_sha256(target)
    if pinned is not None and digest != pinned:
        raise WeightsError(
            f"{name} as served by {url} (sha256 {digest}) is not the released file, whose sha256 is "
            f"{pinned}: the repository has changed since the release. Pass --revision with the release's "
            "commit, or import the file deliberately with import-official; nothing was written."
        )


def _fetch_one(hub: _Hub, name: str, target: Modality, commit: str, out: Path, staging: Path) -> FetchedFile:
    """One released file, downloaded (unless ``out`` already holds it with the published digest) and
    checked; the returned path lies in ``staging`` when it still has to be moved in."""
    meta = hub.metadata(name, commit)
    published = meta.etag if is_sha256(meta.etag) else None
    present = out / name
    if published is not None and present.is_file() and sha256_file(present) == published:
        logger.info("%s is already in %s with the published sha256: not downloaded again", name, out)
        _check_digest(name, target, published, published, hub.url(name, commit))
        return FetchedFile(name, target, present, published, published, commit)
    logger.info("downloading %s (%s) from %s", name, target.value, hub.url(name, commit))
    path = hub.download(name, commit, staging)
    digest = sha256_file(path)
    _check_digest(name, target, digest, published, hub.url(name, commit))
    if published is None:
        logger.warning(
            "the Hub published no sha256 for %s (sha256 of the download: %s): it cannot be called the "
            "released file later",
            name,
            digest,
        )
    return FetchedFile(name, target, path, digest, published, commit)


def _refuse_replacing(out: Path, fetched: list[FetchedFile]) -> None:
    """Refuse to replace a different checkpoint the folder already holds for a target (under the released
    name, or listed in its manifest): it may be the only copy of other weights."""
    entries = _existing_manifest(out).get("checkpoints", {})
    for item in fetched:
        present = out / item.name
        if item.path != present and (present.exists() or present.is_symlink()):
            raise WeightsError(
                f"{present} already exists and is not the file the Hub serves (sha256 {item.sha256}); move "
                f"it away or fetch into another folder. Nothing was written."
            )
        entry = entries.get(item.target.value)
        if isinstance(entry, dict) and entry.get("sha256") not in (None, item.sha256):
            raise WeightsError(
                f"{out / 'manifest.json'} already lists another {item.target.value} checkpoint "
                f"({entry.get('file')}, sha256 {str(entry.get('sha256'))[:12]}...); fetch into an empty "
                "folder, or remove that entry first. Nothing was written."
            )


def _resolve(hub: _Hub, revision: str) -> str:
    """The commit ``revision`` names on the Hub (asked for with the first file)."""
    first = next(iter(OFFICIAL_NAMES))
    commit = hub.metadata(first, revision).commit_hash
    if not commit:
        raise WeightsError(
            f"{hub.url(first, revision)} did not say which commit it serves (no X-Repo-Commit header): is "
            "the endpoint a Hugging Face Hub or a mirror of one?"
        )
    if revision != commit:
        logger.info("revision %s of %s is commit %s", revision, RELEASE_REPO, commit)
    return str(commit)


def fetch_official(
    out: Path | str,
    *,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
) -> list[CheckpointInfo]:
    """Download the four released checkpoints into ``out`` and enter them in its manifest.

    ``revision`` is a branch, tag or commit of :data:`RELEASE_REPO` (default: the pinned commit, else
    ``main``); ``endpoint`` a Hub or mirror URL (default: ``HF_ENDPOINT``, else huggingface.co). Raises
    WeightsError, with ``out`` as it was, when any file cannot be downloaded or fails a check."""
    out = Path(out)
    asked = revision or default_revision()
    hub = _Hub(endpoint, token)
    out.mkdir(parents=True, exist_ok=True)
    _existing_manifest(out)  # a damaged manifest is refused before anything is downloaded
    commit = _resolve(hub, asked)
    if revision is None and asked == "main":
        logger.warning(
            "no release commit is pinned in this brasyn: fetching %s at main (commit %s); pass "
            "--revision %s to repeat exactly this download",
            RELEASE_REPO,
            commit,
            commit,
        )
    staging = Path(tempfile.mkdtemp(prefix=".brasyn-fetch-", dir=out))
    try:
        fetched = [
            _fetch_one(hub, name, target, commit, out, staging) for name, target in OFFICIAL_NAMES.items()
        ]
        configs: dict[Modality, DenoiserConfig] = {f.target: check_official(f.path) for f in fetched}
        _refuse_replacing(out, fetched)
        infos = []
        for item in fetched:
            final = out / item.name
            if item.path != final:
                os.replace(item.path, final)
            infos.append(
                import_official(
                    final,
                    None,
                    out,
                    config=configs[item.target],
                    provenance={
                        "command": "fetch-official",
                        "repository": RELEASE_REPO,
                        "revision": item.commit,
                        "revision_asked": asked,
                        "url": hub.url(item.name, item.commit),
                        "published_sha256": item.published_sha256,
                        "fetched": _now(),
                    },
                )
            )
        return infos
    finally:
        shutil.rmtree(staging, ignore_errors=True)
