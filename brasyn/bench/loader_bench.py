"""``python -m brasyn.bench loader``: how fast the training data loader delivers batches from a cache;
``python -m brasyn.bench quantisation``: what the cache's uint16 steps do to the data and the loss.

    python -m brasyn.bench loader --cache DIR [--workers N] [--patch D H W] [--batch-size B]
        [--target t2f] [--steps N] [--warmup N] [--step-ms MS] [--flip] [--json FILE] [-v]

It runs the loader training uses (:func:`brasyn.train.loader.make_loader`, the same draws, workers, pinning on
a GPU machine) and prints JSON: ``samples_per_s`` (examples delivered per second after ``--warmup``
batches), ``wait_ms`` (the main process's wait for each batch: mean, median, 95th percentile),
``first_batch_s`` (worker start and the first batch) and the peak resident memory of the main process
and of the workers. Without ``--step-ms`` the main process takes batches as fast as they come (the
loader's own rate); with ``--step-ms`` set to a training step's time (``steps_per_s`` in the training
log, or the bench's timings) it waits that long per batch as the GPU would: a ``wait_ms`` near 0 then
means the loader keeps up and the GPU is the bottleneck; otherwise the loader is, and more
``--workers`` (or faster disks, or a warm page cache) help.

    python -m brasyn.bench quantisation --data DIR [--json FILE]

brings each complete case of DIR into model space as ``prepare`` does and prints, per case, the largest
and mean error of the stored values in [0, 1], the largest error of the t2f image restored to its own
units (and as a share of its 99.9th percentile), and the training loss of a tiny random denoiser on the
same 96³ crop with the same t and noise, from the exact and from the stored values.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brasyn.common.errors import UsageError
from brasyn.common.measure import peak_rss_mib
from brasyn.data.modalities import Modality
from brasyn.train.cache import SCALE, load_entries
from brasyn.train.loader import CacheDataset, StepBatches, end_workers, make_loader
from brasyn.transform.preprocess import MULTIPLE

__all__ = ["LoaderBenchSettings", "measure", "quantisation"]


@dataclass(frozen=True)
class LoaderBenchSettings:
    """What the loader bench reads and how it draws: the flags of ``python -m brasyn.bench loader``."""

    cache: Path
    """A prepared case cache (:mod:`brasyn.train.cache`)."""
    workers: int = 2
    """Loader processes (0: the main thread)."""
    patch: tuple[int, int, int] | None = None
    """Patch size; None: whole volumes."""
    batch_size: int = 1
    target: str = "t2f"
    """The contrast placed last."""
    steps: int = 40
    """Timed batches."""
    warmup: int = 4
    """Batches before timing."""
    step_ms: float = 0.0
    """A simulated training step per batch, in milliseconds."""
    flip: bool = False
    seed: int = 0


def measure(settings: LoaderBenchSettings) -> dict[str, Any]:
    """The loader's rate and the main process's wait per batch (each figure: the module's text)."""
    if settings.patch is not None and any(p <= 0 or p % MULTIPLE for p in settings.patch):
        raise UsageError(f"--patch sizes must be positive multiples of {MULTIPLE}")
    if not settings.cache.is_dir():
        raise UsageError(f"the cache folder {settings.cache} does not exist: python -m brasyn.train prepare")
    entries = load_entries(settings.cache)
    if not entries:
        raise UsageError(f"the cache {settings.cache} holds no prepared case: python -m brasyn.train prepare")
    data = CacheDataset(entries, Modality(settings.target), settings.patch, settings.flip)
    batches = StepBatches(data, settings.batch_size, settings.seed)
    total = settings.warmup + settings.steps
    pin = torch.cuda.is_available()
    start = time.perf_counter()
    loader = iter(make_loader(batches, 0, total, settings.workers, pin_memory=pin))
    waits, shape, first = [], None, 0.0
    try:
        for i in range(total):
            asked = time.perf_counter()
            batch, _ = next(loader)
            got = time.perf_counter()
            if i == 0:
                first = got - start
            if i == settings.warmup:
                timed_from = asked
            if i >= settings.warmup:
                waits.append(got - asked)
            shape = tuple(batch.shape)
            del batch
            if settings.step_ms:
                time.sleep(settings.step_ms / 1e3)
        seconds = time.perf_counter() - timed_from
    finally:
        end_workers(loader)  # now, also on an error; so their peak memory is counted below
        del loader
    waits_ms = sorted(w * 1e3 for w in waits)
    return {
        "cache": str(settings.cache),
        "entries": len(entries),
        "workers": settings.workers,
        "batch_shape": list(shape or ()),
        "pin_memory": pin,
        "step_ms": settings.step_ms,
        "steps": settings.steps,
        "samples_per_s": settings.steps * settings.batch_size / seconds,
        "wait_ms": {
            "mean": statistics.fmean(waits_ms),
            "median": statistics.median(waits_ms),
            "p95": waits_ms[min(len(waits_ms) - 1, int(0.95 * len(waits_ms)))],
        },
        "first_batch_s": first,
        "peak_rss_mib": {
            "main": peak_rss_mib(resource.RUSAGE_SELF),
            "workers": peak_rss_mib(resource.RUSAGE_CHILDREN),
        },
    }


def quantisation(data: Path) -> dict[str, Any]:
    import numpy as np

    from brasyn.data.modalities import MODALITIES
    from brasyn.data.volumes import load_volume
    from brasyn.train.cache import dequantise, quantise
    from brasyn.train.settings import TrainSettings
    from brasyn.train.trainer import Trainer
    from brasyn.train.training_data import TrainingCase, TrainingSet, find_training_cases
    from brasyn.transform.model_space import from_model_space, to_model_space

    out: dict[str, Any] = {}
    target = Modality.T2F
    for case in find_training_cases([data]):
        volumes = {m: load_volume(case.files[m], case.id) for m in MODALITIES}
        exact, record = to_model_space(volumes, MODALITIES, case.id)
        stored = dequantise(quantise(exact))
        error = np.abs(stored - exact)
        ratios = {m: record.percentiles[target] / record.percentiles[m] for m in MODALITIES[:3]}
        channel = MODALITIES.index(target)
        a, b = (from_model_space(x[channel], record, ratios) for x in (exact, stored))
        p999 = float(np.percentile(a[a > 0], 99.9))
        crop = (
            slice(None),
            *(slice(n // 2 - min(96, n) // 2, n // 2 + min(96, n) // 2) for n in exact.shape[1:]),
        )
        case_set = TrainingSet([TrainingCase(case.id, exact, exact.any(axis=0), {})])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(TrainSettings(target, "tiny"), case_set, Path(tmp), torch.device("cpu"))
            losses = []
            for x in (exact, stored):
                trainer.generator.manual_seed(0)
                with torch.no_grad():
                    losses.append(float(trainer.loss(torch.from_numpy(np.ascontiguousarray(x[crop]))[None])))
        out[case.id] = {
            "model_space_max_abs": float(error.max()),
            "model_space_mean_abs": float(error[exact > 0].mean()),
            "restored_max_abs": float(np.abs(a - b).max()),
            "restored_p999": p999,
            "restored_max_abs_of_p999": float(np.abs(a - b).max()) / p999,
            "loss_exact": losses[0],
            "loss_stored": losses[1],
            "loss_relative_difference": abs(losses[0] - losses[1]) / losses[0],
        }
    return {"data": str(data), "scale": SCALE, "cases": out}
