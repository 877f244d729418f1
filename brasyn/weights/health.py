"""The weights folder a run would use, judged as :class:`~brasyn.common.health.Check` records for
``brasyn doctor``: whether it can be read, which contrasts it covers, each checkpoint's sha256 checked
again, what kind of weights they are (random, the bundled demo, trained, the official cWDM format), and
whether the baselines' ``baselines.json`` is there.

Reading only: every file is hashed and opened as tensors (:func:`~brasyn.weights.store.verify_folder`),
nothing is written.
"""

from __future__ import annotations

from pathlib import Path

from brasyn.common.errors import WeightsError
from brasyn.common.health import Check, Status
from brasyn.data.modalities import MODALITIES
from brasyn.weights.manifest import MANIFEST_NAME, CheckpointInfo
from brasyn.weights.release import Release, release_check
from brasyn.weights.store import UNRECORDED, WeightStore, verify_folder

__all__ = ["checkpoint_check", "weights_checks"]

BASELINES_FILE = "baselines.json"
"""The baselines' numbers (``--method linear``), beside the checkpoints."""
_REAL_WEIGHTS = (
    "fetch the official cWDM checkpoints (python -m brasyn.weights fetch-official --out WEIGHTS) or "
    "train your own (python -m brasyn.train), and pass --weights WEIGHTS"
)


def weights_checks(folder: Path) -> list[Check]:
    """The folder, then one check per checkpoint, then ``baselines.json``."""
    if folder.is_file() and folder.name == MANIFEST_NAME:
        folder = folder.parent  # the manifest names its folder, as --weights takes it
    try:
        store = WeightStore(folder)
    except (WeightsError, ValueError, OSError) as exc:
        return [Check("weights", Status.PROBLEM, f"{folder} cannot be used: {exc}", _REAL_WEIGHTS)]
    listed = "manifest.json" if (store.folder / MANIFEST_NAME).is_file() else "official file names"
    targets = [m.value for m in store.targets()]
    missing = [m.value for m in MODALITIES if m.value not in targets]
    detail = f"{store.folder} ({listed}): checkpoints for {', '.join(targets)}"
    checks = [
        Check(
            "weights",
            Status.WARNING,
            f"{detail}; none for {', '.join(missing)}: a case that lacks {' or '.join(missing)} fails",
            f"add them with python -m brasyn.weights import-official --target T FILE --out {store.folder}",
        )
        if missing
        else Check("weights", Status.OK, detail)
    ]
    try:
        checks += [checkpoint_check(info, state) for info, state in verify_folder(store.folder)]
    except (WeightsError, OSError) as exc:
        checks.append(Check("weights", Status.PROBLEM, f"{store.folder}: {exc}", _REAL_WEIGHTS))
    checks.append(_baselines_check(store.folder))
    return checks


def checkpoint_check(info: CheckpointInfo, state: str) -> Check:
    """One checkpoint: its verification ``state`` (as :func:`verify_folder` gives it) and its kind."""
    name = f"weights {info.target.value}"
    where = f"{info.file} (sha256 {info.sha256[:12]}...)"
    if state.startswith(UNRECORDED):
        return Check(
            name,
            Status.WARNING,
            f"{where}: {state}",
            "record the folder in a manifest: python -m brasyn.weights import-official DIR --out WEIGHTS",
        )
    if state != "OK":
        return Check(
            name,
            Status.PROBLEM,
            f"{where}: {state}",
            "copy the original file back, or import it again if the replacement is intended",
        )
    if info.quality == "random":
        return Check(
            name,
            Status.PROBLEM,
            f"{where} verified; RANDOM weights (python -m brasyn.weights init): they make noise, not images",
            _REAL_WEIGHTS,
        )
    if info.quality == "demo":
        return Check(
            name,
            Status.WARNING,
            f"{where} verified; demo weights (a small model trained briefly on a few cases), not for "
            "real use",
            _REAL_WEIGHTS,
        )
    source = info.provenance.get("source", "unknown source")
    release = release_check(info)
    if release is None:
        return Check(name, Status.OK, f"{where} verified; trained ({source})")
    if release.state is Release.NOT_RELEASED:
        return Check(
            name,
            Status.WARNING,
            f"{where} verified; the released cWDM format, but {release}",
            "fetch the released files with python -m brasyn.weights fetch-official --out WEIGHTS",
        )
    return Check(name, Status.OK, f"{where} verified; the released cWDM format ({source}); {release}")


def _baselines_check(folder: Path) -> Check:
    if (folder / BASELINES_FILE).is_file():
        return Check("baselines", Status.OK, f"{folder / BASELINES_FILE} (for --method linear)")
    return Check(
        "baselines",
        Status.WARNING,
        f"no {BASELINES_FILE} in {folder}: --method linear cannot run with these weights",
        f"fit it with python -m brasyn.baselines fit --data TRAIN --out {folder}, or use --method nearest",
    )
