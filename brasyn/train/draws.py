"""Which examples a training step sees: a pure function of (seed, rank, step) and the cases' shapes and
brain voxel counts, so a resumed run draws exactly what an uninterrupted one would, every rank of a
distributed run draws its own stream from all cases, and data loader workers can cut any step's batch in
any order. Patch centres are drawn uniformly from the brain voxels (a uniform draw over the volume would
mostly see background): first the voxel's number, then its first-axis slice from the per-slice counts,
so only that slice's mask is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Draw", "draw", "step_generator", "step_seed"]

Window = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Draw:
    """One example: the case (its index), the window cut from its model space, the axes flipped."""

    case: int
    window: Window
    flips: tuple[int, ...]
    """Spatial axes (0, 1, 2) to reverse."""

    def describe(self, name: str) -> str:
        """``name@d,h,w`` (the window's first corner) with ``/f`` and the flipped axes: for the log."""
        corner = ",".join(str(s.start) for s in self.window)
        return f"{name}@{corner}" + (f"/f{''.join(map(str, self.flips))}" if self.flips else "")


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A seed for one step on one rank (``stream`` 0: the batch, 1: the diffusion time and noise),
    independent of every other step, rank and stream."""
    entropy = [seed, rank, step] + ([stream] if stream else [])
    words = np.random.SeedSequence(entropy).generate_state(2, np.uint32)
    return (int(words[0]) << 31) | (int(words[1]) >> 1)


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of one step's batch on one rank."""
    return torch.Generator().manual_seed(step_seed(seed, rank, step))


def _below(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(n, (1,), generator=generator))


def draw(
    generator: torch.Generator,
    shapes: Sequence[tuple[int, int, int]],
    brain_slices: Sequence[np.ndarray],
    brain_slice: Callable[[int, int], np.ndarray],
    patch: tuple[int, int, int] | None,
    flip: bool,
) -> Draw:
    """One example among the cases of ``shapes`` (model-space sizes), each with its brain voxels per
    first-axis slice in ``brain_slices``; ``brain_slice(case, d)`` gives slice d's (H, W) brain mask.
    Whole volumes when ``patch`` is None, else a patch (clipped to the volume) centred on a brain voxel."""
    case = _below(len(shapes), generator)
    shape = shapes[case]
    if patch is None:
        window: Window = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    else:
        size = [min(p, n) for p, n in zip(patch, shape, strict=True)]
        counts = np.cumsum(brain_slices[case])
        total = int(counts[-1]) if len(counts) else 0
        if total:
            k = _below(total, generator)
            d = int(np.searchsorted(counts, k, side="right"))
            within = k - (int(counts[d - 1]) if d else 0)
            h, w = divmod(int(np.flatnonzero(brain_slice(case, d))[within]), shape[2])
            centre = (d, h, w)
        else:
            centre = tuple(_below(n, generator) for n in shape)  # type: ignore[assignment]
        starts = [min(max(c - s // 2, 0), n - s) for c, s, n in zip(centre, size, shape, strict=True)]
        window = tuple(slice(a, a + s) for a, s in zip(starts, size, strict=True))  # type: ignore[assignment]
    flips = tuple(a for a in range(3) if _below(2, generator)) if flip else ()
    return Draw(case, window, flips)
