"""Several draws of one case and what they say together: their voxel-wise mean (the output) and their
standard deviation (where the model is unsure of its image).

Draw ``k`` of a case samples from its own noise, seeded by the run's seed, the case id and ``k``
(:func:`brasyn.common.runtime.case_seed`), so a draw's voxels do not depend on how many draws are sampled
at once, on the other cases of the batch, on the shard or on a resumed run. Mean and spread are
accumulated draw by draw in float64 (Welford's update) in draw order, so the first ``k`` draws of an
``n``-draw run give exactly what a ``k``-draw run gives (the draws benchmark relies on it).

Draws are sampled ``batch`` at a time where the device holds that many; a GPU that runs out of memory has
the batch halved (down to one draw) and that group sampled again, and the smaller batch is kept for the
rest of the run (:class:`DrawBatch`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["DrawBatch", "DrawSummary", "Welford", "sample_draws"]

log = logging.getLogger("brasyn")


@dataclass(frozen=True)
class DrawSummary:
    """What ``draws`` samples of one case say: their voxel-wise mean and standard deviation."""

    mean: np.ndarray
    """(D, H, W) float32: the mean image (the one draw itself when there is one)."""
    spread: np.ndarray | None
    """(D, H, W) float32: the sample standard deviation (n - 1 in the denominator); None for one draw."""
    draws: int


class Welford:
    """Running mean and sum of squared deviations of images added one at a time (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self._first: np.ndarray | None = None
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def add(self, image: np.ndarray) -> None:
        self.count += 1
        if self.count == 1:
            self._first = np.asarray(image, dtype=np.float32)
            self._mean = self._first.astype(np.float64)
            self._m2 = np.zeros_like(self._mean)
            return
        assert self._mean is not None and self._m2 is not None
        delta = image - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (image - self._mean)

    def summary(self) -> DrawSummary:
        if self.count == 0 or self._mean is None or self._m2 is None or self._first is None:
            raise ValueError("no draw was added")
        if self.count == 1:
            return DrawSummary(self._first, None, 1)
        spread = np.sqrt(self._m2 / (self.count - 1)).astype(np.float32)
        return DrawSummary(self._mean.astype(np.float32), spread, self.count)


class DrawBatch:
    """How many draws are sampled at once: ``size`` to start with, halved when the device runs out of
    memory and kept halved (a case after it would run out of memory the same way)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a batch of draws holds at least one, got {size}")
        self.size = size

    def halve(self, tried: int) -> bool:
        """After ``tried`` draws at once ran out of memory: False when one draw did (nothing smaller)."""
        if tried <= 1:
            return False
        self.size = max(1, tried // 2)
        return True


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def sample_draws(
    sample: Callable[[Sequence[int]], np.ndarray],
    count: int,
    batch: DrawBatch | None = None,
    after_draw: Callable[[Welford], None] | None = None,
) -> DrawSummary:
    """The :class:`DrawSummary` of draws ``0 .. count - 1``; ``sample(indices)`` returns the
    (len(indices), D, H, W) images of those draws. ``after_draw`` sees the running totals after each."""
    if count < 1:
        raise ValueError(f"at least one draw, got {count}")
    batch = batch or DrawBatch(1)
    totals = Welford()
    while totals.count < count:
        indices = range(totals.count, min(count, totals.count + batch.size))
        try:
            images = sample(indices)
        except Exception as exc:
            if not (_out_of_memory(exc) and batch.halve(len(indices))):
                raise
            torch.cuda.empty_cache()
            log.info(
                "%d draws at once do not fit on the device: %d at a time from now on",
                len(indices),
                batch.size,
            )
            continue
        for image in images:
            totals.add(image)
            if after_draw is not None:
                after_draw(totals)
    return totals.summary()
