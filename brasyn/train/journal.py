"""The training log, ``log.jsonl`` in a target's training folder: a marker line when a run starts or
resumes, one JSON line per step taken (loss, speed, the examples drawn, validation scores), an end line."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import torch

from brasyn.common.errors import BrasynError
from brasyn.common.measure import peak_rss_mib

__all__ = ["Journal", "gather_draws", "process_age"]


def process_age() -> float | None:
    """Seconds since this process started (Linux), for the time to the first step; None elsewhere."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def gather_draws(draws: list[str], world: int) -> list[list[str]]:
    """Every rank's examples of this step (rank by rank), for the log."""
    if world == 1:
        return [draws]
    shares: list[Any] = [None] * world
    torch.distributed.all_gather_object(shares, draws)
    return shares


class Journal:
    """Appends the lines of ``log.jsonl``; rank 0 alone writes, the other ranks' steps are its own."""

    def __init__(self, folder: Path, rank: int) -> None:
        self.folder = folder
        self.rank = rank

    def write(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        path = self.folder / "log.jsonl"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise BrasynError(
                f"could not write the training log {path} ({exc.strerror or exc}): free space on that disk "
                "(or make it writable), then rerun with --resume"
            ) from None

    def begin(self, step: int, command: str) -> None:
        """The marker line, so that the lines of a resumed run are never mistaken for another run's."""
        self.write({"event": "resume" if step else "start", "step": step, "command": command})

    def end(self, step: int, best: dict[str, Any] | None) -> None:
        """The last line: the peak memory of this process and of its data loader workers, the best kept."""
        self.write(
            {
                "event": "end",
                "step": step,
                "max_rss_mib": peak_rss_mib(),
                "workers_max_rss_mib": peak_rss_mib(resource.RUSAGE_CHILDREN),
                **({"best": best} if best is not None else {}),
            }
        )
