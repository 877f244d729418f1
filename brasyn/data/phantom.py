"""Phantom volumes: an ellipsoid 'brain' with texture and an optional brighter 'lesion', 0 outside, and a
phantom case written as a case folder on the BraTS grid's affine.

One maker serves the tests (small speckled volumes), the example case of ``python -m brasyn.example``
(a head-sized ellipsoid with rings) and the benchmark's synthetic cases (int16 waves). Each of them is
pinned or measured elsewhere, so every setting below keeps its voxels bit for bit: the coordinates'
dtype, the order in which the scale and the lesion's gain are applied and the brain's bound are
settings because rounding depends on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np

__all__ = [
    "BRATS_AFFINE",
    "COORDINATES",
    "Lesion",
    "Rings",
    "Speckle",
    "Texture",
    "Waves",
    "phantom",
    "write_phantom_case",
]

BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
"""The affine of the BraTS 240 x 240 x 155 grid (LPS, 1 mm)."""

COORDINATES: dict[str, Callable[[int], np.ndarray]] = {
    "voxels": lambda n: np.arange(n, dtype=np.float64),
    "voxels_float32": lambda n: np.arange(n, dtype=np.float32),
    "unit": lambda n: np.linspace(-1.0, 1.0, n),
}
"""Coordinates along an axis of ``n`` voxels: voxel indices (float64 or float32), or -1 to 1."""


class Texture(Protocol):
    """The tissue values of the whole grid (only the brain's are kept), from the coordinates, the brain
    ellipsoid's squared radius and the phantom's random generator."""

    def __call__(
        self, grid: Sequence[np.ndarray], r2: np.ndarray, rng: np.random.Generator, shape: tuple[int, ...]
    ) -> np.ndarray: ...


@dataclass(frozen=True)
class Speckle:
    """Uniform noise about a level: ``level + spread * U[0, 1)``."""

    level: float = 0.4
    spread: float = 0.2

    def __call__(
        self, grid: Sequence[np.ndarray], r2: np.ndarray, rng: np.random.Generator, shape: tuple[int, ...]
    ) -> np.ndarray:
        return self.level + self.spread * rng.random(shape)


@dataclass(frozen=True)
class Rings:
    """Concentric rings and a little Gaussian noise: ``level + depth * cos(frequency * r) + noise * N``."""

    level: float = 0.6
    depth: float = 0.25
    frequency: float = 6
    noise: float = 0.05

    def __call__(
        self, grid: Sequence[np.ndarray], r2: np.ndarray, rng: np.random.Generator, shape: tuple[int, ...]
    ) -> np.ndarray:
        return (
            self.level
            + self.depth * np.cos(self.frequency * np.sqrt(r2))
            + self.noise * rng.standard_normal(shape)
        )


@dataclass(frozen=True)
class Waves:
    """Waves along the first two axes with Gaussian noise, about a level with a contrast of either sign:
    ``level + contrast * (sin(6 x) cos(5 y) + noise * N)``. The same seed gives the same waves and noise,
    so contrasts of one case differ only by ``contrast`` and the scale."""

    contrast: float = 0.4
    level: float = 1.5
    noise: float = 0.3

    def __call__(
        self, grid: Sequence[np.ndarray], r2: np.ndarray, rng: np.random.Generator, shape: tuple[int, ...]
    ) -> np.ndarray:
        texture = np.sin(6 * grid[0]) * np.cos(5 * grid[1]) + self.noise * rng.standard_normal(shape)
        return self.level + self.contrast * texture


@dataclass(frozen=True)
class Lesion:
    """A brighter ellipsoid: its centre's offset from the brain's centre, its radii, and the factor its
    voxels inside the brain are multiplied by."""

    offset: Sequence[float]
    radii: Sequence[float]
    gain: float

    @classmethod
    def within(
        cls, radii: Sequence[float], offset: float = 0.3, size: float = 0.2, gain: float = 1.8
    ) -> Lesion:
        """A lesion placed and sized as fractions of the brain's ``radii``."""
        return cls([r * offset for r in radii], [r * size for r in radii], gain)


def _r2(
    grid: Sequence[np.ndarray],
    centre: Sequence[float],
    radii: Sequence[float],
    offset: Sequence[float] | None,
) -> np.ndarray:
    offset = offset or [0] * len(grid)
    return sum(((g - c - o) / r) ** 2 for g, c, r, o in zip(grid, centre, radii, offset, strict=True))


def phantom(
    shape: Sequence[int] = (48, 56, 40),
    seed: int = 0,
    scale: float = 1000.0,
    centre: Sequence[float] | None = None,
    radii: Sequence[float] | None = None,
    *,
    texture: Texture = Speckle(),
    lesion: Lesion | bool = True,
    coordinates: str = "voxels",
    extent: float = 1.0,
    scale_last: bool = False,
    dtype: type = np.float32,
) -> np.ndarray:
    """A skull-stripped-looking volume: ``texture`` inside an ellipsoid 'brain', 0 outside.

    The brain is where ``sum(((x - centre) / radii) ** 2) < extent ** 2`` in ``coordinates``
    (:data:`COORDINATES`); ``centre`` defaults to the middle of the grid and ``radii`` to 0.35 of each
    side. ``lesion``: True for :meth:`Lesion.within` the brain's radii, False for none. The tissue is
    multiplied by ``scale`` before the lesion's gain, or after it with ``scale_last``; the result is cast
    to ``dtype``. ``seed`` fixes the texture's noise.
    """
    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[COORDINATES[coordinates](n) for n in shape], indexing="ij", sparse=True)
    centre = centre or [n / 2 for n in shape]
    radii = radii or [n * 0.35 for n in shape]
    r2 = _r2(grid, centre, radii, None)
    brain = r2 < extent**2
    tissue = texture(grid, r2, rng, shape)
    data = np.where(brain, tissue if scale_last else scale * tissue, 0.0)
    if lesion is True:
        lesion = Lesion.within(radii)
    if lesion:
        data[(_r2(grid, centre, lesion.radii, lesion.offset) < 1) & brain] *= lesion.gain
    if scale_last:
        data = data * scale
    return data.astype(dtype)


def write_phantom_case(folder: Path, case_id: str, volumes: Mapping[str, np.ndarray]) -> dict[str, Path]:
    """Write ``volumes`` (by contrast name) as ``folder/case_id/case_id-<contrast>.nii.gz`` on
    :data:`BRATS_AFFINE`, qform and sform both set; returns the paths by contrast name."""
    (folder / case_id).mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, data in volumes.items():
        image = nib.Nifti1Image(data, BRATS_AFFINE)
        image.header.set_qform(BRATS_AFFINE, code=1)
        image.header.set_sform(BRATS_AFFINE, code=1)
        paths[name] = folder / case_id / f"{case_id}-{name}.nii.gz"
        nib.save(image, str(paths[name]))
    return paths
