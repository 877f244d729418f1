"""Which engine runs the denoiser's forward: torch (eager, or compiled with ``--compile``) or, on a CPU
with the optional ``brasyn[cpu]`` extra installed, OpenVINO.

``--backend torch`` is brasyn's own network in torch; ``--backend openvino`` converts that same network
(the loaded weights, shared, not copied) to an OpenVINO model when it first runs and compiles it for the
CPU with the run's precision as its inference precision and the run's thread count; the sampler around
it is unchanged. ``auto`` (the default) is :data:`ADOPTED_CPU_BACKEND` where it is installed, torch
everywhere else: OpenVINO is taken only where ``python -m brasyn.bench backends`` measured it at least
1.3x faster than eager bf16 over a batch, start-up included, within the error bound (docs/benchmarks.md).
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "ADOPTED_CPU_BACKEND",
    "BACKENDS",
    "Backend",
    "OpenVinoDenoiser",
    "as_backend",
    "openvino_available",
    "resolve_backend",
]

log = logging.getLogger(__name__)

INSTALL = "pip install 'brasyn[cpu]'"
"""How a user gets the OpenVINO runtime (the optional extra)."""


class Backend(str, enum.Enum):
    """An engine for the denoiser; its value is the word on command lines and in reports."""

    AUTO = "auto"
    """Resolved per device by :func:`resolve_backend` before a network runs."""
    TORCH = "torch"
    OPENVINO = "openvino"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


BACKENDS = tuple(b.value for b in Backend)
"""The words a command line, a config file or a parameters file accepts for ``--backend``."""

ADOPTED_CPU_BACKEND = Backend.TORCH
"""What ``auto`` uses on a CPU where OpenVINO is installed. Torch: on the machine of the measurement
(docs/benchmarks.md, "The CPU's floor and the backends") OpenVINO bf16 took 18.2 s an official-size
forward against eager bf16's 22.7 s, about 1.2x over a batch of ten 10-step cases with its start-up,
below the 1.3x adoption asks, and its error sat at the bound (4.9e-3 of the output's largest value
against 5e-3); ``--backend openvino`` chooses it anyway."""


def openvino_available() -> bool:
    """Whether the optional OpenVINO runtime is installed (``pip install 'brasyn[cpu]'``)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
        return False


def as_backend(word: str) -> Backend:
    """The :class:`Backend` named ``word``; a ValueError naming the choices for any other."""
    if isinstance(word, Backend):
        return word
    if word not in BACKENDS:
        raise ValueError(f"unknown backend {word!r}; choose one of {', '.join(BACKENDS)}")
    return Backend(word)


def resolve_backend(requested: str, device: torch.device, compile: bool = False) -> Backend:
    """The engine a run uses on ``device``: ``auto`` becomes :data:`ADOPTED_CPU_BACKEND` on a CPU where it
    is installed and torch elsewhere; an explicit ``openvino`` that cannot run here (a GPU, the extra not
    installed, ``--compile``, which is torch's) is refused with a ValueError saying what to do."""
    requested = as_backend(requested)
    if requested is Backend.AUTO:
        if device.type == "cpu" and not compile and ADOPTED_CPU_BACKEND is Backend.OPENVINO:
            if openvino_available():
                return Backend.OPENVINO
            log.info("OpenVINO is not installed (%s): the denoiser runs in torch", INSTALL)
        return Backend.TORCH
    if requested is Backend.OPENVINO:
        if device.type != "cpu":
            raise ValueError(
                f"--backend openvino runs on the CPU; this run is on {device} (use --backend torch)"
            )
        if compile:
            raise ValueError("--compile compiles the torch backend; give it or --backend openvino, not both")
        if not openvino_available():
            raise ValueError(f"--backend openvino needs the OpenVINO runtime: {INSTALL} (or --backend torch)")
    return requested


class OpenVinoDenoiser(nn.Module):
    """The denoiser's forward run by OpenVINO's CPU plugin; the torch module inside keeps the weights.

    The network is converted on the first call (traced at the smallest volume it takes, every dimension
    left dynamic, so one compiled model serves every volume and batch size) outside autocast and
    inference mode, and compiled once with ``precision`` (``bf16`` or ``fp32``) as its inference precision and
    ``threads`` threads. Takes and returns float32 CPU tensors, as the torch module does under autocast
    once the sampler's ``.float()`` has been applied."""

    def __init__(self, model: nn.Module, precision: str, threads: int) -> None:
        super().__init__()
        self.model = model
        self.precision = {"bf16": "bf16", "fp32": "f32"}[str(precision)]
        self.threads = threads
        self._compiled: Any = None

    def _compile(self, x: torch.Tensor, t: torch.Tensor) -> Any:
        import openvino as ov

        start = time.perf_counter()
        with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
            example = self._example(x)
            with warnings.catch_warnings():
                # the network's own shape checks become constants of the trace; every input of a run
                # passes them, and the converted model keeps every dimension dynamic
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                converted = ov.convert_model(self.model, example_input=example)
        converting = time.perf_counter() - start
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "INFERENCE_NUM_THREADS": self.threads,
            # torch works on the same cores between forwards (the wavelets, the sampler): OpenVINO's
            # threads are left unpinned; its own forward took as long either way (docs/benchmarks.md)
            "ENABLE_CPU_PINNING": False,
        }
        compiled = ov.Core().compile_model(converted, "CPU", config)
        log.info(
            "denoiser converted to OpenVINO in %.0f s and compiled in %.0f s (%s, %d threads)",
            converting,
            time.perf_counter() - start - converting,
            self.precision,
            self.threads,
        )
        return compiled

    def _example(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The input the conversion traces: one volume of the smallest side the network takes. Tracing
        runs the network: traced at the official size the conversion took 228 s on 2 cores, at the
        smallest size 6.5 s, and the converted model is the same (every dimension dynamic)."""
        side = getattr(getattr(self.model, "config", None), "divisor", None)
        spatial = (side,) * (x.dim() - 2) if side else tuple(x.shape[2:])
        return torch.zeros(1, x.shape[1], *spatial), torch.zeros(1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise ValueError(f"the OpenVINO denoiser runs on the CPU; its input is on {x.device}")
        if self._compiled is None:
            self._compiled = self._compile(x, t)
        inputs = [
            np.ascontiguousarray(x.detach().float().numpy()),
            # the network embeds t as float32 whatever its dtype (brasyn.model.unet.timestep_embedding)
            np.ascontiguousarray(t.detach().to(torch.float32).numpy()),
        ]
        return torch.from_numpy(np.array(self._compiled(inputs)[0], dtype=np.float32))
