"""What a training run of one target's denoiser is told: the recipe, recorded with the weights it makes."""

from __future__ import annotations

from dataclasses import dataclass, field

from brasyn.common.acceleration import Precision
from brasyn.data.modalities import Modality
from brasyn.model.diffusion import DiffusionConfig

__all__ = ["TrainSettings"]


@dataclass(frozen=True)
class TrainSettings:
    target: Modality
    config: str = "official"
    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-5
    patch: tuple[int, int, int] | None = None
    flip: bool = False
    seed: int = 0
    precision: Precision = Precision.FP32
    """fp32 or bf16: resolved for the device (:func:`brasyn.common.acceleration.resolve_precision`)."""
    clip_grad: float = 0.0
    """Maximum gradient norm; 0 leaves gradients alone (the official recipe)."""
    ema: float = 0.0
    """EMA decay of the weights (e.g. 0.999); 0 keeps none (the official recipe)."""
    save_every: int = 1000
    checkpointing: bool = False
    """Activation checkpointing (:attr:`brasyn.model.unet.Denoiser.checkpointing`); on the CPU freed memory is
    also returned to the system after each step. Same numbers, less memory, more time."""
    val_every: int = 0
    val_steps: int = 10
    """DDIM steps of the validation sampler."""
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    """The chain the model learns to reverse; the checkpoint's manifest entry records it, since a model
    only samples correctly with the settings it was trained with."""
