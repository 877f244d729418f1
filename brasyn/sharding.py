"""Which cases this process takes when a batch is spread over processes, GPUs or nodes.

A shard is ``index/count``: the cases sorted by id, every ``count``-th from position ``index``, so shards
are disjoint, cover every case, differ in size by at most one and do not depend on the order of discovery.
Under ``torchrun`` (RANK, WORLD_SIZE set) the rank is the shard; ``--shard i/n`` sets it by hand, for
Slurm arrays (``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) and Kubernetes indexed jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from brasyn.runtime import torchrun_environment

__all__ = ["Shard", "parse_shard", "shard_from_environment"]

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
    raises :class:`~brasyn.errors.UsageError` (see :func:`brasyn.runtime.torchrun_environment`)."""
    job = torchrun_environment(env)
    return None if job is None else Shard(job.rank, job.world_size)
