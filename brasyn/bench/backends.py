"""CPU backends of the denoiser side by side (``python -m brasyn.bench backends``).

One process, one set of random weights (every layer given work, as :mod:`brasyn.bench.speed` does), one
input at the sub-band size of a ``shape`` volume. Each backend is prepared once (its start-up is timed:
converting, compiling, the first call) and then timed in rounds that alternate between the backends, so
that a machine that slows down or speeds up during the measurement slows every backend alike; the figure
is the median of the rounds.

Backends (:data:`BACKENDS`): ``official-fp32``, the official cWDM ``UNetModel`` as its own code runs it
(with ``official``, a checkout of pfriedri/cwdm; the reference of the ratios and errors), ``eager-fp32`` and
``eager-bf16`` (brasyn's denoiser in channels_last_3d, float32 or under bfloat16 autocast: what a run does
with ``--precision fp32|bf16``), ``compile-bf16`` (``torch.compile`` with inductor, bfloat16 autocast) and
``openvino-bf16`` / ``openvino-fp32`` (OpenVINO's CPU plugin, the model converted from the torch module at
start-up, with the inference precision hint; only where the optional ``openvino`` package is installed,
``pip install 'brasyn[cpu]'``).

Every backend asked for is held at once (the rounds alternate): at the official size an OpenVINO model
holds several GB of its own, so a machine of 24 GB runs the OpenVINO backends in a process of their own
(``--backend``). Per backend: seconds per forward, the ratio to the reference, its start-up, the error
against the reference output (largest absolute difference over the reference's largest magnitude; a
backend passes at :data:`ERROR_BOUND`), and the seconds per forward over a batch of ``cases`` cases of
``steps`` forwards each with the start-up shared among them (``batch_seconds_per_forward``), which
decides :func:`pick_winner`.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brasyn.bench.floor import cpu_features
from brasyn.bench.speed import official_model
from brasyn.common.acceleration import Precision, SpeedSettings, network_precision, optimise_model
from brasyn.common.cpu_backends import Backend, openvino_available
from brasyn.common.measure import environment, peak_rss_mib
from brasyn.model.unet import PRESETS, Denoiser

__all__ = [
    "BACKENDS",
    "ERROR_BOUND",
    "WIN_RATIO",
    "BackendResult",
    "compare_backends",
    "pick_winner",
]

log = logging.getLogger("brasyn.bench")

ERROR_BOUND = 5e-3
"""The largest |difference| from the reference output a backend may have, as a share of the reference's
largest magnitude."""
WIN_RATIO = 1.3
"""How much faster than eager bf16 (start-up included, over a batch) a backend must be to be adopted."""
BACKENDS = ("official-fp32", "eager-fp32", "eager-bf16", "compile-bf16", "openvino-bf16", "openvino-fp32")


Forward = Callable[[], torch.Tensor]


@dataclass
class BackendResult:
    name: str
    startup_seconds: float
    seconds: list[float]
    output: torch.Tensor | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _brasyn_model(config: str, seed: int) -> Denoiser:
    model = Denoiser.from_config(PRESETS[config]).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # fresh models output zeros; give every layer work to do
            p.normal_(0.0, 0.02, generator=gen)
    return model


def _prepared(model: Denoiser, x: torch.Tensor, t: torch.Tensor, speed: SpeedSettings) -> Forward:
    """The denoiser as a run prepares it (:func:`optimise_model`: channels_last_3d, compiled, or converted
    to OpenVINO on its first call, as ``speed`` says), fed as a run feeds it."""
    cpu = torch.device("cpu")
    prepared = optimise_model(model, cpu, speed)
    if speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def forward() -> torch.Tensor:
        with torch.inference_mode(), network_precision(cpu, speed.precision):
            return prepared(x, t).float()

    return forward


def _official(checkout: Path, config: str, state: dict, x: torch.Tensor, t: torch.Tensor) -> Forward:
    model = official_model(checkout, config)
    model.load_state_dict(state, strict=True)
    model.to(torch.device("cpu"))  # the official UNetModel records its device here (and returns None)
    model.eval()

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return model(x, t).float()

    return forward


def _builders(
    model: Denoiser, x: torch.Tensor, t: torch.Tensor, official: Path | None, config: str
) -> dict[str, Callable[[], Forward]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def copy() -> Denoiser:
        fresh = Denoiser.from_config(model.config).eval()
        fresh.load_state_dict(state)
        return fresh

    builders: dict[str, Callable[[], Forward]] = {}
    if official is not None:
        builders["official-fp32"] = lambda: _official(official, config, state, x, t)
    engines = {  # each as the run's speed settings give it
        "eager-fp32": SpeedSettings(Precision.FP32, backend=Backend.TORCH),
        "eager-bf16": SpeedSettings(Precision.BF16, backend=Backend.TORCH),
        "compile-bf16": SpeedSettings(Precision.BF16, compile=True, backend=Backend.TORCH),
    }
    if openvino_available():
        engines["openvino-bf16"] = SpeedSettings(Precision.BF16, backend=Backend.OPENVINO)
        engines["openvino-fp32"] = SpeedSettings(Precision.FP32, backend=Backend.OPENVINO)
    for name, speed in engines.items():
        builders[name] = lambda speed=speed: _prepared(copy(), x, t, speed)
    return builders


def _prepare(name: str, build: Callable[[], Forward]) -> tuple[Forward, float, torch.Tensor]:
    """The backend's forward, its start-up (building it and the first call) and its first output."""
    log.info("preparing %s", name)
    start = time.perf_counter()
    forward = build()
    output = forward()
    return forward, time.perf_counter() - start, output


def compare_backends(
    config: str = "official",
    shape: tuple[int, int, int] = (224, 224, 160),
    names: Sequence[str] | None = None,
    official: Path | None = None,
    rounds: int = 3,
    cases: int = 10,
    steps: int = 10,
    seed: int = 0,
) -> dict[str, Any]:
    """The backends table of the module text, as one JSON-ready dict."""
    model = _brasyn_model(config, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, model.config.in_channels, *(n // 2 for n in shape), generator=gen)
    t = torch.tensor([500])
    builders = _builders(model, x, t, official, config)
    asked = list(names or BACKENDS)
    if "official-fp32" not in asked and "eager-fp32" not in asked:
        asked.insert(0, "eager-fp32")  # every error needs a reference
    wanted = [n for n in asked if n in builders]
    missing = [n for n in asked if n not in builders]
    results: dict[str, BackendResult] = {}
    forwards: dict[str, Forward] = {}
    for name in wanted:
        forward, startup, output = _prepare(name, builders[name])
        forwards[name] = forward
        results[name] = BackendResult(name, startup, [], output)
    for round_ in range(rounds):
        for name in wanted:
            log.info("round %d of %d: %s", round_ + 1, rounds, name)
            start = time.perf_counter()
            forwards[name]()
            results[name].seconds.append(time.perf_counter() - start)
    reference_name = "official-fp32" if "official-fp32" in results else "eager-fp32"
    reference = results[reference_name]
    assert reference.output is not None
    scale = float(reference.output.abs().max())
    forwards_in_batch = cases * steps
    table = {}
    for name, result in results.items():
        assert result.output is not None
        error = float((result.output - reference.output).abs().max())
        table[name] = {
            "seconds_per_forward": round(result.median, 3),
            "runs": [round(s, 3) for s in result.seconds],
            "startup_seconds": round(result.startup_seconds, 2),
            "ratio_to_reference": round(reference.median / result.median, 3),
            "max_abs_difference": error,
            "relative_error": error / scale if scale else None,
            "within_bound": scale > 0 and error / scale <= ERROR_BOUND,
            "batch_seconds_per_forward": round(
                result.median + max(0.0, result.startup_seconds - result.median) / forwards_in_batch, 3
            ),
        }
    return {
        "config": config,
        "shape": list(shape),
        "input": list(x.shape),
        "reference": reference_name,
        "output_max_abs": scale,
        "error_bound": ERROR_BOUND,
        "rounds": rounds,
        "batch": {"cases": cases, "steps": steps},
        "not_available": missing,
        "backends": table,
        "winner": pick_winner(table),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "cpu": cpu_features(),
        **environment(torch.device("cpu")),
    }


def pick_winner(table: dict[str, dict[str, Any]], baseline: str = "eager-bf16") -> dict[str, Any]:
    """The fastest backend over a batch (start-up shared) among those within the error bound, and
    whether it beats ``baseline`` by :data:`WIN_RATIO` (only then is it worth adopting)."""
    fit = {n: r for n, r in table.items() if r["within_bound"] and not n.startswith("official")}
    if not fit:
        return {"name": None, "adopt": False, "reason": "no backend met the error bound"}
    name = min(fit, key=lambda n: fit[n]["batch_seconds_per_forward"])
    if baseline not in fit:
        return {"name": name, "adopt": False, "reason": f"{baseline} was not measured or missed the bound"}
    gain = fit[baseline]["batch_seconds_per_forward"] / fit[name]["batch_seconds_per_forward"]
    return {
        "name": name,
        "gain_over_baseline": round(gain, 3),
        "adopt": name != baseline and gain >= WIN_RATIO,
        "reason": f"{gain:.2f}x {baseline} over a batch (adopted at {WIN_RATIO}x)",
    }
