"""Where and how the maths runs: device choice, torchrun's process layout, per-case seeds, the heap."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from brasyn.common.errors import UsageError
from brasyn.common.measure import nvml_device

__all__ = [
    "GpuInfo",
    "TorchrunEnvironment",
    "case_generator",
    "case_seed",
    "return_freed_memory",
    "select_device",
    "torchrun_environment",
    "writable_cache_environment",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    """CUDA index as torch sees it (after CUDA_VISIBLE_DEVICES)."""
    name: str
    free_bytes: int


def _gpus_by_free_memory() -> list[GpuInfo]:
    """Visible GPUs with their free memory, read through NVML without creating CUDA contexts."""
    import pynvml  # nvidia-ml-py; only needed where CUDA is

    pynvml.nvmlInit()
    try:
        infos = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            handle = nvml_device(pynvml, str(props.uuid))
            free = int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
            infos.append(GpuInfo(index, props.name, free))
        return infos
    finally:
        pynvml.nvmlShutdown()


def pick_gpu(gpus: list[GpuInfo]) -> GpuInfo:
    """The GPU with the most free memory (the lowest index on ties)."""
    return max(gpus, key=lambda g: (g.free_bytes, -g.index))


FLAVOURS = {"cu126": (12, 6), "cu128": (12, 8), "cu130": (13, 0)}
"""The CUDA builds of torch the image can be built with (``--build-arg TORCH_CUDA=...``)."""
MIN_DRIVER = {12: "525", 13: "580"}
"""Oldest NVIDIA driver series that runs a CUDA major version (12.x through minor-version compatibility)."""


@dataclass(frozen=True)
class NvmlView:
    """What the NVIDIA driver itself reports, independent of torch."""

    gpus: int
    driver: str
    cuda: tuple[int, int] | None
    """Newest CUDA version the driver supports."""


def nvml_view() -> NvmlView | None:
    """The driver's own view (GPU count, driver version, newest CUDA it supports); None without NVML
    (no driver, no GPU, or nvidia-ml-py missing)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        try:
            version = int(pynvml.nvmlSystemGetCudaDriverVersion())
            cuda = (version // 1000, version % 1000 // 10)
        except Exception:
            cuda = None
        return NvmlView(count, driver, cuda)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def unusable_gpu_problem(view: NvmlView | None) -> str | None:
    """A sentence when the driver sees GPUs that this torch cannot use (a driver older than the CUDA
    runtime torch was built with, or a CPU build of torch); None when there is nothing to say."""
    if view is None or view.gpus == 0 or torch.cuda.is_available():
        return None
    built = torch.version.cuda
    supports = f"CUDA up to {view.cuda[0]}.{view.cuda[1]}" if view.cuda else "an unknown CUDA version"
    seen = f"the NVIDIA driver {view.driver} sees {view.gpus} GPU(s) (it supports {supports})"
    if built is None:
        return (
            f"{seen}, but this torch is a CPU build, so it cannot use them; install the CUDA build of "
            "torch (or use the brasyn image), or run on the CPU with --device cpu"
        )
    major = int(built.split(".")[0])
    fits = [
        name
        for name, (flavour_major, _) in FLAVOURS.items()
        if view.cuda is not None
        and flavour_major <= view.cuda[0]
        and int(MIN_DRIVER[flavour_major]) <= _series(view)
    ]
    rebuild = (
        f"or rebuild the image for this driver: docker build --build-arg TORCH_CUDA={fits[-1]} ."
        if fits
        else f"no build of brasyn runs on this driver (CUDA 12 needs the {MIN_DRIVER[12]} series or newer)"
    )
    return (
        f"{seen}, but this build of torch needs CUDA {built}, which the driver cannot run: install an NVIDIA "
        f"driver of the {MIN_DRIVER.get(major, '?')} series or newer, {rebuild}; --device cpu runs on the "
        "CPU instead (hours per case with the full sampler)"
    )


def _series(view: NvmlView) -> int:
    try:
        return int(view.driver.split(".")[0])
    except ValueError:
        return 0


def select_device(spec: str = "auto") -> torch.device:
    """``auto``: the visible GPU with the most free memory (under torchrun: this process's own, LOCAL_RANK),
    else the CPU (with a warning); ``cpu``, ``cuda`` or ``cuda:N``: exactly that. A ValueError says why a
    device cannot be used, also when the driver sees GPUs that this torch cannot use (``auto`` and
    ``cuda``: a silent fall-back to the CPU would take hours per case)."""
    spec = spec.strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    if spec != "auto" and not spec.startswith("cuda"):
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    problem = unusable_gpu_problem(nvml_view()) if not torch.cuda.is_available() else None
    if problem:
        raise ValueError(problem)
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {spec} was asked for, but no CUDA GPU is visible (is --gpus passed?)")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} GPU(s) are visible")
        return device
    job = torchrun_environment()
    if job is not None and torch.cuda.is_available() and torch.cuda.device_count() > 0:
        # under torchrun each process takes its own GPU, not the one with the most free memory
        return torch.device("cuda", job.local_rank % torch.cuda.device_count())
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        try:
            gpu = pick_gpu(_gpus_by_free_memory())
            log.info("using GPU %d (%s, %.1f GiB free)", gpu.index, gpu.name, gpu.free_bytes / 2**30)
            return torch.device("cuda", gpu.index)
        except Exception as exc:  # NVML missing or unusable: torch's own view is still fine
            log.info("NVML unavailable (%s); using cuda:0", exc)
            return torch.device("cuda", 0)
    log.warning("no usable GPU found: running on the CPU with %d threads", torch.get_num_threads())
    return torch.device("cpu")


@dataclass(frozen=True)
class TorchrunEnvironment:
    """Where this process stands in a torchrun job (or any launcher that sets the same variables)."""

    rank: int
    """This process's index among all processes of the job (RANK)."""
    world_size: int
    """How many processes the job has (WORLD_SIZE)."""
    local_rank: int
    """This process's index on its node (LOCAL_RANK), which picks its GPU."""


def torchrun_environment(env: Mapping[str, str] | None = None) -> TorchrunEnvironment | None:
    """The job layout torchrun gives this process, or None outside torchrun (RANK or WORLD_SIZE unset).

    Read in one place so that inference sharding, training and device choice agree on it. LOCAL_RANK
    defaults to 0 (a one-node launcher may leave it out); a value that is not a whole number is a
    broken launch, refused with a :class:`UsageError` naming the variable rather than a traceback.
    """
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        text = env.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise UsageError(
                f"the environment variable {name}={text!r} is not a whole number; torchrun sets RANK, "
                "WORLD_SIZE and LOCAL_RANK itself: unset them when not starting through torchrun"
            ) from None
    return TorchrunEnvironment(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def case_seed(seed: int, case_id: str, draw: int = 0) -> int:
    """A seed for draw ``draw`` of one case, fixed by the run's seed, the case id and the draw's index
    alone (not by batch order, shard or how many draws a run takes)."""
    # draw 0 keeps the seed a one-draw run always had, so its outputs stay the bytes they were
    key = f"{seed}:{case_id}" if draw == 0 else f"{seed}:{case_id}:draw{draw}"
    # the file system's bytes for a folder name that is not UTF-8 (surrogate escapes); UTF-8 as before
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def case_generator(seed: int, case_id: str, device: torch.device, draw: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(case_seed(seed, case_id, draw))


def return_freed_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``): on the CPU the allocator
    otherwise keeps what each training step freed, scattered, and the process's size creeps up from step
    to step. False where there is no glibc."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (a libc without it is not glibc)
        except (OSError, AttributeError):
            _LIBC = False
    if not _LIBC:
        return False
    _LIBC.malloc_trim(0)
    return True


_LIBC: ctypes.CDLL | bool | None = None


def writable_cache_environment() -> dict[str, str]:
    """Cache variables pointed at a writable place when the process has no usable home (container
    started with an arbitrary uid): torch and others must never try to write to '/' or a missing home."""
    import tempfile

    changes = {}
    home = os.environ.get("HOME", "")
    if not home or not os.access(home, os.W_OK):
        base = tempfile.gettempdir()
        for var in ("HOME", "XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR"):
            if var == "HOME" or not os.environ.get(var):
                changes[var] = base if var == "HOME" else os.path.join(base, var.lower())
    return changes
