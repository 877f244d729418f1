"""Training examples: complete cases in model space, with the same discovery, checks and transform into
model space as inference (:func:`brasyn.transform.model_space.to_model_space`, cases on differing grids
included), cut into random patches and flipped when asked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brasyn.common.errors import BrasynError, CaseError
from brasyn.data.cases import Case, discover
from brasyn.data.contrast_map import ContrastMap
from brasyn.data.modalities import MODALITIES, Modality, conditions_for
from brasyn.data.volumes import load_volume
from brasyn.train.draws import Draw, draw
from brasyn.transform.intensity import median_ratios
from brasyn.transform.model_space import to_model_space
from brasyn.transform.preprocess import MULTIPLE

__all__ = ["TrainingCase", "TrainingSet", "find_training_cases", "intensity_ratios", "load_training_case"]

log = logging.getLogger(__name__)


@dataclass
class TrainingCase:
    """One complete case in model space: the three conditions then the target, (4, D, H, W) in [0, 1]."""

    id: str
    stack: np.ndarray
    brain: np.ndarray
    """Model-space mask of voxels where any contrast is non-zero (patch centres are drawn from it)."""
    percentiles: dict[Modality, float]
    """99.9th percentile of each contrast in its own units."""


TRAINING_NEEDS = "training needs all four contrasts (t1n, t1c, t2w, t2f) of each case"
SYNTHESIS_NEEDS = "each case needs three of " + ", ".join(m.value for m in MODALITIES)
"""The synthesis rule in discovery's messages, which training words as its own."""


def _skipped(case: Case | CaseError) -> str | None:
    """Why a discovered case cannot be trained on, in training's words; None for a complete case.
    Discovery runs without a target: a synthesis target would refuse complete cases whose files share a
    name prefix (one output name) and word an incomplete case as a ``--target`` problem."""
    if isinstance(case, CaseError):
        return case.message.replace(SYNTHESIS_NEEDS, TRAINING_NEEDS)
    if case.complete:
        return None
    have = ", ".join(m.value for m in MODALITIES if m in case.files)
    absent = ", ".join(m.value for m in MODALITIES if m not in case.files)
    return f"it holds {have} but no {absent}; {TRAINING_NEEDS}: add the missing file or leave the case out"


def find_training_cases(folders: list[Path], mapping: ContrastMap | None = None) -> list[Case]:
    """Complete cases (all four contrasts) under ``folders``, their files named as ``--map`` says where it
    is given; others are skipped with a warning."""
    complete: list[Case] = []
    for folder in folders:
        for case in discover(folder, mapping=mapping):
            reason = _skipped(case)
            if reason is None:
                complete.append(case)  # type: ignore[arg-type]
            else:
                log.warning("skipping %s: %s", case.case if isinstance(case, CaseError) else case.id, reason)
    if not complete:
        raise BrasynError(
            f"no usable training case in {', '.join(map(str, folders))}: each case folder needs all four "
            "contrasts (t1n, t1c, t2w, t2f), co-registered"
        )
    return complete


def load_training_case(case: Case, target: Modality) -> TrainingCase:
    """Load, check and bring one case into model space exactly as inference does (contrasts on differing
    grids are resampled onto one 1 mm grid), the target contrast as the fourth channel."""
    order = [*conditions_for(target), target]
    volumes = {m: load_volume(case.files[m], case.id) for m in order}
    stack, record = to_model_space(volumes, order, case.id)
    return TrainingCase(case.id, stack, stack.any(axis=0), dict(record.percentiles))


def intensity_ratios(percentiles: list[dict[Modality, float]], target: Modality) -> dict[Modality, float]:
    """Per condition, the median over cases of p99.9(target) / p99.9(condition) (each case's 99.9th
    percentiles in ``percentiles``): what restores a synthetic image's scale at inference; 1.0 for a
    condition no case measures."""
    return median_ratios(percentiles, target, fallback=1.0)


class TrainingSet:
    """Cases held in memory, drawn like the cache's :class:`brasyn.train.loader.CacheDataset` (the same
    :func:`brasyn.train.draws.draw`), so both give the same batches for the same generator."""

    def __init__(
        self, cases: list[TrainingCase], patch: tuple[int, int, int] | None = None, flip: bool = False
    ) -> None:
        if not cases:
            raise ValueError("a TrainingSet needs at least one case")
        if patch is not None and any(p % MULTIPLE or p <= 0 for p in patch):
            raise ValueError(f"--patch sizes must be positive multiples of {MULTIPLE}, got {patch}")
        self.cases = cases
        self.patch = patch
        self.flip = flip
        self.dtype = torch.float32
        self.shapes = [tuple(c.stack.shape[1:]) for c in cases]
        self.brain_slices = [c.brain.sum(axis=(1, 2)) for c in cases]

    @property
    def population(self) -> dict[str, dict[Modality, float]]:
        return {c.id: c.percentiles for c in self.cases}

    def intensity_ratios(self, target: Modality) -> dict[Modality, float]:
        """Median over cases of p99.9(target) / p99.9(condition), for restoring the scale at inference."""
        return intensity_ratios([c.percentiles for c in self.cases], target)

    def draw(self, generator: torch.Generator) -> Draw:
        brain = lambda case, d: self.cases[case].brain[d]  # noqa: E731
        return draw(generator, self.shapes, self.brain_slices, brain, self.patch, self.flip)

    def fill(self, example: Draw, out: np.ndarray) -> None:
        source = self.cases[example.case].stack[(slice(None), *example.window)]
        out[...] = np.flip(source, [a + 1 for a in example.flips]) if example.flips else source

    def name(self, case: int) -> str:
        return self.cases[case].id

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, 4, D, H, W) float32 drawn with ``generator``: three conditions then the target."""
        draws = [self.draw(generator) for _ in range(batch)]
        if len({tuple(s.stop - s.start for s in d.window) for d in draws}) > 1:
            raise BrasynError(
                "the training cases have different model-space sizes, so they cannot share a batch: "
                "use --patch D H W or --batch-size 1"
            )
        examples = []
        for d in draws:
            out = np.empty((4, *(s.stop - s.start for s in d.window)), dtype=np.float32)
            self.fill(d, out)
            examples.append(torch.from_numpy(out))
        return torch.stack(examples)
