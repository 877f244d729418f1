"""One optimiser step of a denoiser's training: the weights, what changes them (the optimiser, the EMA, the
generator of t and noise), and the step itself, whose update and count a SIGTERM never splits."""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
from collections.abc import Iterator

import torch
from torch import nn

from brasyn.common.acceleration import network_precision
from brasyn.common.runtime import return_freed_memory, torchrun_environment
from brasyn.model.bands import image_to_bands
from brasyn.model.diffusion import Diffusion
from brasyn.model.unet import PRESETS, Denoiser
from brasyn.model.wavelet import dwt3
from brasyn.train.draws import step_seed
from brasyn.train.loader import ExampleSource, StepBatches, decode
from brasyn.train.settings import TrainSettings

__all__ = ["Learner", "deferred_signal", "deferred_sigterm"]


@contextlib.contextmanager
def deferred_signal(signum: int, handled_only: bool = False) -> Iterator[None]:
    """Signal ``signum`` waits till the block ends, then reaches the handler it would have reached.
    ``handled_only``: only where Python handles it (a handler where there was none would interrupt
    system calls that were never interrupted before)."""
    previous = signal.getsignal(signum)
    if (
        threading.current_thread() is not threading.main_thread()
        or previous is None
        or (handled_only and not callable(previous))
    ):
        yield  # handlers can only be swapped on the main thread, and one set outside Python not at all
        return
    pending: list[int] = []
    signal.signal(signum, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signum, previous)
        if pending:
            signal.raise_signal(signum)


def deferred_sigterm() -> contextlib.AbstractContextManager[None]:
    """SIGTERM waits till the block ends: a step's weight update and its count are never split, so the
    state saved on SIGTERM is one that a resume continues exactly from."""
    return deferred_signal(signal.SIGTERM)


class Learner:
    """The model of one target, its optimiser, EMA and generator, the step count, and the step.

    Every random draw of a step (the batch, t and the noise) comes from ``(seed, rank, step)`` alone, so
    a run resumed from a saved state repeats the uninterrupted run's steps exactly."""

    def __init__(self, settings: TrainSettings, data: ExampleSource, device: torch.device) -> None:
        self.settings = settings
        self.device = device
        job = torchrun_environment()
        self.rank, self.world = (0, 1) if job is None else (job.rank, job.world_size)
        self.diffusion = Diffusion.from_config(settings.diffusion)
        torch.manual_seed(settings.seed)  # parameter init only; every draw in the loop uses self.generator
        self.model = Denoiser.from_config(PRESETS[settings.config]).to(device)
        self.model.checkpointing = settings.checkpointing
        self.ema = copy.deepcopy(self.model).eval() if settings.ema > 0 else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr)
        self.generator = torch.Generator().manual_seed(settings.seed * 1000 + self.rank)
        self.step = 0
        self.last_loss = math.nan
        """The loss of the last step taken."""
        self.batches = StepBatches(data, settings.batch_size, settings.seed, self.rank)
        self.network: nn.Module = self.model
        if self.world > 1:
            self.network = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )

    @property
    def trained(self) -> nn.Module:
        """The weights a validation scores and an export writes: the EMA's where one is kept."""
        return self.ema or self.model

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The official objective: MSE between predicted and true clean sub-bands at a uniform t."""
        batch = decode(batch.to(self.device, non_blocking=True))
        cond = image_to_bands(batch[:, :3])
        x0 = image_to_bands(batch[:, 3:])
        n = batch.shape[0]
        t = torch.randint(self.diffusion.num_steps, (n,), generator=self.generator).to(self.device)
        noise = dwt3(torch.randn(batch[:, 3:].shape, generator=self.generator).to(self.device))
        with network_precision(self.device, self.settings.precision):
            return self.diffusion.training_loss(self.network, x0, cond, t, noise)

    def train_step(self, batch: torch.Tensor | None = None) -> float:
        """One optimiser step on ``batch``, by default this step's batch cut here."""
        self.network.train()
        if batch is None:
            batch, _ = self.batches[self.step]
        # t and noise, like the batch, from (seed, rank, step) alone: every rank resumes exactly
        self.generator.manual_seed(step_seed(self.settings.seed, self.rank, self.step, stream=1))
        with deferred_sigterm():
            loss = self.loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.settings.clip_grad > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_grad)
            self.optimizer.step()
            if self.ema is not None:
                with torch.no_grad():
                    for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                        e.lerp_(p, 1.0 - self.settings.ema)
            # with the step count, so that a SIGTERM from here on finds the step's loss for the log
            self.last_loss = float(loss.detach())
            self.step += 1
        if self.settings.checkpointing and self.device.type == "cpu":
            del loss
            return_freed_memory()
        return self.last_loss
