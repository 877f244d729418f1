"""``python -m brasyn.bench loader``: how fast the training data loader delivers batches from a cache.

    python -m brasyn.bench loader --cache DIR [--workers N] [--patch D H W] [--batch-size B]
        [--target t2f] [--steps N] [--warmup N] [--step-ms MS] [--flip] [--json FILE] [-v]

It runs the loader training uses (:func:`brasyn.loader.make_loader`, the same draws, workers, pinning on
a GPU machine) and prints JSON: ``samples_per_s`` (examples delivered per second after ``--warmup``
batches), ``wait_ms`` (the main process's wait for each batch: mean, median, 95th percentile),
``first_batch_s`` (worker start and the first batch) and the peak resident memory of the main process
and of the workers. Without ``--step-ms`` the main process takes batches as fast as they come (the
loader's own rate); with ``--step-ms`` set to a training step's time (``steps_per_s`` in the training
log, or the bench's timings) it waits that long per batch as the GPU would: a ``wait_ms`` near 0 then
means the loader keeps up and the GPU is the bottleneck; otherwise the loader is, and more
``--workers`` (or faster disks, or a warm page cache) help.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from brasyn.cache import load_entries
from brasyn.command import parse_arguments, run_command
from brasyn.errors import ExitCode, UsageError
from brasyn.loader import CacheDataset, StepBatches, make_loader
from brasyn.modalities import Modality
from brasyn.options import add_verbosity_option, contrast, real_number, whole_number
from brasyn.preprocess import MULTIPLE

__all__ = ["main", "measure"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m brasyn.bench loader",
        description="Samples per second of the training data loader and the main process's wait per step.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--cache", type=Path, required=True, help="a prepared cache (python -m brasyn.train prepare)"
    )
    p.add_argument("--workers", type=whole_number(0), default=2, help="loader processes (0: main thread)")
    p.add_argument(
        "--patch", type=int, nargs=3, metavar=("D", "H", "W"), help="patch size (default: whole volumes)"
    )
    p.add_argument("--batch-size", type=whole_number(1), default=1, help="examples per batch")
    p.add_argument("--target", type=contrast, default="t2f", help="the contrast placed last")
    p.add_argument("--steps", type=whole_number(1), default=40, help="timed batches")
    p.add_argument("--warmup", type=whole_number(0), default=4, help="batches before timing")
    p.add_argument("--step-ms", type=real_number(0), default=0.0, help="simulated training step per batch")
    p.add_argument("--flip", action="store_true", help="random flips, as training with --flip")
    p.add_argument("--seed", type=whole_number(), default=0, help="seed of the draws")
    p.add_argument("--json", type=Path, help="also write the JSON to this file")
    add_verbosity_option(p)
    return p


def _rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # kB on Linux


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.patch is not None and any(p <= 0 or p % MULTIPLE for p in args.patch):
        raise UsageError(f"--patch sizes must be positive multiples of {MULTIPLE}")
    if not args.cache.is_dir():
        raise UsageError(f"the cache folder {args.cache} does not exist: python -m brasyn.train prepare")
    entries = load_entries(args.cache)
    if not entries:
        raise UsageError(f"the cache {args.cache} holds no prepared case: python -m brasyn.train prepare")
    patch = tuple(args.patch) if args.patch else None
    data = CacheDataset(entries, Modality(args.target), patch, args.flip)
    batches = StepBatches(data, args.batch_size, args.seed)
    total = args.warmup + args.steps
    pin = torch.cuda.is_available()
    start = time.perf_counter()
    loader = iter(make_loader(batches, 0, total, args.workers, pin_memory=pin))
    waits, shape, first = [], None, 0.0
    for i in range(total):
        asked = time.perf_counter()
        batch, _ = next(loader)
        got = time.perf_counter()
        if i == 0:
            first = got - start
        if i == args.warmup:
            timed_from = asked
        if i >= args.warmup:
            waits.append(got - asked)
        shape = tuple(batch.shape)
        del batch
        if args.step_ms:
            time.sleep(args.step_ms / 1e3)
    seconds = time.perf_counter() - timed_from
    del loader  # the workers end: their peak memory is then counted
    waits_ms = sorted(w * 1e3 for w in waits)
    return {
        "cache": str(args.cache),
        "entries": len(entries),
        "workers": args.workers,
        "batch_shape": list(shape or ()),
        "pin_memory": pin,
        "step_ms": args.step_ms,
        "steps": args.steps,
        "samples_per_s": args.steps * args.batch_size / seconds,
        "wait_ms": {
            "mean": statistics.fmean(waits_ms),
            "median": statistics.median(waits_ms),
            "p95": waits_ms[min(len(waits_ms) - 1, int(0.95 * len(waits_ms)))],
        },
        "first_batch_s": first,
        "peak_rss_mib": {
            "main": _rss_mib(resource.RUSAGE_SELF),
            "workers": _rss_mib(resource.RUSAGE_CHILDREN),
        },
    }


def main(argv: list[str] | None = None) -> int:
    def body() -> ExitCode:
        args = parse_arguments(build_parser(), argv)
        text = json.dumps(measure(args), indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        return ExitCode.OK

    return run_command(body)
