"""Orthonormal 3-D Haar wavelet transform on tensors.

``dwt3`` maps (B, C, D, H, W) to (B, 8*C, D/2, H/2, W/2): channel ``c`` becomes the eight sub-bands
``8c .. 8c+7`` in the order LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH, where the first letter refers to
axis D, the second to H and the third to W. ``idwt3`` is its exact inverse.

Both are a reshape plus three butterflies (a + b, a - b): the 2x2x2 Haar matrix is symmetric and
orthogonal, so the inverse is the same butterflies applied in the band axes.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dwt3", "idwt3", "BAND_NAMES"]

BAND_NAMES: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")

# Each of the three butterflies would divide by sqrt(2); doing it once keeps one rounding.
_SCALE = 1.0 / (2.0 * math.sqrt(2.0))


def _butterfly(x: torch.Tensor, dim: int) -> torch.Tensor:
    a, b = x.unbind(dim)
    return torch.stack((a + b, a - b), dim)


def dwt3(x: torch.Tensor) -> torch.Tensor:
    """Haar sub-bands of every channel of a (B, C, D, H, W) tensor with even D, H, W."""
    if x.dim() != 5:
        raise ValueError(f"dwt3 expects a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    if d % 2 or h % 2 or w % 2:
        raise ValueError(f"dwt3 needs even spatial sizes, got {(d, h, w)}")
    y = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2)
    for dim in (3, 5, 7):
        y = _butterfly(y, dim)
    y = y.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return (y * _SCALE).reshape(b, 8 * c, d // 2, h // 2, w // 2)


def idwt3(bands: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dwt3`: (B, 8*C, d, h, w) sub-bands to (B, C, 2d, 2h, 2w)."""
    if bands.dim() != 5 or bands.shape[1] % 8:
        raise ValueError(f"idwt3 expects (B, 8*C, d, h, w) sub-bands, got shape {tuple(bands.shape)}")
    b, c8, d, h, w = bands.shape
    c = c8 // 8
    y = bands.reshape(b, c, 2, 2, 2, d, h, w)
    for dim in (2, 3, 4):
        y = _butterfly(y, dim)
    y = y.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return (y * _SCALE).reshape(b, c, 2 * d, 2 * h, 2 * w)
