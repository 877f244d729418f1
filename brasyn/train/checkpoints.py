"""What a training keeps of itself: the training state file a resumed run continues exactly from, and the
export of the trained weights into a weights folder with their manifest entry."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from brasyn.common.errors import BrasynError
from brasyn.common.files import atomic_write
from brasyn.data.modalities import Modality
from brasyn.model.diffusion import DiffusionConfig
from brasyn.model.unet import PRESETS
from brasyn.train.step import Learner
from brasyn.weights.store import save_checkpoint

__all__ = ["TrainingState", "export_weights", "read_state"]

log = logging.getLogger("brasyn.train")


KEYS = {"step", "model", "optimizer", "generator", "ema", "config", "target"}
"""What every saved training state holds."""


def _damaged(path: Path, reason: str) -> BrasynError:
    return BrasynError(
        f"the training state {path} is damaged ({reason}): start over with --restart (the damaged file is "
        f"kept as {path.name}.bak), or restore {path.name} from a copy and --resume"
    )


def read_state(path: Path, mmap: bool = False) -> dict[str, Any]:
    """The training state saved at ``path``; BrasynError, saying what to do, where it is truncated, empty,
    not a state at all or holds objects other than tensors. ``mmap`` reads little, for a check."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except OSError as exc:
        raise BrasynError(f"the training state {path} cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # torch's words for a broken file vary: EOFError, RuntimeError, pickle errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _damaged(path, reason[:200]) from None
    if not isinstance(state, dict) or not set(state) >= KEYS:
        raise _damaged(path, "it holds no training state")
    if not isinstance(state["step"], int) or state["step"] < 0:
        raise _damaged(path, f"its step is {state['step']!r}")
    return state


def _saved_step(path: Path) -> int | None:
    try:
        return int(read_state(path, mmap=True)["step"])
    except BrasynError:
        return None


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch.save reports a full disk as a RuntimeError of its zip writer,
    raised while the OSError is handled."""
    while exc is not None:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


class TrainingState:
    """The training state file of one target, ``state.pt`` in its training folder: the step count, the
    weights, the optimiser, the generator and the EMA, with the target, config and diffusion settings they
    belong to, so that a resume with other settings is refused rather than trained on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @property
    def path(self) -> Path:
        return self.folder / "state.pt"

    def save(self, learner: Learner) -> None:
        """Write ``learner``'s state (rank 0 alone); a reader sees the previous state or this one whole."""
        if learner.rank != 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = learner.settings
        state = {
            "step": learner.step,
            "model": learner.model.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "generator": learner.generator.get_state(),
            "ema": learner.ema.state_dict() if learner.ema is not None else None,
            "config": PRESETS[settings.config].to_dict(),
            "target": settings.target.value,
            "diffusion": settings.diffusion.to_dict(),
        }
        try:
            atomic_write(self.path, lambda handle: torch.save(state, handle))
        except (OSError, RuntimeError) as raised:
            exc = _os_error(raised)
            if exc is None:
                raise
            before = _saved_step(self.path) if self.path.is_file() else None
            kept = (
                f"the state saved at step {before} is kept intact"
                if before is not None
                else "no earlier state was saved"
            )
            raise BrasynError(
                f"could not save the training state at step {learner.step} to {self.path} "
                f"({exc.strerror or exc}); {kept}: free space on that disk (or make it writable), then "
                "rerun with --resume"
            ) from None
        log.info("saved training state at step %d to %s", learner.step, self.path)

    def load(self, learner: Learner) -> None:
        """Put the saved state into ``learner``; BrasynError (naming ``--resume``) when there is none or it
        belongs to another target, config or diffusion."""
        if not self.path.is_file():
            raise BrasynError(f"--resume: no training state at {self.path}; start without --resume")
        state = read_state(self.path)
        settings = learner.settings
        if state["target"] != settings.target.value or state["config"] != PRESETS[settings.config].to_dict():
            raise BrasynError(
                f"--resume: {self.path} holds a {state['target']} model with another config; "
                "use the same --target and --config as the interrupted run"
            )
        # States written before the diffusion settings were recorded were trained with the defaults.
        try:
            raw = state.get("diffusion")
            trained = DiffusionConfig() if raw is None else DiffusionConfig.from_dict(raw)
        except ValueError as e:
            raise BrasynError(f"--resume: {self.path} holds invalid diffusion settings: {e}") from e
        if trained != settings.diffusion:
            raise BrasynError(
                f"--resume: {self.path} was trained with the diffusion settings {trained.to_dict()}, "
                f"but this run uses {settings.diffusion.to_dict()}; resume with the same settings"
            )
        try:
            learner.model.load_state_dict(state["model"])
            learner.optimizer.load_state_dict(state["optimizer"])
            learner.generator.set_state(state["generator"])
            if learner.ema is not None and state["ema"] is not None:
                learner.ema.load_state_dict(state["ema"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise _damaged(self.path, reason[:200]) from None
        learner.step = int(state["step"])


def export_weights(
    out: Path, learner: Learner, intensity_ratios: Mapping[Modality, float], provenance: dict[str, Any]
) -> None:
    """The trained (EMA when kept) weights into the weights folder ``out``, with a manifest entry."""
    save_checkpoint(
        out,
        learner.trained.eval(),
        learner.settings.target,
        intensity_ratios=intensity_ratios,
        diffusion=learner.settings.diffusion,
        provenance=provenance,
    )
