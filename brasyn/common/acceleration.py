"""How fast the denoiser runs: numeric precision, memory format, backend switches and compilation.

Each switch is independent and measured by ``python -m brasyn.bench``; none changes what is computed
beyond its stated tolerance (tests/common/test_acceleration.py):

- ``precision``: ``fp32`` (the default, the reference's numerics); ``bf16`` runs the network under
  ``torch.autocast`` with bfloat16 (convolutions and linear layers in bfloat16 except the first
  convolution and the output head, GroupNorm statistics in float32); the sampler's state and arithmetic
  stay float32. ``auto`` is bf16 where the device runs it fast (a CUDA GPU with bfloat16 and a cuDNN
  without the slow bf16 Conv3d kernels; a CPU with native bfloat16 such as AVX-512 BF16 or AMX),
  float32 elsewhere. bf16 is opt-in because its effect has only been measured with the demo weights
  (docs/benchmarks.md); ``python -m brasyn.quality precision`` measures it for other weights.
- ``channels_last``: the denoiser's weights and activations in ``channels_last_3d`` (NDHWC), the layout
  the CPU (oneDNN) and tensor-core convolution kernels are fastest in.
- ``tf32``: float32 convolutions and matrix products may use TF32 tensor cores (CUDA, Ampere and newer).
- ``cudnn_benchmark``: cuDNN times its convolution algorithms once per shape and keeps the fastest (every
  case of a batch has the same model shape, so this is paid once).
- ``compile``: ``torch.compile`` with static shapes (fuses GroupNorm, SiLU and the additions; the first
  step of each new shape pays the compilation).
- ``backend``: the engine of the forward, torch or (on a CPU, optional) OpenVINO
  (:mod:`brasyn.common.cpu_backends`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from brasyn.common.cpu_backends import Backend, OpenVinoDenoiser, as_backend, resolve_backend

__all__ = [
    "PRECISIONS",
    "Precision",
    "SpeedSettings",
    "as_precision",
    "configure_backends",
    "cudnn_bf16_conv3d_problem",
    "network_precision",
    "optimise_model",
    "resolve_precision",
]

log = logging.getLogger(__name__)


class Precision(str, enum.Enum):
    """A network precision (see the module text). Its value is the word on command lines and in reports
    and output records; ``str``, formatting and JSON give that word."""

    FP32 = "fp32"
    BF16 = "bf16"
    AUTO = "auto"
    """Resolved per device by :func:`resolve_precision` before a network runs."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


PRECISIONS = tuple(p.value for p in Precision)
"""The words a command line or a parameters file accepts for a precision, in the order they are listed."""

# cuDNN 9.10 to 9.14 run bfloat16/float16 Conv3d up to 4x slower than float32 (pytorch/pytorch#166122)
# and 9.10.2 gives wrong bf16 Conv3d results for large volumes (pytorch/pytorch#163539); 9.15 fixed both.
_SLOW_BF16_CONV3D = (91000, 91500)


@dataclass(frozen=True)
class SpeedSettings:
    """The speed switches of a run; the defaults are the fast path that keeps the reference's results."""

    precision: Precision = Precision.FP32
    """fp32, bf16 or auto (see the module text); given as its word, kept as a :class:`Precision`."""
    channels_last: bool = True
    """Run the denoiser in channels_last_3d."""
    tf32: bool = True
    """Allow TF32 for float32 convolutions and matrix products on CUDA."""
    cudnn_benchmark: bool = True
    """Let cuDNN pick the fastest convolution algorithm per shape."""
    compile: bool = False
    """Compile the denoiser with torch.compile (static shapes)."""
    backend: Backend = Backend.AUTO
    """torch, openvino or auto (:func:`brasyn.common.cpu_backends.resolve_backend`); given as its word."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", as_precision(self.precision))
        object.__setattr__(self, "backend", as_backend(self.backend))

    def configure_backends(self, device: torch.device) -> None:
        """Set this run's process-wide backend switches for ``device`` (:func:`configure_backends`); a
        command does this once, at its entry, never a library object."""
        configure_backends(device, self)


def cudnn_bf16_conv3d_problem(device: torch.device) -> str | None:
    """A sentence when this device's cuDNN has the slow (and, in 9.10.2, wrong) bf16 Conv3d kernels."""
    if device.type != "cuda" or not torch.backends.cudnn.is_available():
        return None
    version = torch.backends.cudnn.version()
    if version is None or not _SLOW_BF16_CONV3D[0] <= version < _SLOW_BF16_CONV3D[1]:
        return None
    major, minor = version // 10000, version // 100 % 100
    cuda_major = (torch.version.cuda or "13").split(".")[0]
    return (
        f"the installed cuDNN {major}.{minor} runs bfloat16 3-D convolutions several times slower than "
        f"float32 (fixed in cuDNN 9.15); install a newer one "
        f"(pip install 'nvidia-cudnn-cu{cuda_major}>=9.15') or run with --precision fp32"
    )


def as_precision(word: str) -> Precision:
    """The :class:`Precision` named ``word``; a ValueError naming the choices for any other."""
    if isinstance(word, Precision):
        return word
    if word not in PRECISIONS:
        raise ValueError(f"unknown precision {word!r}; choose one of {', '.join(PRECISIONS)}")
    return Precision(word)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision a run uses: ``auto`` becomes ``bf16`` or ``fp32`` for this device; an explicit
    ``bf16`` the device cannot run is refused with a ValueError."""
    requested = as_precision(requested)
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
        problem = cudnn_bf16_conv3d_problem(device)
        if requested is Precision.AUTO:
            if supported and problem is None:
                return Precision.BF16
            if problem is not None:
                log.warning("float32 instead of bfloat16: %s", problem)
            return Precision.FP32
        if requested is Precision.BF16:
            if not supported:
                raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16")
            if problem is not None:
                log.warning("%s", problem)
        return requested
    if requested is Precision.AUTO:
        return Precision.BF16 if cpu_has_fast_bf16() else Precision.FP32
    return requested


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bfloat16 kernels on this CPU (its own test: AVX-512 BW, VL and DQ on x86, with
    AVX-512 BF16 or AMX used where present; the BF16 extension on ARM); elsewhere bf16 is emulated slowly."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def configure_backends(device: torch.device, settings: SpeedSettings) -> None:
    """Process-wide backend switches for ``device`` (TF32, cuDNN autotuning); nothing on the CPU."""
    if device.type != "cuda":
        return
    mode = "tf32" if settings.tf32 else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cudnn.benchmark = settings.cudnn_benchmark


def optimise_model(model: nn.Module, device: torch.device, settings: SpeedSettings) -> nn.Module:
    """``model`` in the settings' memory format, compiled when asked, or run by OpenVINO where the
    settings' backend resolves to it (the returned module is then a wrapper sharing the weights)."""
    if resolve_backend(settings.backend, device, settings.compile) is Backend.OPENVINO:
        precision = resolve_precision(settings.precision, device)
        return OpenVinoDenoiser(model.eval(), precision.value, torch.get_num_threads())
    if settings.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    if settings.compile:
        # static shapes: every case of a run has the same model shape, so one graph serves them all
        return torch.compile(model, dynamic=False)
    return model


@contextlib.contextmanager
def network_precision(device: torch.device, precision: str) -> Iterator[None]:
    """``bf16``: autocast with bfloat16 for the network; ``fp32``: nothing changes."""
    if precision == Precision.FP32:
        yield
        return
    if precision != Precision.BF16:
        word = precision.value if isinstance(precision, Precision) else precision
        raise ValueError(f"precision must be resolved to 'fp32' or 'bf16', got {word!r}")
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
