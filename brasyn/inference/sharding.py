"""Which cases this process takes when a batch is spread over processes, GPUs or nodes, and the worker
processes of ``--devices``.

A shard is ``index/count``: the cases sorted by id, every ``count``-th from position ``index``, so shards
are disjoint, cover every case, differ in size by at most one and do not depend on the order of discovery.
Under ``torchrun`` (RANK, WORLD_SIZE set) the rank is the shard; ``--shard i/n`` sets it by hand, for
Slurm arrays (``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) and Kubernetes indexed jobs.

``--devices all|N`` (:func:`run_workers`) starts the same ``python -m brasyn`` command once per GPU (or N
times on the CPU), each with ``--shard i/n`` and its own ``--device``, so every worker runs the ordinary
batch on its share; SIGTERM is forwarded to all. On the CPU each worker gets its share of the threads one
process would take (``--threads``; unless one was given), since N workers each taking every core would
only fight over them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from brasyn.common.errors import ExitCode, UsageError
from brasyn.common.runtime import torchrun_environment

__all__ = [
    "WORKER_VARIABLE",
    "Shard",
    "is_devices_worker",
    "parse_shard",
    "run_workers",
    "shard_from_environment",
    "thread_share",
    "without_option",
    "worker_count",
]

log = logging.getLogger("brasyn")

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"a shard is i/n with 0 <= i < n, got {self.index}/{self.count}")

    def select(self, items: Sequence[T], key: Callable[[T], str]) -> list[T]:
        """This shard's share of ``items``, in id order."""
        ordered = sorted(items, key=key)
        return ordered[self.index :: self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` to a :class:`Shard`; ValueError with the expected form otherwise."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n (e.g. 0/4), got {text!r}") from None
    return Shard(index, count)


def shard_from_environment(env: Mapping[str, str] | None = None) -> Shard | None:
    """The shard torchrun assigns (RANK of WORLD_SIZE), or None outside torchrun; a malformed variable
    raises :class:`~brasyn.common.errors.UsageError` (see
    :func:`brasyn.common.runtime.torchrun_environment`)."""
    job = torchrun_environment(env)
    return None if job is None else Shard(job.rank, job.world_size)


def without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` less every ``name VALUE`` and ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def worker_count(spec: str, gpus: int) -> int:
    """``all``: one per visible GPU (one on the CPU); a number: that many."""
    spec = str(spec).strip().lower()
    try:
        count = max(gpus, 1) if spec == "all" else int(spec)
    except ValueError:
        raise UsageError(f"--devices takes 'all' or a number of workers, got {spec!r}") from None
    if count < 1:
        raise UsageError("--devices needs at least one worker")
    return count


def thread_share(count: int, threads: int | None = None) -> int:
    """The CPU threads each of ``count`` workers gets: its share of ``threads`` (default: what torch
    takes in this process, all the cores it may use, or ``OMP_NUM_THREADS``), at least one."""
    threads = torch.get_num_threads() if threads is None else threads
    return max(1, threads // count)


WORKER_VARIABLE = "BRASYN_DEVICES_WORKER"
"""Set in the environment of the worker processes that ``--devices`` starts."""


def is_devices_worker() -> bool:
    """Whether this process is one of the workers ``--devices`` started."""
    return os.environ.get(WORKER_VARIABLE) == "1"


def run_workers(
    argv: list[str],
    spec: str,
    shard: Shard | None = None,
    finished: Callable[[list[int]], object] | None = None,
    threads: int = 0,
) -> ExitCode:
    """Run ``argv`` (a ``python -m brasyn`` command line with ``--devices``) in worker processes and
    combine their exit codes: any stopped -> 143, any unusable -> 2, any failed case -> 1. ``--devices``
    makes the shares itself, so a ``shard`` of its own or a torchrun start is refused. ``finished`` is
    called with the workers' exit codes (worker i ran share i) once all have ended, e.g. to merge their
    reports. ``threads``: the run's ``--threads`` (0: not given; on the CPU each worker then gets
    :func:`thread_share`)."""
    if shard is not None or shard_from_environment() is not None:
        raise UsageError(
            "--devices starts its own shares: leave out --shard and do not start it with torchrun"
        )
    gpus = torch.cuda.device_count()
    count = worker_count(spec, gpus)
    base = without_option(without_option(argv, "--devices"), "--device")
    if gpus:
        log.info("starting %d worker(s) on %d GPU(s)", count, gpus)
    else:
        if not threads:
            threads = thread_share(count)
            base = [*without_option(base, "--threads"), "--threads", str(threads)]
        log.info("starting %d worker(s) on the CPU, %d thread(s) each", count, threads)
    # the workers import this very package, installed or not
    package_root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        WORKER_VARIABLE: "1",  # the parent prints the one table of all cases
    }
    workers = []
    for i in range(count):
        device = f"cuda:{i % gpus}" if gpus else "cpu"
        cmd = [sys.executable, "-m", "brasyn", *base, "--shard", f"{i}/{count}", "--device", device]
        workers.append(subprocess.Popen(cmd, env=env))

    def forward(signum: int, frame: Any) -> None:
        for worker in workers:
            worker.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [worker.wait() for worker in workers]
    finally:
        signal.signal(signal.SIGTERM, previous)
    if finished is not None:
        finished(codes)
    if any(code in (ExitCode.TERMINATED, -signal.SIGTERM) for code in codes):
        return ExitCode.TERMINATED
    if any(code == ExitCode.USAGE for code in codes):
        return ExitCode.USAGE
    return ExitCode.FAILED_CASES if any(codes) else ExitCode.OK
