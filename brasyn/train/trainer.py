"""The trainer of one target's denoiser: the steps (:mod:`brasyn.train.step`), validation, the training
state file and the export (:mod:`brasyn.train.checkpoints`) and the log (:mod:`brasyn.train.journal`), in
one loop. ``python -m brasyn.train`` (:mod:`brasyn.commands.train`) builds it from the command line; the
GPU check times it."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from brasyn.common.errors import BrasynError
from brasyn.data.modalities import Modality
from brasyn.train.checkpoints import TrainingState, export_weights
from brasyn.train.journal import Journal, gather_draws, process_age
from brasyn.train.loader import CacheEntryError, ExampleSource, end_workers, make_loader
from brasyn.train.settings import TrainSettings
from brasyn.train.step import Learner, deferred_signal, deferred_sigterm
from brasyn.train.training_data import intensity_ratios
from brasyn.train.validation import Validation, ValidationStopped, Validator

__all__ = ["Stop", "Trainer"]

log = logging.getLogger("brasyn.train")

LOST_WORKER = (
    "a data loader worker was killed (the out-of-memory killer does this when memory runs out); the "
    "training state is saved at step {step}: rerun with --resume (with fewer --workers or a smaller --patch "
    "if memory is short)"
)


def lost_worker(exc: RuntimeError) -> bool:
    """Whether ``exc`` is torch's report of a DataLoader worker that died (killed, or crashed in C)."""
    return str(exc).startswith("DataLoader worker (pid")


class Stop(BaseException):
    """SIGTERM: write a last checkpoint and leave."""


class Trainer(Learner):
    """Trains one target: its steps, validated and checkpointed as the settings say, each in the log."""

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
        self.population = population or data.population  # type: ignore[attr-defined]
        """Every training case of the run (all ranks) with its 99.9th percentiles: the manifest lists them
        and the intensity ratios come from them, whatever share this process trained on."""
        super().__init__(settings, data, device)
        self.data = data
        self.workers = workers
        """Data loader worker processes cutting batches (0: on the main thread)."""
        self.validator = validator
        self.best: dict[str, Any] | None = None
        """Step and validation score of the best checkpoint kept so far."""
        self.out = out
        self.command = command
        self.demo = demo
        self.work = out / "training" / settings.target.value
        self.state = TrainingState(self.work)
        self.journal = Journal(self.work, self.rank)

    # --- state -------------------------------------------------------------------------------

    def save_state(self) -> None:
        self.state.save(self)

    def load_state(self) -> None:
        self.state.load(self)
        if self.validator is not None:
            self.best = self.validator.best_so_far()
        log.info("resumed at step %d from %s", self.step, self.state.path)

    def export(self) -> None:
        """The trained (EMA when kept) weights into the weights folder, with a manifest entry."""
        if self.rank != 0:
            return
        try:
            export_weights(self.out, self, self._ratios(), self._provenance())
        except OSError as exc:
            raise BrasynError(
                f"could not write the trained weights into {self.out} ({exc.strerror or exc}); the training "
                f"state at step {self.step} is saved: free space on that disk (or make it writable), then "
                "rerun with --resume to write them"
            ) from None

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
                self.trained.eval(), self.step, self._ratios(), self.settings.diffusion, self._provenance()
            )
        nothing_scored = not any(row.get("status") == "scored" for row in result.rows)
        if (
            result.score is not None
            and not nothing_scored
            and (self.best is None or result.score > self.best["val_ssim"])
        ):
            with deferred_sigterm():  # the folder swap and what the run remembers of it go together
                self.validator.keep_best(result)
                self.best = {"step": self.step, "val_ssim": result.score}
        _log_validation(result, self.step, self.best, self.validator.best_folder, nothing_scored)
        return result

    # --- the loop ----------------------------------------------------------------------------

    def run(self, progress: bool = True) -> list[float]:
        """Train up to ``settings.steps``; returns this call's losses. The log gets a marker line first,
        so that the lines of a resumed run are never mistaken for another run's."""
        s = self.settings
        losses: list[float] = []
        self.journal.begin(self.step, self.command)
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
                # a loader worker's death (SIGCHLD, which torch turns into an error) is reported between steps
                with deferred_signal(signal.SIGCHLD, handled_only=True):
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
                        "draws": gather_draws(draws, self.world),
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
                        self.journal.write(record)
                        logged = self.step
                    if s.save_every and self.step % s.save_every == 0 and self.step < s.steps:
                        self.save_state()
        except RuntimeError as exc:
            if not lost_worker(exc):
                raise
            log.error("%s: saving the training state at step %d", str(exc).strip().splitlines()[0], self.step)
            self.save_state()
            raise BrasynError(LOST_WORKER.format(step=self.step)) from None
        except Stop:
            if logged < self.step:  # the step was taken before its line was written
                if record.get("step") != self.step:
                    record = {"step": self.step, "loss": self.last_loss}
                self.journal.write({**record, "stopped": True})
            log.warning("stopped by SIGTERM at step %d: saving the training state", self.step)
            self.save_state()
            raise
        finally:
            bar.close()
            end_workers(batches)  # now, also on an error; so their peak memory is counted below
            del batches
        self.save_state()
        self.journal.end(self.step, self.best)
        return losses


def _log_validation(
    result: Validation, step: int, best: dict[str, Any] | None, folder: Path, nothing_scored: bool
) -> None:
    if result.score is None:
        log.warning("step %d: there is no validation case to score", step)
    elif nothing_scored:  # an early model's images are empty: normal at the start, nothing kept as the best
        log.info("step %d: validation SSIM 0: no case could be synthesised yet", step)
    elif best is not None and best["step"] == step:
        log.info("step %d: validation SSIM %.4f, the best so far: kept in %s", step, result.score, folder)
    else:
        log.info(
            "step %d: validation SSIM %.4f (best %.4f at step %d)",
            step,
            result.score,
            best["val_ssim"] if best else float("nan"),
            best["step"] if best else -1,
        )
