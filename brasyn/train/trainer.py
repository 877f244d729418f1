"""The trainer of one target's denoiser: model, optimiser, random generators, the training state file, the
loss, validation and the export into a weights folder. ``python -m brasyn.train``
(:mod:`brasyn.commands.train`) builds it from the command line; the GPU check times it."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from brasyn.common.errors import BrasynError
from brasyn.common.runtime import return_freed_memory, torchrun_environment
from brasyn.data.modalities import Modality
from brasyn.model.bands import image_to_bands
from brasyn.model.diffusion import Diffusion, DiffusionConfig
from brasyn.model.unet import PRESETS, Denoiser
from brasyn.model.wavelet import dwt3
from brasyn.train.draws import step_seed
from brasyn.train.loader import CacheEntryError, ExampleSource, StepBatches, decode, end_workers, make_loader
from brasyn.train.training_data import intensity_ratios
from brasyn.train.validation import Validation, ValidationStopped, Validator
from brasyn.weights.store import save_checkpoint

__all__ = ["Stop", "TrainSettings", "Trainer"]

log = logging.getLogger("brasyn.train")


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
    precision: str = "fp32"
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


def process_age() -> float | None:
    """Seconds since this process started (Linux), for the time to the first step; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Stop(BaseException):
    """SIGTERM: write a last checkpoint and leave."""


@contextlib.contextmanager
def deferred_sigterm() -> Iterator[None]:
    """SIGTERM waits till the block ends: a step's weight update and its count are never split, so the
    state saved on SIGTERM is one that a resume continues exactly from."""
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # handlers can only be swapped on the main thread, and one set outside Python not at all
        return
    pending: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pending:
            signal.raise_signal(signal.SIGTERM)


class Trainer:
    """Owns the model, optimiser, generators and the training state file of one target."""

    def __init__(
        self,
        settings: TrainSettings,
        data: ExampleSource,
        out: Path,
        device: torch.device,
        validator: Validator | None = None,
        command: str = "",
        demo: bool = False,
        population: dict[str, dict[Modality, float]] | None = None,
        workers: int = 0,
    ) -> None:
        self.settings = settings
        self.data = data
        self.workers = workers
        """Data loader worker processes cutting batches (0: on the main thread)."""
        self.population = population or data.population  # type: ignore[attr-defined]
        """Every training case of the run (all ranks) with its 99.9th percentiles: the manifest lists them
        and the intensity ratios come from them, whatever share this process trained on."""
        self.validator = validator
        self.best: dict[str, Any] | None = None
        """Step and validation score of the best checkpoint kept so far."""
        self.out = out
        self.device = device
        self.command = command
        self.demo = demo
        job = torchrun_environment()
        self.rank, self.world = (0, 1) if job is None else (job.rank, job.world_size)
        self.work = out / "training" / settings.target.value
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

    # --- state -------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.work / "state.pt"

    def save_state(self) -> None:
        if self.rank != 0:
            return
        self.work.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "config": PRESETS[self.settings.config].to_dict(),
            "target": self.settings.target.value,
            "diffusion": self.settings.diffusion.to_dict(),
        }
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        log.info("saved training state at step %d to %s", self.step, self.state_path)

    def load_state(self) -> None:
        if not self.state_path.is_file():
            raise BrasynError(f"--resume: no training state at {self.state_path}; start without --resume")
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        if (
            state["target"] != self.settings.target.value
            or state["config"] != PRESETS[self.settings.config].to_dict()
        ):
            raise BrasynError(
                f"--resume: {self.state_path} holds a {state['target']} model with another config; "
                "use the same --target and --config as the interrupted run"
            )
        # States written before the diffusion settings were recorded were trained with the defaults.
        try:
            raw = state.get("diffusion")
            trained = DiffusionConfig() if raw is None else DiffusionConfig.from_dict(raw)
        except ValueError as e:
            raise BrasynError(f"--resume: {self.state_path} holds invalid diffusion settings: {e}") from e
        if trained != self.settings.diffusion:
            raise BrasynError(
                f"--resume: {self.state_path} was trained with the diffusion settings {trained.to_dict()}, "
                f"but this run uses {self.settings.diffusion.to_dict()}; resume with the same settings"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        if self.validator is not None:
            self.best = self.validator.best_so_far()
        log.info("resumed at step %d from %s", self.step, self.state_path)

    # --- one step ----------------------------------------------------------------------------

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        """The official objective: MSE between predicted and true clean sub-bands at a uniform t."""
        batch = decode(batch.to(self.device, non_blocking=True))
        cond = image_to_bands(batch[:, :3])
        x0 = image_to_bands(batch[:, 3:])
        n = batch.shape[0]
        t = torch.randint(self.diffusion.num_steps, (n,), generator=self.generator).to(self.device)
        noise = dwt3(torch.randn(batch[:, 3:].shape, generator=self.generator).to(self.device))
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.settings.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
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

    # --- validation --------------------------------------------------------------------------

    def _provenance(self) -> dict[str, Any]:
        """What a checkpoint's manifest entry records of this training."""
        # The recipe goes into the JSON manifest: tuples as lists, the diffusion settings as their dict.
        recipe = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(self.settings).items()
            if k != "target"
        }
        recipe["diffusion"] = self.settings.diffusion.to_dict()
        return {
            "source": "brasyn.train",
            "command": self.command,
            "steps": self.step,
            "recipe": recipe,
            "data": {"cases": sorted(self.population), "world_size": self.world},
            **({"quality": "demo"} if self.demo else {}),
        }

    def _ratios(self) -> dict[Modality, float]:
        return intensity_ratios(list(self.population.values()), self.settings.target)

    def validation_due(self) -> bool:
        """After every ``--val-every`` steps, or (``--val-every 0``) after the last one; rank 0 alone."""
        s = self.settings
        if self.validator is None or self.rank != 0:
            return False
        return self.step % s.val_every == 0 if s.val_every else self.step == s.steps

    def validate(self) -> Validation:
        """Score the model as it is now (:mod:`brasyn.train.validation`); keep it as the best when it beats
        the best so far."""
        assert self.validator is not None
        with torch.inference_mode():
            result = self.validator.validate(
                (self.ema or self.model).eval(),
                self.step,
                self._ratios(),
                self.settings.diffusion,
                self._provenance(),
            )
        if result.score is not None and (self.best is None or result.score > self.best["val_ssim"]):
            with deferred_sigterm():  # the folder swap and what the run remembers of it go together
                self.validator.keep_best(result)
                self.best = {"step": self.step, "val_ssim": result.score}
            log.info(
                "step %d: validation SSIM %.4f, the best so far: kept in %s",
                self.step,
                result.score,
                self.validator.best_folder,
            )
        elif result.score is not None:
            log.info(
                "step %d: validation SSIM %.4f (best %.4f at step %d)",
                self.step,
                result.score,
                self.best["val_ssim"] if self.best else float("nan"),
                self.best["step"] if self.best else -1,
            )
        else:
            log.warning("step %d: no validation case could be scored (see the warnings above)", self.step)
        return result

    # --- the loop ----------------------------------------------------------------------------

    def _gather(self, draws: list[str]) -> list[list[str]]:
        """Every rank's examples of this step (rank by rank), for the log."""
        if self.world == 1:
            return [draws]
        shares: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(shares, draws)
        return shares

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.work.mkdir(parents=True, exist_ok=True)
        with open(self.work / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def run(self, progress: bool = True) -> list[float]:
        """Train up to ``settings.steps``; returns this call's losses. The log gets a marker line first,
        so that the lines of a resumed run are never mistaken for another run's."""
        s = self.settings
        losses: list[float] = []
        self._log({"event": "resume" if self.step else "start", "step": self.step, "command": self.command})
        bar = tqdm(
            total=s.steps,
            initial=self.step,
            desc=f"train {s.target}",
            file=sys.stderr,
            disable=not progress or self.rank != 0,
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
        )
        loader = make_loader(self.batches, self.step, s.steps, self.workers, self.device.type == "cuda")
        start, done_here = time.perf_counter(), 0
        logged = self.step  # the last step with its line in the log
        record: dict[str, Any] = {}
        batches = iter(loader)
        try:
            while self.step < s.steps:
                waited = time.perf_counter()
                try:
                    batch, draws = next(batches)
                except CacheEntryError as exc:
                    problem = CacheEntryError.from_worker(exc)
                    log.error("%s: saving the training state at step %d", problem, self.step)
                    self.save_state()
                    raise BrasynError(f"{problem}; {CacheEntryError.ADVICE}") from None
                waited = time.perf_counter() - waited
                age = process_age() if done_here == 0 else None  # the start-up: till the first batch
                loss = self.train_step(batch)
                losses.append(loss)
                done_here += 1
                rate = done_here / (time.perf_counter() - start)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", steps_s=f"{rate:.2f}")
                record = {
                    "step": self.step,
                    "loss": loss,
                    "steps_per_s": rate,
                    "data_wait_s": waited,
                    "draws": self._gather(draws),
                }
                if done_here == 1:
                    record["first_step_after_s"] = age
                if self.validation_due():
                    try:
                        result = self.validate()
                    except ValidationStopped:
                        raise Stop() from None  # the step's line is written below, without scores
                    record.update(result.summary())
                    record["val_best"] = self.best is not None and self.best["step"] == self.step
                with deferred_sigterm():
                    self._log(record)
                    logged = self.step
                if s.save_every and self.step % s.save_every == 0 and self.step < s.steps:
                    self.save_state()
        except Stop:
            if logged < self.step:  # the step was taken before its line was written
                taken = {"step": self.step, "loss": self.last_loss}
                self._log({**(record if record.get("step") == self.step else taken), "stopped": True})
            log.warning("stopped by SIGTERM at step %d: saving the training state", self.step)
            self.save_state()
            raise
        finally:
            bar.close()
            end_workers(batches)  # now, also on an error; so their peak memory is counted below
            del batches
        self.save_state()
        self._log(
            {
                "event": "end",
                "step": self.step,
                "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "workers_max_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                **({"best": self.best} if self.best is not None else {}),
            }
        )
        return losses

    def export(self) -> None:
        """The trained (EMA when kept) weights into the weights folder, with a manifest entry."""
        if self.rank != 0:
            return
        save_checkpoint(
            self.out,
            (self.ema or self.model).eval(),
            self.settings.target,
            intensity_ratios=self._ratios(),
            diffusion=self.settings.diffusion,
            provenance=self._provenance(),
        )
