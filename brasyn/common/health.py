"""Facts about the machine a run would start on, each judged as a :class:`Check`: torch and its CUDA and
cuDNN, the NVIDIA driver and the CUDA it supports, each GPU with its free memory and native bfloat16, the
device a run would pick, the user it runs as, whether the output folder can be written, and /dev/shm.

``brasyn doctor`` (:mod:`brasyn.commands.doctor`) prints them with the weights' checks
(:mod:`brasyn.weights.health`). Nothing here writes a file or changes a process-wide setting: a check
must be safe to run before a real run, on the machine of the real run.
"""

from __future__ import annotations

import enum
import logging
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from brasyn.common.acceleration import cudnn_bf16_conv3d_problem
from brasyn.common.identity import choose_identity, folder_owner
from brasyn.common.runtime import NvmlView, nvml_view, select_device, unusable_gpu_problem

__all__ = [
    "Check",
    "Status",
    "device_check",
    "driver_check",
    "gpu_checks",
    "machine_checks",
    "output_check",
    "output_problem",
    "shm_check",
    "torch_check",
    "user_check",
]

log = logging.getLogger(__name__)

SHM_ENOUGH = 1 << 30
"""Below this, /dev/shm is worth a warning (Docker's default is 64 MiB)."""
GPU_FREE_ENOUGH = 2 << 30
"""Below this much free memory, a GPU is mostly taken by other processes."""


class Status(str, enum.Enum):
    """How a check came out; its value is the word printed in front of the line."""

    OK = "ok"
    WARNING = "warning"
    """The run works, but not as well as it could (slowly, demo results, ...)."""
    PROBLEM = "problem"
    """The run would fail, or its outputs would be worthless."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Check:
    """One judged fact: what was looked at, how it came out, what was seen and what to do about it."""

    name: str
    status: Status
    detail: str
    advice: str = ""
    """What to do; empty where there is nothing to do."""

    def line(self) -> str:
        """The check as one printed line: ``<status> <name>: <detail> -> <advice>``."""
        text = f"{self.status.value:<7} {self.name}: {self.detail}"
        return f"{text} -> {self.advice}" if self.advice else text


def torch_check() -> Check:
    """torch's version and the CUDA and cuDNN it was built with (a cuDNN with the slow bf16 Conv3d
    kernels is a warning)."""
    cuda = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None
    detail = f"torch {torch.__version__}, " + (
        f"CUDA {cuda}, cuDNN {_cudnn_text(cudnn)}" if cuda else "a CPU build (no CUDA, no cuDNN)"
    )
    if torch.cuda.is_available():
        problem = cudnn_bf16_conv3d_problem(torch.device("cuda", 0))
        if problem:
            return Check("torch", Status.WARNING, detail, problem)
    return Check("torch", Status.OK, detail)


def _cudnn_text(version: int | None) -> str:
    if version is None:
        return "none"
    return f"{version // 10000}.{version // 100 % 100}.{version % 100}"


def driver_check(view: NvmlView | None = None, *, read: bool = True) -> Check:
    """The NVIDIA driver, the newest CUDA it supports and the GPUs it sees (``view``, read through NVML
    when ``read`` and none is given); a problem when it sees GPUs this torch cannot use."""
    if view is None and read:
        view = nvml_view()
    if view is None:
        return Check(
            "driver",
            Status.WARNING,
            "no NVIDIA driver found (NVML cannot be read)",
            "on a GPU machine install the NVIDIA driver (in a container: docker run --gpus all)",
        )
    supports = f"CUDA up to {view.cuda[0]}.{view.cuda[1]}" if view.cuda else "an unknown CUDA version"
    detail = f"NVIDIA driver {view.driver}, supports {supports}, sees {view.gpus} GPU(s)"
    problem = unusable_gpu_problem(view)
    if problem:
        return Check("driver", Status.PROBLEM, detail, problem)
    return Check("driver", Status.OK, detail)


def gpu_checks() -> list[Check]:
    """One check per visible GPU (name, free and total memory, native bfloat16); one warning where none
    is visible, since synthesis on the CPU is slow."""
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return [
            Check(
                "gpu",
                Status.WARNING,
                "no CUDA GPU visible: synthesis runs on the CPU, slowly (hours per case with the "
                "1000-step sampler)",
                "run where a GPU is visible (docker run --gpus all), or take a fast sampler "
                "(--sampler dpm++2m --steps 10)",
            )
        ]
    checks = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        bf16 = props.major >= 8  # bfloat16 tensor cores: Ampere (8.0) and newer
        detail = (
            f"cuda:{index} {props.name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free, compute "
            f"capability {props.major}.{props.minor}, "
            + ("native bf16 (--precision bf16 or auto)" if bf16 else "no native bf16 (keep --precision fp32)")
        )
        if free < GPU_FREE_ENOUGH:
            checks.append(
                Check(
                    f"gpu {index}",
                    Status.WARNING,
                    detail,
                    "other processes hold most of its memory; free it, or let --device auto pick the GPU "
                    "with the most free memory",
                )
            )
        else:
            checks.append(Check(f"gpu {index}", Status.OK, detail))
    return checks


def device_check(spec: str = "auto") -> Check:
    """The device a run with ``--device spec`` would compute on; a problem where it cannot be had."""
    try:
        device = select_device(spec)
    except ValueError as exc:
        return Check("device", Status.PROBLEM, f"--device {spec} cannot be used: {exc}", _DEVICE_ADVICE)
    return Check("device", Status.OK, f"--device {spec} runs on {device}")


_DEVICE_ADVICE = "give --device auto or cpu, or make the GPU visible (docker run --gpus all)"


def user_check(output: Path) -> Check:
    """The uid and gid a run would write as: this process's, or, where root would write into an output
    folder another user owns, that owner's (the main job and MLCube's ``infer`` switch to it before any
    case, :mod:`brasyn.common.identity`), so that the outputs never belong to root."""
    uid, gid = os.getuid(), os.getgid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = "no passwd entry"
    detail = f"uid {uid} ({name}), gid {gid}"
    identity = choose_identity(uid, *folder_owner(output))
    if identity is not None:
        return Check(
            "user",
            Status.OK,
            f"{detail}: the run switches to uid {identity.uid}, gid {identity.gid}, the owner of {output}, "
            "so that the outputs belong to it",
        )
    return Check("user", Status.OK, detail)


def output_problem(output: Path) -> str | None:
    """Why this user could not write into ``output`` (creating it where it is missing), None where it
    could; nothing is created: the nearest existing folder above a missing one is what is asked."""
    if output.exists():
        if not output.is_dir():
            return f"the output {output} is a file, not a folder"
        if not os.access(output, os.W_OK | os.X_OK):
            return f"the output folder {output} is not writable by this user (uid {os.getuid()})"
        return None
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"the output folder {output} cannot be created: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return (
            f"the output folder {output} cannot be created: {parent} is not writable by this user "
            f"(uid {os.getuid()})"
        )
    return None


def output_check(output: Path) -> Check:
    """Whether the run's user may write the output folder (or create it); nothing is created."""
    problem = output_problem(output)
    if problem:
        return Check(
            "output",
            Status.PROBLEM,
            problem,
            "mount it writable for this user (docker run -v OUT:/output, OUT owned by the run's uid) or "
            "choose another folder with --output",
        )
    state = "exists" if output.is_dir() else "does not exist yet and can be created"
    return Check("output", Status.OK, f"{output} {state}, writable by uid {os.getuid()}")


def shm_check(path: Path = Path("/dev/shm")) -> Check:
    """The size of /dev/shm, where the training loader's workers pass their batches (Docker's default of
    64 MiB is too small for them)."""
    try:
        total = shutil.disk_usage(path).total
    except OSError:
        return Check("shm", Status.WARNING, f"{path} is missing", _SHM_ADVICE)
    detail = f"{path} {total / 2**20:.0f} MiB"
    if total < SHM_ENOUGH:
        return Check("shm", Status.WARNING, f"{detail}: too small for training's loader workers", _SHM_ADVICE)
    return Check("shm", Status.OK, detail)


_SHM_ADVICE = "give the container more (docker run --shm-size=4g), or train with --workers 0"


def machine_checks(output: Path, device: str = "auto") -> list[Check]:
    """Every check of this module, in the order ``brasyn doctor`` prints them."""
    return [
        torch_check(),
        driver_check(),
        *gpu_checks(),
        device_check(device),
        user_check(output),
        output_check(output),
        shm_check(),
    ]
