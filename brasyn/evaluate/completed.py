"""The completed cases the downstream segmentation score needs, built from a test folder and the
predictions made for it (``segment --inputs TEST --pred PRED``), so that no one has to link them by hand.

Each case of ``TEST`` (as ``drop`` writes it: three contrasts per case folder) gets a folder of its own
holding its three inputs and the synthetic contrast found for it in ``PRED`` (the name brasyn gives the
output, or ``<case>-<contrast>.nii.gz``, flat or in ``PRED/<case>/``). The files are hard links where the
file system allows them, else copies; the caller owns the folder and removes it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from brasyn.common.errors import CaseError, UsageError
from brasyn.data.cases import Case, discover

__all__ = ["build_completed"]

log = logging.getLogger("brasyn.evaluate")


def _prediction(predictions: Path, case: Case) -> Path | None:
    assert case.target is not None and case.output_name is not None
    names = dict.fromkeys([case.output_name, f"{case.id}-{case.target.value}.nii.gz"])
    for folder in (predictions, predictions / case.id):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _place(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another file system, or one without hard links: a copy holds the same bytes
        shutil.copyfile(source, dest)


def build_completed(inputs: Path, predictions: Path, work: Path) -> tuple[list[str], list[CaseError]]:
    """Case folders under ``work`` (empty or new), each a case of ``inputs`` with its three contrasts and
    the synthetic one of ``predictions``: the ids of the cases built, and a :class:`CaseError` for each case
    that could not be (no prediction, a badly named case); the others are built all the same."""
    for flag, folder in (("--inputs", inputs), ("--pred", predictions)):
        if not folder.is_dir():
            raise UsageError(f"{flag} {folder} does not exist or is not a folder")
    built: list[str] = []
    errors: list[CaseError] = []
    for item in discover(inputs):
        if isinstance(item, CaseError):
            errors.append(item)
            continue
        if item.target is None:
            errors.append(
                CaseError(item.id, f"it holds all four contrasts in {inputs}; nothing was synthesised")
            )
            continue
        prediction = _prediction(predictions, item)
        if prediction is None:
            errors.append(
                CaseError(
                    item.id,
                    f"no synthetic {item.target.value} for it in {predictions} "
                    f"(expected {item.output_name}); synthesise it first: "
                    f"python -m brasyn --input {inputs} --output {predictions}",
                    list(item.conditions.values()),
                )
            )
            continue
        folder = work / item.id
        folder.mkdir(parents=True)
        for path in [*item.conditions.values(), prediction]:
            _place(path, folder / path.name)
        log.debug("%s: completed with %s", item.id, prediction)
        built.append(item.id)
    return built, errors
