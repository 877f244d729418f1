"""Training batches streamed from the case cache (:mod:`brasyn.train.cache`) through a ``torch.utils.data``
``DataLoader``: worker processes cut each step's batch, only the drawn window is read from each case's
memory map, batches are prefetched and (for a GPU) pinned. Memory is a few batches whatever the number
of cases: the dataset holds each case's shape and brain voxel counts, nothing else.

Item ``step`` of :class:`StepBatches` is the batch of that optimiser step on this rank (the draws of
:mod:`brasyn.train.draws`): the same seed, world size and step give the same batch, every rank draws its own
stream from all cases, and :class:`StepSampler` starts the stream at the step a resumed run is at.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from brasyn.common.errors import BrasynError
from brasyn.data.modalities import MODALITIES, Modality, conditions_for
from brasyn.train.cache import SCALE, CacheEntry
from brasyn.train.draws import Draw, draw, step_generator

__all__ = [
    "CacheDataset",
    "CacheEntryError",
    "ExampleSource",
    "StepBatches",
    "StepSampler",
    "decode",
    "end_workers",
    "make_loader",
]


class CacheEntryError(BrasynError):
    """A cache entry's array changed or broke after training started (the JSON is checked at start)."""

    ADVICE = (
        "prepare the cache again (python -m brasyn.train prepare --data DIR --cache CACHE), then train with "
        "--resume"
    )

    @classmethod
    def from_worker(cls, exc: BaseException) -> CacheEntryError:
        """The error as it reached the main process: a DataLoader worker's exception arrives with the
        worker's traceback in its text; its last line is the message."""
        text = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        prefix = f"{cls.__module__}.{cls.__name__}: "
        return cls(text.split(prefix, 1)[-1].removeprefix(f"{cls.__name__}: "))


class ExampleSource(Protocol):
    """What :class:`StepBatches` cuts batches from: the in-memory
    :class:`brasyn.train.training_data.TrainingSet` or the cache's :class:`CacheDataset`, which draw alike."""

    dtype: torch.dtype
    """What :meth:`fill` writes: float32 model-space values or the cache's uint16 steps (:func:`decode`)."""

    def draw(self, generator: torch.Generator) -> Draw: ...

    def fill(self, example: Draw, out: np.ndarray) -> None:
        """Write the (4, d, h, w) example into ``out``: three conditions, then the target."""

    def name(self, case: int) -> str: ...


class CacheDataset:
    """Examples for one target drawn from cache entries; a draw reads only its window from the map. The
    examples stay in the cache's uint16 steps (half the bytes to move between processes and to the GPU);
    :func:`decode`, on the device, makes them model-space values."""

    dtype = torch.uint16

    def __init__(
        self,
        entries: Sequence[CacheEntry],
        target: Modality,
        patch: tuple[int, int, int] | None = None,
        flip: bool = False,
    ) -> None:
        if not entries:
            raise ValueError("a CacheDataset needs at least one entry")
        self.entries = list(entries)
        self.channels = [MODALITIES.index(m) for m in (*conditions_for(target), target)]
        self.shapes = [tuple(e.shape[1:]) for e in self.entries]
        self.brain_slices = [e.brain_slices for e in self.entries]
        self.patch = patch
        self.flip = flip

    @property
    def population(self) -> dict[str, dict[Modality, float]]:
        return {e.id: e.percentiles for e in self.entries}

    def _array(self, case: int) -> np.ndarray:
        # opened per draw: a map costs an open and a header read, and no descriptors pile up over many cases
        entry = self.entries[case]
        try:
            array = np.load(entry.array, mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:
            raise CacheEntryError(f"the cache entry {entry.array} cannot be read ({exc})") from None
        if array.shape != tuple(entry.shape) or array.dtype != np.uint16:
            raise CacheEntryError(
                f"the cache entry {entry.array} holds a {array.dtype} array of shape {array.shape}, its JSON "
                f"says uint16 {tuple(entry.shape)}"
            )
        return array

    def _brain_slice(self, case: int, d: int) -> np.ndarray:
        # the cache keeps non-zero voxels non-zero, so the brain (any contrast non-zero) is exact, and its
        # count must be the JSON's: an array zeroed or overwritten since it was prepared differs here
        mask = self._array(case)[:, d].any(axis=0)
        self._check_count(case, d, int(mask.sum()))
        return mask

    def _check_count(self, case: int, d: int, found: int) -> None:
        expected = int(self.brain_slices[case][d])
        if found != expected:
            raise CacheEntryError(
                f"the cache entry {self.entries[case].array} does not hold the data its JSON describes "
                f"(slice {d}: {found} brain voxels, its JSON says {expected}): it was zeroed or overwritten "
                "after it was prepared"
            )

    def draw(self, generator: torch.Generator) -> Draw:
        return draw(generator, self.shapes, self.brain_slices, self._brain_slice, self.patch, self.flip)

    def fill(self, example: Draw, out: np.ndarray) -> None:
        array = self._array(example.case)
        for i, channel in enumerate(self.channels):
            source = array[(channel, *example.window)]
            for axis in example.flips:
                source = np.flip(source, axis)
            out[i] = source
        if self.patch is None:
            # a whole volume draws no slice (a patch's draw checks one): check its fullest slice
            d = int(np.argmax(self.brain_slices[example.case]))
            found = out[:, out.shape[1] - 1 - d if 0 in example.flips else d].any(axis=0).sum()
            self._check_count(example.case, d, int(found))

    def name(self, case: int) -> str:
        return self.entries[case].id


class StepBatches(Dataset):
    """Item ``step``: (the (B, 4, D, H, W) batch of that step on ``rank`` in the source's dtype, each
    example's description ``case@d,h,w[/f<axes>]``)."""

    def __init__(self, source: ExampleSource, batch_size: int, seed: int, rank: int = 0) -> None:
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank

    def __getitem__(self, step: int) -> tuple[torch.Tensor, list[str]]:
        generator = step_generator(self.seed, self.rank, step)
        # every draw first (they alone use the generator), then the reads into one buffer
        draws = [self.source.draw(generator) for _ in range(self.batch_size)]
        sizes = {tuple(s.stop - s.start for s in d.window) for d in draws}
        if len(sizes) > 1:
            raise BrasynError(
                "the training cases have different model-space sizes, so they cannot share a batch: "
                "use --patch D H W or --batch-size 1"
            )
        shape = (len(draws), 4, *sizes.pop())
        if get_worker_info() is None:
            batch = torch.empty(shape, dtype=self.source.dtype)
        else:
            # made in shared memory: a worker's batch reaches the main process without another copy
            itemsize = torch.empty(0, dtype=self.source.dtype).element_size()
            storage = torch.UntypedStorage._new_shared(int(np.prod(shape)) * itemsize)
            batch = torch.empty(0, dtype=self.source.dtype).set_(storage, 0, shape)
        view = batch.numpy()
        for b, example in enumerate(draws):
            self.source.fill(example, view[b])
        return batch, [d.describe(self.source.name(d.case)) for d in draws]


def decode(batch: torch.Tensor) -> torch.Tensor:
    """A batch as float32 model-space values in [0, 1] (the cache's uint16 steps divided by its scale,
    exactly as :func:`brasyn.train.cache.dequantise`)."""
    if batch.dtype == torch.uint16:
        return batch.to(torch.float32).div_(SCALE)
    return batch


class StepSampler(Sampler[int]):
    """The steps ``start`` .. ``stop`` - 1 in order; the rank's own stream comes from :class:`StepBatches`
    (seeded by rank and step), so each rank sees all cases, not a fixed share of them."""

    def __init__(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


def _worker_init(worker: int) -> None:
    # a job system's SIGTERM goes to the whole process group: the main process saves the training state
    # and ends the workers; a worker must not die first and turn the stop into a loader error
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def end_workers(batches: Iterator[Any]) -> None:
    """End the worker processes of a loader's iterator now. Needed where an error is on its way out: its
    traceback keeps the iterator alive, and its workers, which ignore SIGTERM (:func:`_worker_init`),
    would otherwise be left to the end of the process and block its exit."""
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def make_loader(
    batches: StepBatches, start: int, stop: int, workers: int, pin_memory: bool, prefetch: int = 2
) -> DataLoader:
    """The batches of steps ``start`` .. ``stop`` - 1; ``workers`` 0 cuts them on the main thread."""
    return DataLoader(
        batches,
        batch_size=None,
        sampler=StepSampler(start, stop),
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch if workers else None,
        worker_init_fn=_worker_init if workers else None,
    )
