"""``python -m brasyn.train``: train the denoiser for one target contrast and add it to a weights folder.

    python -m brasyn.train prepare --data DIR [DIR ...] --cache CACHE_DIR [--workers N]
    python -m brasyn.train (--cache CACHE_DIR | --data DIR [--data DIR ...]) --target t2f --out WEIGHTS_DIR
        [--workers N]
        [--config official|small|tiny] [--steps N] [--batch-size B] [--lr 1e-5] [--patch D H W] [--flip]
        [--val DIR] [--val-every N] [--save-every N] [--resume] [--seed S] [--device D]
        [--precision fp32|bf16|auto] [--clip-grad G] [--ema DECAY] [--checkpointing auto|on|off] [-v]

The defaults are the official cWDM recipe (full 224x224x160 volumes, AdamW at lr 1e-5, batch 1, uniform t,
MSE on the sub-bands). Training state (model, optimiser, step, random generators, EMA) is kept in
``WEIGHTS_DIR/training/<target>/state.pt`` every ``--save-every`` steps and on SIGTERM; ``--resume``
continues from it exactly. ``log.jsonl`` beside it records the loss, the main process's wait for data, the
examples drawn and, with ``--val``, each validation: the cases synthesised through the batch runner
and scored with the challenge's SSIM (:mod:`brasyn.train.validation`), the best checkpoint kept as a weights
folder in ``WEIGHTS_DIR/training/<target>/best``. The final
weights are written as ``<target>.pt`` with a manifest entry (config, diffusion settings, sha256, command,
data, intensity ratios).

Training reads the preprocessed case cache (:mod:`brasyn.train.cache`, made by ``prepare``; ``--data``
prepares into ``--cache``, by default ``WEIGHTS_DIR/training/cache``, first) through a data loader with
``--workers`` processes (:mod:`brasyn.train.loader`), so memory and start-up do not grow with the number of
cases.

Started by ``torchrun``, it trains with DistributedDataParallel (NCCL on GPU, gloo on CPU), each rank
drawing its own stream from all cases; rank 0 alone prepares and writes.

Exit status: 0 when the checkpoint was written, 2 when training cannot start (bad arguments, no usable
case, nothing to resume), 130 after Ctrl-C, 143 after SIGTERM (the training state is saved first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import torch

from brasyn.commands.command import HelpFormatter, Subcommands, parse_arguments, run_command
from brasyn.commands.converters import contrast, one_of, real_number, whole_number
from brasyn.commands.options import (
    add_data_option,
    add_device_option,
    add_map_option,
    add_verbosity_option,
    contrast_mapping,
)
from brasyn.common.acceleration import PRECISIONS, resolve_precision
from brasyn.common.errors import BrasynError, ExitCode, UsageError
from brasyn.common.runtime import select_device, torchrun_environment
from brasyn.data.modalities import Modality
from brasyn.model.unet import PRESETS
from brasyn.train.cache import CacheEntry, load_entries, prepare_cache
from brasyn.train.checkpoints import read_state
from brasyn.train.loader import CacheDataset
from brasyn.train.settings import TrainSettings
from brasyn.train.trainer import Stop, Trainer
from brasyn.train.training_data import find_training_cases
from brasyn.train.validation import Validator, validation_cases
from brasyn.transform.preprocess import MULTIPLE
from brasyn.weights.official import replaced_checkpoint

__all__ = ["main"]

log = logging.getLogger("brasyn.train")


def build_parser() -> argparse.ArgumentParser:
    """Every option with a sentence and its default (shown by ``--help``); values are checked when parsed,
    everything that needs no data before any case is read."""
    p = argparse.ArgumentParser(
        prog="python -m brasyn.train",
        description="Train a cWDM denoiser for one target contrast and add it to a weights folder.",
        formatter_class=HelpFormatter,
    )
    add_data_option(p, required=False, after=", prepared into --cache first")
    p.add_argument(
        "--cache",
        type=Path,
        help="the preprocessed case cache (python -m brasyn.train prepare); with --data, where it is "
        "prepared (default: WEIGHTS_DIR/training/cache)",
    )
    p.add_argument(
        "--workers",
        type=whole_number(0),
        default=2,
        help="data loader processes cutting batches (0: on the main thread); with --data also the cases "
        "prepared at once",
    )
    p.add_argument(
        "--target",
        required=True,
        type=contrast,
        help="the contrast to synthesise: t1n, t1c, t2w, t2f or an alias (t1, t1ce, t2, flair)",
    )
    p.add_argument("--out", type=Path, required=True, help="weights folder to add the checkpoint to")
    p.add_argument(
        "--recipe",
        type=one_of("official"),
        metavar="official",
        help="official: the published training (full volumes, AdamW, lr 1e-5, batch 1, 1.2 M steps, fp32, "
        "no EMA, no augmentation); an option given with another value is refused",
    )
    p.add_argument("--config", choices=sorted(PRESETS), default="official", help="denoiser size")
    p.add_argument("--steps", type=whole_number(1), default=1000, help="total optimiser steps")
    p.add_argument("--batch-size", type=whole_number(1), default=1, help="examples per optimiser step")
    p.add_argument("--lr", type=real_number(0), default=1e-5, help="AdamW learning rate")
    p.add_argument(
        "--patch",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        help="random patches of this size (multiples of 32) instead of whole volumes",
    )
    p.add_argument("--flip", action="store_true", help="random flips along each axis")
    add_map_option(p)
    p.add_argument(
        "--checkpointing",
        choices=("auto", "on", "off"),
        default="auto",
        help="activation checkpointing: recompute each block's activations in the backward pass (same "
        "numbers, about a third less memory, more time: 1.6x a step for the tiny model on two CPU cores; "
        "on the CPU freed memory is also returned after each step); auto: on for whole volumes on the "
        "CPU, where the step's memory is the machine's RAM",
    )
    p.add_argument(
        "--val",
        type=Path,
        help="folder of complete validation cases (a tumour segmentation beside the images gives the "
        "tumour / non-tumour SSIM): synthesised through the batch runner and scored with the challenge's "
        "SSIM; the best checkpoint is kept in OUT/training/<target>/best",
    )
    p.add_argument(
        "--val-every",
        type=whole_number(0),
        default=0,
        help="validate every N steps (with --val; 0: after the last step)",
    )
    p.add_argument(
        "--val-steps", type=whole_number(1, 1000), default=10, help="DDIM steps of the validation sampler"
    )
    p.add_argument(
        "--save-every",
        type=whole_number(0),
        default=1000,
        help="write the training state every N steps (0: only at the end and on SIGTERM)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the saved training state")
    p.add_argument(
        "--restart",
        action="store_true",
        help="start over where a training state exists (kept as state.pt.bak, its log as log.jsonl.bak)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let a new training replace the checkpoint --out already holds for the target (refused without "
        "it where no training state of that checkpoint is there)",
    )
    p.add_argument(
        "--seed", type=whole_number(), default=0, help="seed of the initial weights and every draw"
    )
    add_device_option(p)
    p.add_argument(
        "--precision",
        type=one_of(*PRECISIONS),
        default="fp32",
        metavar="{" + ",".join(PRECISIONS) + "}",
        help="fp32, bf16 (autocast) or auto (bf16 where the device computes it natively)",
    )
    p.add_argument(
        "--clip-grad", type=real_number(0), default=0.0, help="maximum gradient norm (0: no clipping)"
    )
    p.add_argument(
        "--ema", type=real_number(0, 1), default=0.0, help="EMA decay of the weights, e.g. 0.999 (0: none)"
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="mark the checkpoint as demo quality (the pipeline then says so when it uses it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_verbosity_option(p)
    return p


OFFICIAL_RECIPE = {
    "config": "official",
    "steps": 1_200_000,
    "batch_size": 1,
    "lr": 1e-5,
    "patch": None,
    "flip": False,
    "precision": "fp32",
    "clip_grad": 0.0,
    "ema": 0.0,
}
"""The published cWDM training: full volumes, AdamW at lr 1e-5, batch 1, 1.2 M iterations, fp32, no EMA,
no augmentation, no crops (shared/reference: the official run)."""


def _apply_recipe(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """``--recipe official``: the published settings; an option given with another value is refused."""
    if args.recipe != "official":
        return
    for key, value in OFFICIAL_RECIPE.items():
        given, default = getattr(args, key), parser.get_default(key)
        if given != default and given != value:
            flag = "--" + key.replace("_", "-")
            raise UsageError(
                f"--recipe official sets {flag} {value}; leave {flag} {given} out or drop --recipe"
            )
        setattr(args, key, value)


def _check_before_reading(args: argparse.Namespace, target: Modality) -> Path:
    """Every refusal that needs no data, before any case is read; returns the training-state file."""
    if args.patch is not None and any(p <= 0 or p % MULTIPLE for p in args.patch):
        raise UsageError(
            f"--patch sizes must be positive multiples of {MULTIPLE}, got {' '.join(map(str, args.patch))}"
        )
    if not args.data and args.cache is None:
        raise UsageError(
            "name the training data: --cache DIR (made by python -m brasyn.train prepare) or --data DIR "
            "(complete cases, prepared into a cache first)"
        )
    if args.cache is not None and not args.data and not args.cache.is_dir():
        raise UsageError(
            f"the cache folder {args.cache} does not exist: make it with python -m brasyn.train prepare "
            f"--data DIR --cache {args.cache}, or give --data DIR to prepare it first"
        )
    if args.cache is not None and args.cache.exists() and not args.cache.is_dir():
        raise UsageError(f"--cache {args.cache} is a file; name a folder for the cache")
    for folder in [*(args.data or []), *([args.val] if args.val else [])]:
        if not folder.is_dir():
            raise UsageError(f"the data folder {folder} does not exist or is not a folder")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; name the weights folder to add the checkpoint to")
    _check_writable(args.out, args.out / "training" / target.value)
    if args.resume and args.restart:
        raise UsageError("--resume continues the saved training and --restart discards it: give one of them")
    state = args.out / "training" / target.value / "state.pt"
    if state.is_file() and not (args.resume or args.restart):
        try:
            step = int(torch.load(state, map_location="cpu", weights_only=True, mmap=True)["step"])
        except Exception:
            step = None
        at = f"step {step}" if step is not None else "its last saved step"
        raise UsageError(
            f"{args.out} already holds a {target.value} training state ({state}, at {at}): add --resume to "
            f"continue from {at}, or --restart to start over (the old state is kept as state.pt.bak)"
        )
    if args.resume and not state.is_file():
        raise UsageError(f"--resume: no training state at {state}; start without --resume")
    existing = None if state.is_file() or args.overwrite else replaced_checkpoint(args.out, target)
    if existing is not None:
        # no state: the checkpoint is not this training's own (imported, fetched, or trained elsewhere)
        raise UsageError(
            f"{args.out} already holds a {target.value} checkpoint, {existing}, that no training state there "
            "belongs to; a new training would replace it at its first save. Choose another --out, or pass "
            "--overwrite if it is to be replaced."
        )
    if args.resume:
        read_state(state, mmap=True)  # a damaged state is named now, not after the data was read
    return state


def _check_writable(out: Path, work: Path) -> None:
    """``--out`` (made if absent) and the training folder in it, where it exists, take a new file: a full
    or read-only disk is named before any case is read, not when the first state is saved."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for folder in (out, work):
            if folder.is_dir():
                fd, name = tempfile.mkstemp(prefix=".brasyn-probe-", suffix=".tmp", dir=folder)
                os.close(fd)
                os.unlink(name)
    except OSError as exc:
        raise UsageError(
            f"--out {out} cannot be written ({exc.strerror or exc}): give --out a folder this user may write "
            "(not a read-only mount), or mount it writable"
        ) from None


def _set_aside(state: Path) -> None:
    """``--restart``: the previous state, its log and its best checkpoint's folder become ``.bak`` (one
    generation kept)."""
    for path in (state, state.with_name("log.jsonl"), state.with_name("best")):
        if path.exists():
            backup = path.with_name(path.name + ".bak")
            if backup.is_dir():
                shutil.rmtree(backup)
            os.replace(path, backup)
            log.info("kept the previous %s as %s", path.name, path.name + ".bak")


def _entries(args: argparse.Namespace, rank: int, world: int) -> list[CacheEntry]:
    """The cache entries to train on; with ``--data`` its cases, prepared first (by rank 0 alone, the
    others wait), a case that fails its checks skipped with the reason."""
    if not args.data:
        entries = load_entries(args.cache)
        if not entries:
            raise BrasynError(
                f"the cache {args.cache} holds no prepared case: python -m brasyn.train prepare --data DIR "
                f"--cache {args.cache}"
            )
        return entries
    cache = args.cache or args.out / "training" / "cache"
    cases = find_training_cases(args.data, contrast_mapping(args))
    if rank == 0:
        # a case that fails is logged with its reason and left out
        prepare_cache(cases, cache, max(args.workers, 1), progress=not args.no_progress)
    if world > 1:
        torch.distributed.barrier()
    entries = load_entries(cache, {c.id for c in cases})
    if not entries:
        raise BrasynError("none of the training cases passed the checks (see the warnings above)")
    return entries


def train(args: argparse.Namespace, command: str) -> ExitCode:
    job = torchrun_environment()
    rank, world = (0, 1) if job is None else (job.rank, job.world_size)
    target = Modality(args.target)
    state = _check_before_reading(args, target)
    if args.resume:
        saved = int(read_state(state, mmap=True)["step"])
        if saved >= args.steps:
            # continuing would train nothing and only write the same model again: leave everything
            log.warning(
                "the training state %s is at step %d, already at --steps %d or beyond: nothing to train, "
                "and the checkpoint in %s is left as it is; give --steps above %d to train on",
                state,
                saved,
                args.steps,
                args.out,
                saved,
            )
            return ExitCode.OK
    device = select_device(args.device)  # under torchrun "auto" is this process's own GPU
    # "auto" becomes what this device runs fast; a bf16 it cannot run is refused (ValueError: exit 2)
    precision = resolve_precision(args.precision, device)
    settings = TrainSettings(
        target=target,
        config=args.config,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        patch=tuple(args.patch) if args.patch else None,
        flip=args.flip,
        seed=args.seed,
        precision=precision,
        clip_grad=args.clip_grad,
        ema=args.ema,
        save_every=args.save_every,
        checkpointing=args.checkpointing == "on"
        or (args.checkpointing == "auto" and device.type == "cpu" and args.patch is None),
        val_every=args.val_every,
        val_steps=args.val_steps,
    )
    if args.restart and rank == 0:
        _set_aside(state)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        # rank 0 validates alone while the others wait in their next step's gradient exchange
        torch.distributed.init_process_group(backend, timeout=dt.timedelta(hours=2))
        if device.type == "cuda":
            torch.cuda.set_device(device)
    try:
        entries = _entries(args, rank, world)
        log.info("rank %d/%d: %d training case(s) on %s", rank, world, len(entries), device)
        data = CacheDataset(entries, target, settings.patch, settings.flip)
        validator = None
        if args.val is not None:
            val_cases = validation_cases(args.val, contrast_mapping(args))
            shared = sorted({c.id for c in val_cases} & {e.id for e in entries})
            if shared:
                log.warning(
                    "%d validation case(s) are also training cases (%s): their scores flatter the model; "
                    "keep the --val cases out of the training data",
                    len(shared),
                    ", ".join(shared[:5]) + (" ..." if len(shared) > 5 else ""),
                )
            validator = Validator(
                val_cases,
                target,
                device,
                args.out / "training" / target.value,
                steps=args.val_steps,
                seed=args.seed,
                precision=precision,
                mapping=contrast_mapping(args),
            )
        trainer = Trainer(
            settings, data, args.out, device, validator, command, demo=args.demo, workers=args.workers
        )
        if args.resume:
            trainer.load_state()
        trainer.run(progress=not args.no_progress)
        trainer.export()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    return ExitCode.OK


def _train(argv: list[str]) -> int:
    def stop(signum: int, frame: Any) -> None:
        raise Stop()

    def body() -> ExitCode:
        parser = build_parser()
        args = parse_arguments(parser, argv)
        _apply_recipe(args, parser)
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            return train(args, "python -m brasyn.train " + shlex.join(argv))
        except Stop:
            return ExitCode.TERMINATED
        finally:
            signal.signal(signal.SIGTERM, previous)

    return run_command(body, usage_errors=(BrasynError, ValueError))


def _prepare(argv: list[str]) -> int:
    from brasyn.commands.prepare import main as prepare

    return prepare(argv)


main = Subcommands({"prepare": _prepare}, default=_train)
"""``python -m brasyn.train``: training, and ``prepare``, the case cache it trains from."""
