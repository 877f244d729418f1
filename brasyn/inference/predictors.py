"""What fills in the missing contrast in model space: the cWDM diffusion model or a baseline.

A predictor takes the (1, 3, D, H, W) [0, 1] conditions of a case in model space (in
:func:`~brasyn.data.modalities.conditions_for` order) and returns the (1, 1, D, H, W) [0, 1] target. It also
says how to put the result back on the input scale (its intensity ratios), how many steps it takes (for a
progress bar) and where its numbers come from. It knows nothing of files, grids or cases: the
:class:`~brasyn.inference.synthesize.Synthesizer` loads, prepares, restores and writes around it.

:func:`make_predictor` is the one place a method name (``--method``) chooses a predictor.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from brasyn.common.acceleration import SpeedSettings, network_precision, optimise_model, resolve_precision
from brasyn.common.cpu_backends import Backend, resolve_backend
from brasyn.common.errors import UsageError, WeightsError
from brasyn.common.runtime import select_device
from brasyn.data.modalities import Modality
from brasyn.inference.baselines import BASELINES_NAME, Baselines, predict_linear, predict_nearest
from brasyn.inference.draws import DrawBatch
from brasyn.model.bands import bands_to_image, image_to_bands
from brasyn.model.diffusion import Diffusion, DiffusionConfig, Sampling
from brasyn.model.samplers import Generators
from brasyn.weights.official import describe as describe_checkpoint
from brasyn.weights.store import WeightStore

__all__ = [
    "METHODS",
    "DiffusionPredictor",
    "LinearPredictor",
    "NearestPredictor",
    "Predictor",
    "Progress",
    "make_predictor",
]

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
"""Called after every sampling step with the sampler's step record."""


class Predictor(Protocol):
    """Model space in, model space out."""

    device: torch.device
    """Where it computes (and where a case's random generator must live)."""
    draws: int
    """Samples per case whose mean is the output (1 for a deterministic method)."""
    draw_batch: DrawBatch
    """How many of them ``predict`` is given at once."""

    def predict(
        self,
        images: torch.Tensor,
        target: Modality,
        generator: Generators = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """(B, 3, D, H, W) [0, 1] conditions to the (B, 1, D, H, W) [0, 1] target (B draws of one case,
        ``generator`` one per draw); WeightsError when what it needs for ``target`` is missing."""
        ...

    def intensity_ratios(self, target: Modality) -> dict[Modality, float]:
        """Per condition: p99.9(target) / p99.9(condition), to restore the input scale."""
        ...

    def steps(self, target: Modality) -> int:
        """Steps ``predict`` reports through ``progress`` (0: none, no progress bar)."""
        ...

    def describe(self) -> str:
        """Where the predictions come from, for messages."""
        ...

    def summary(self) -> str:
        """What it will do, for the first log line of a run."""
        ...

    def quality(self) -> str | None:
        """ "random", "demo" or "trained" for the weights a run uses (the worst of them); None without
        weights (the baselines)."""
        ...

    def settings(self) -> dict[str, Any]:
        """What a run report records about it."""
        ...

    def checkpoints(self) -> dict[str, dict[str, Any]] | None:
        """Per target: the checkpoint file, its sha256 and where it came from (official file names
        included), for the run report; None without weights (the baselines)."""
        ...

    def output_settings(self, target: Modality, seed: int) -> dict[str, Any]:
        """What decides its output for ``target`` (recorded in each output, :mod:`brasyn.data.provenance`):
        ``method``, the sha256 of its numbers as ``weights``, and where it applies sampler, steps, eta,
        precision and the run ``seed``. WeightsError when ``target`` has no weights."""
        ...


class DiffusionPredictor:
    """cWDM: one checkpoint per target from a weights folder, loaded on first use and kept."""

    method = "diffusion"

    def __init__(
        self,
        weights: WeightStore,
        device: torch.device,
        sampling: Sampling | None = None,
        speed: SpeedSettings | None = None,
    ) -> None:
        self.weights = weights
        self.device = device
        self.sampling = sampling or Sampling()
        self.speed = speed or SpeedSettings()
        self.precision = resolve_precision(self.speed.precision, device)
        """The precision the denoiser runs in ("auto" resolved for the device)."""
        self.backend = resolve_backend(self.speed.backend, device, self.speed.compile)
        """The engine of the denoiser's forward ("auto" resolved for the device and what is installed)."""
        self.draw_batch = DrawBatch(self.sampling.draws if device.type == "cuda" else 1)
        """On a GPU all draws of a case at once (halved where they do not fit); on the CPU, which gains
        nothing from a batch, one at a time."""
        self.fell_back_to_cpu = False
        """Whether ``--device auto`` found no usable GPU (the run then says what the CPU will cost)."""
        self._diffusions: dict[DiffusionConfig, Diffusion] = {}
        self._models: dict[Modality, torch.nn.Module] = {}

    @property
    def draws(self) -> int:
        return self.sampling.draws

    def describe(self) -> str:
        return f"the weights ({self.weights.folder})"

    def quality(self) -> str | None:
        kinds = {self.weights.info(t).quality for t in self.weights.targets()}
        return next((k for k in ("random", "demo", "trained") if k in kinds), None)

    def summary(self) -> str:
        return (
            f"weights {self.weights.folder}; {self.sampling.describe()}, on {self.device} in {self.precision}"
            + (" with OpenVINO" if self.backend is Backend.OPENVINO else "")
        )

    def settings(self) -> dict[str, Any]:
        sampling = asdict(self.sampling)
        sampling["steps"] = self.sampling.steps_taken  # "x0": one prediction, whatever --steps said
        speed = {**asdict(self.speed), "backend": self.backend}
        return {"method": self.method, **sampling, "precision": self.precision, "speed": speed}

    def output_settings(self, target: Modality, seed: int) -> dict[str, Any]:
        settings = {
            "method": self.method,
            "sampler": self.sampling.sampler,
            "steps": self.steps(target),
            "precision": self.precision,
            "weights": self.weights.info(target).sha256,
            "seed": seed,
            "draws": self.sampling.draws,
        }
        if self.sampling.algorithm.takes_eta:
            settings["eta"] = self.sampling.eta
        return settings

    def checkpoints(self) -> dict[str, dict[str, Any]] | None:
        return {t.value: describe_checkpoint(self.weights.info(t)) for t in self.weights.targets()}

    def diffusion_for(self, target: Modality) -> Diffusion:
        """The noise schedule the checkpoint for ``target`` was trained with."""
        config = self.weights.info(target).diffusion
        if config not in self._diffusions:
            self._diffusions[config] = Diffusion.from_config(config)
        return self._diffusions[config]

    def steps(self, target: Modality) -> int:
        """Sampling steps for ``target``: as asked, at most the length of its training chain."""
        fixed = self.sampling.algorithm.fixed_steps
        if fixed is not None:
            return fixed
        return min(self.sampling.steps, self.diffusion_for(target).num_steps)

    def model_for(self, target: Modality) -> torch.nn.Module:
        """The denoiser for ``target`` as the speed settings want it (memory format, compiled); kept."""
        if target not in self._models:
            model = self.weights.load(target, self.device)
            # the resolved precision and backend: what settings() reports is what runs
            resolved = replace(self.speed, precision=self.precision, backend=self.backend)
            self._models[target] = optimise_model(model, self.device, resolved)
        return self._models[target]

    def intensity_ratios(self, target: Modality) -> dict[Modality, float]:
        return self.weights.info(target).intensity_ratios

    @torch.inference_mode()
    def estimate_case_seconds(
        self, target: Modality, volume: tuple[int, int, int] = (224, 224, 160), fraction: int = 8
    ) -> float:
        """Seconds the sampling of one case of model size ``volume`` will take here, from one timed
        forward at 1/``fraction`` of the volume (the network's cost grows with the voxel count), times
        the steps and the draws."""
        model = self.model_for(target)
        info = self.weights.info(target)
        side, divisor = round(fraction ** (1 / 3)), info.config.divisor
        bands = [max(divisor, round(n / 2 / side / divisor) * divisor) for n in volume]
        inputs = torch.zeros(1, info.config.in_channels, *bands, device=self.device)
        if self.speed.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        t = torch.tensor([500], device=self.device)
        with network_precision(self.device, self.precision):
            model(inputs, t)  # the first call pays one-off set-up
            start = time.perf_counter()
            model(inputs, t)
            seconds = time.perf_counter() - start
        scale = np.prod([n // 2 for n in volume]) / np.prod(bands)
        return float(seconds * scale * self.steps(target) * self.sampling.draws)

    @torch.inference_mode()
    def predict(
        self,
        images: torch.Tensor,
        target: Modality,
        generator: Generators = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        model = self.model_for(target)
        info = self.weights.info(target)
        diffusion = self.diffusion_for(target)
        cond = image_to_bands(images.to(self.device, torch.float32))
        shape = (cond.shape[0], info.config.out_channels, *cond.shape[2:])
        with network_precision(self.device, self.precision):
            bands = diffusion.sample(
                model,
                cond,
                shape,
                sampler=self.sampling.sampler,
                steps=self.steps(target),
                generator=generator,
                progress=progress,
                eta=self.sampling.eta,
                clip=info.diffusion.clip,
            )
        return bands_to_image(bands).clamp_(0.0, 1.0)


class _Baseline:
    """A baseline of :mod:`brasyn.inference.baselines`: CPU, one step, the ratios of its
    ``baselines.json``."""

    method = ""
    draws = 1  # deterministic: a second draw would be the first again

    def __init__(self, baselines: Baselines | None = None) -> None:
        self.baselines = baselines or Baselines()
        self.device = torch.device("cpu")
        self.draw_batch = DrawBatch(1)

    def describe(self) -> str:
        return f"the {self.method} baseline ({self.baselines.source})"

    def summary(self) -> str:
        return self.describe()

    def quality(self) -> str | None:
        return None

    def settings(self) -> dict[str, Any]:
        return {"method": self.method}

    def checkpoints(self) -> dict[str, dict[str, Any]] | None:
        return None

    def output_settings(self, target: Modality, seed: int) -> dict[str, Any]:
        # deterministic: no seed; the weights are the numbers this target uses, whatever file held them
        return {"method": self.method, "weights": self.baselines.digest(Modality(target), self.method)}

    def steps(self, target: Modality) -> int:
        return 0

    def intensity_ratios(self, target: Modality) -> dict[Modality, float]:
        return self.baselines.ratios(target)

    def predict(
        self,
        images: torch.Tensor,
        target: Modality,
        generator: Generators = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        conditions = images[0].float().cpu().numpy()
        return torch.from_numpy(self._predict(conditions, Modality(target)))[None, None]

    def _predict(self, conditions: np.ndarray, target: Modality) -> np.ndarray:
        raise NotImplementedError


class LinearPredictor(_Baseline):
    """Per target a least-squares weighted sum of the three conditions (``baselines.json``)."""

    method = "linear"

    @classmethod
    def from_folder(cls, folder: Path | str) -> LinearPredictor:
        """The fits of ``folder/baselines.json``; WeightsError saying how to make it when absent."""
        return cls(Baselines.load(folder))

    def _predict(self, conditions: np.ndarray, target: Modality) -> np.ndarray:
        if target not in self.baselines.linear:
            raise WeightsError(f"{self.baselines.source} has no linear fit for target {target.value}")
        return predict_linear(conditions, target, self.baselines.linear[target])


class NearestPredictor(_Baseline):
    """The condition most like the target, as it is."""

    method = "nearest"

    @classmethod
    def from_folder(cls, folder: Path | str) -> NearestPredictor:
        """With the intensity ratios of ``folder/baselines.json`` where there is one, else the defaults."""
        if not (Path(folder) / BASELINES_NAME).exists():
            log.info(
                "no %s in %s: restoring the intensity scale with the default ratios", BASELINES_NAME, folder
            )
            return cls()
        return cls(Baselines.load(folder))

    def _predict(self, conditions: np.ndarray, target: Modality) -> np.ndarray:
        return predict_nearest(conditions, target)


def _diffusion(weights: Path, device: str, sampling: Sampling, speed: SpeedSettings) -> DiffusionPredictor:
    chosen = select_device(device)
    predictor = DiffusionPredictor(WeightStore(weights), chosen, sampling, speed)
    store = predictor.weights
    # which weights ran, for whoever reads the log later: one line; the digests are in the run report
    log.info(
        "weights %s: %s",
        store.folder,
        ", ".join(
            f"{t.value} {store.info(t).file} ({store.info(t).provenance.get('source', 'unknown source')})"
            for t in store.targets()
        ),
    )
    for target in store.targets():
        log.debug("weights %s: sha256 %s", target.value, store.info(target).sha256)
    # a fall-back, not a choice: the batch says what it will cost before its first case
    predictor.fell_back_to_cpu = chosen.type == "cpu" and device.strip().lower() == "auto"
    return predictor


def _baseline(kind: type[_Baseline]) -> Callable[[Path, str, Sampling, SpeedSettings], _Baseline]:
    def build(weights: Path, device: str, sampling: Sampling, speed: SpeedSettings) -> _Baseline:
        if device.strip().lower() not in ("auto", "cpu"):
            log.info("the %s baseline runs on the CPU; --device %s is not used", kind.method, device)
        return kind.from_folder(weights)

    return build


_BUILDERS: dict[str, Callable[[Path, str, Sampling, SpeedSettings], Predictor]] = {
    "diffusion": _diffusion,
    "linear": _baseline(LinearPredictor),
    "nearest": _baseline(NearestPredictor),
}
METHODS: tuple[str, ...] = tuple(_BUILDERS)
"""How the missing contrast is made: the cWDM model, or one of the baselines; what ``--method`` accepts."""


def make_predictor(
    method: str,
    weights: Path,
    device: str = "auto",
    sampling: Sampling | None = None,
    speed: SpeedSettings | None = None,
) -> Predictor:
    """The predictor ``method`` names, from the weights folder ``weights``, on ``device`` (diffusion;
    the baselines run on the CPU). A :class:`~brasyn.common.errors.UsageError` says why it cannot be had: the
    folder lacks what the method needs, or the device or precision cannot be used."""
    if method not in _BUILDERS:
        raise UsageError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method != DiffusionPredictor.method and sampling is not None and sampling.draws > 1:
        raise UsageError(
            f"--draws {sampling.draws}: the {method} baseline is deterministic (every draw is the same "
            "image); draws apply to --method diffusion"
        )
    try:
        return _BUILDERS[method](Path(weights), device, sampling or Sampling(), speed or SpeedSettings())
    except (WeightsError, ValueError) as exc:
        raise UsageError(f"--method {method}: {exc}") from exc
