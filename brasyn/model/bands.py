"""The sub-band representation the denoiser works in: Haar sub-bands of [0, 1] images with every LLL
band divided by 3, so that all eight bands of an image have a comparable range.
"""

from __future__ import annotations

import torch

from brasyn.model.wavelet import dwt3, idwt3

__all__ = ["LLL_SCALE", "image_to_bands", "bands_to_image", "clip_bands"]

LLL_SCALE = 3.0


def _scale_lll(bands: torch.Tensor, factor: float) -> torch.Tensor:
    b, c8 = bands.shape[:2]
    grouped = bands.reshape(b, c8 // 8, 8, *bands.shape[2:])
    scaled = torch.cat([grouped[:, :, :1] * factor, grouped[:, :, 1:]], dim=2)
    return scaled.reshape(bands.shape)


def image_to_bands(images: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) images to (B, 8*C, D/2, H/2, W/2) model sub-bands (LLL/3).

    With the three present contrasts as channels (in :func:`brasyn.data.modalities.conditions_for` order)
    this is the (B, 24, ...) condition the network expects.
    """
    return _scale_lll(dwt3(images), 1.0 / LLL_SCALE)


def bands_to_image(bands: torch.Tensor) -> torch.Tensor:
    """Model sub-bands (LLL/3) back to (B, C, D, H, W) images: LLL*3, then the inverse DWT."""
    return idwt3(_scale_lll(bands, LLL_SCALE))


def clip_bands(bands: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    """Clamp the image the sub-bands represent to [low, high] and return its sub-bands."""
    return image_to_bands(bands_to_image(bands).clamp(low, high))
