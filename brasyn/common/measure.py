"""Timing, peak memory and the GPU as NVML sees it: one kit for the runs' own figures (a case's peak
memory), the bench and the GPU check, so that a figure means the same wherever it is reported.

Times are wall-clock milliseconds of a call with the device synchronised before and after it, so that
work queued on a GPU is counted where it was asked for.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from brasyn.common.version import __version__

__all__ = [
    "device_environment",
    "elapsed_ms",
    "environment",
    "nvml_device",
    "nvml_memory",
    "peak_cuda_mib",
    "peak_memory_and_nvml",
    "peak_memory_figures",
    "peak_memory_mib",
    "peak_rss_mib",
    "reset_peak_memory",
    "sync",
    "time_ms",
]


def sync(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call of ``fn``, synchronised."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 0) -> dict[str, Any]:
    """The median and every timing of ``repeats`` calls of ``fn`` in milliseconds, after ``warmup``
    untimed calls."""
    for _ in range(warmup):
        fn()
    runs = [elapsed_ms(fn, device) for _ in range(repeats)]
    return {"median": statistics.median(runs), "runs": runs}


def reset_peak_memory(device: torch.device) -> None:
    """Start counting ``device``'s peak memory afresh (the process's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """The largest resident memory of this process (or, with ``RUSAGE_CHILDREN``, of its largest ended
    child) so far, in MiB."""
    return resource.getrusage(who).ru_maxrss / 1024  # kB on Linux


def peak_cuda_mib(device: torch.device) -> float | None:
    """Peak memory torch allocated on ``device`` since the last reset; None on the CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def peak_memory_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on ``device`` since the last reset, or the process's peak RSS on CPU."""
    cuda = peak_cuda_mib(device)
    return peak_rss_mib() if cuda is None else cuda


def peak_memory_figures(device: torch.device) -> dict[str, float]:
    """The process's peak RSS and, on a GPU, torch's peak allocated and reserved memory, in MiB."""
    peak = {"peak_rss_mib": peak_rss_mib()}
    cuda = peak_cuda_mib(device)
    if cuda is not None:
        peak["peak_cuda_mib"] = cuda
        peak["peak_cuda_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    return peak


def peak_memory_and_nvml(device: torch.device) -> dict[str, Any]:
    """torch's peak allocated memory on ``device`` (None on the CPU) with NVML's view beside it."""
    return {"peak_torch_mib": peak_cuda_mib(device), **nvml_memory(device)}


def nvml_device(pynvml: Any, uuid: str) -> Any:
    """The NVML handle of the GPU whose torch properties give ``uuid`` (NVML's indices ignore
    CUDA_VISIBLE_DEVICES, UUIDs do not); NVML must be initialised."""
    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")


def nvml_memory(device: torch.device) -> dict[str, Any]:
    """The GPU's used memory as NVML sees it (all processes, CUDA context and cache included) and the
    driver version; on the CPU nothing."""
    if device.type != "cuda":
        return {}
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = str(torch.cuda.get_device_properties(index).uuid)
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = nvml_device(pynvml, uuid)
            return {
                "nvml_used_mib": int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) / 2**20,
                "driver": str(pynvml.nvmlSystemGetDriverVersion()),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # NVML missing or unusable: the torch figures still stand
        return {"nvml_error": str(exc)}


def environment(device: torch.device) -> dict[str, Any]:
    """Library versions, threads and the device's name."""
    return {
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def device_environment(device: torch.device) -> dict[str, Any]:
    """:func:`environment` with brasyn's version and NVML's view; on a GPU also its free and total
    memory, compute capability and native bfloat16."""
    info: dict[str, Any] = {"brasyn": __version__, **environment(device), **nvml_memory(device)}
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        props = torch.cuda.get_device_properties(device)
        info.update(
            free_mib=free / 2**20,
            total_mib=total / 2**20,
            capability=f"{props.major}.{props.minor}",
            bf16=torch.cuda.is_bf16_supported(including_emulation=False),
        )
    return info
