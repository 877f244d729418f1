"""The four MR contrasts brasyn works with and the fixed order the model sees them in."""

from __future__ import annotations

from enum import Enum

__all__ = ["Modality", "MODALITIES", "conditions_for"]


class Modality(str, Enum):
    """BraTS 2023 short names, used as canonical keys everywhere."""

    T1N = "t1n"
    """Native T1."""
    T1C = "t1c"
    """Contrast-enhanced (gadolinium) T1."""
    T2W = "t2w"
    """T2-weighted."""
    T2F = "t2f"
    """T2 FLAIR."""

    def __str__(self) -> str:
        return self.value


MODALITIES: tuple[Modality, ...] = (Modality.T1N, Modality.T1C, Modality.T2W, Modality.T2F)
"""Canonical order; the conditions of a model are the other three in this order."""


def conditions_for(target: Modality | str) -> tuple[Modality, Modality, Modality]:
    """The three contrasts a model for ``target`` is conditioned on, in the order it expects them."""
    target = Modality(target)
    first, second, third = (m for m in MODALITIES if m is not target)
    return first, second, third
