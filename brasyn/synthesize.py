"""One case end to end: load the three present contrasts, bring them into model space, sample the
missing one, bring it back onto the input grid and scale, and write it.

:class:`Synthesizer` is built once per run (settings in, weights loaded lazily and cached) and then
works at three levels: :meth:`Synthesizer.process` (a discovered case, to a file),
:meth:`Synthesizer.synthesize` (loaded volumes, to an array on their grid) and
:meth:`Synthesizer.predict` (a model-space tensor, to a model-space tensor). ``synthesize`` is
:meth:`~Synthesizer.prepare`, :meth:`~Synthesizer.predict` and :meth:`~Synthesizer.restore` in turn.

The method (``SynthesisSettings.method``) only changes the model-space prediction: ``diffusion`` samples
the cWDM denoiser (:meth:`Synthesizer.sample_images`), ``linear`` and ``nearest`` are the baselines of
:mod:`brasyn.baselines`. Preparation, geometry, intensity restoration and naming are shared.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from brasyn.acceleration import (
    SpeedSettings,
    configure_backends,
    network_precision,
    optimise_model,
    resolve_precision,
)
from brasyn.bands import bands_to_image, image_to_bands
from brasyn.baselines import BASELINE_METHODS, Baselines
from brasyn.cases import Case
from brasyn.diffusion import SAMPLERS, Diffusion, DiffusionConfig
from brasyn.errors import CaseError, WeightsError
from brasyn.intensity import estimate_scale, high_percentile, restore_intensity
from brasyn.modalities import Modality, conditions_for
from brasyn.preprocess import Geometry, prepare, restore_geometry
from brasyn.resample import GridPlan, plan_grid, to_model_grid, to_reference_grid
from brasyn.runtime import case_generator, peak_memory_mib, reset_peak_memory
from brasyn.volumes import Volume, check_same_grid, load_volume, write_volume
from brasyn.weights import WeightStore

__all__ = ["METHODS", "CaseResult", "Loaded", "Prepared", "SynthesisSettings", "Synthesizer"]

log = logging.getLogger(__name__)

METHODS = ("diffusion", *BASELINE_METHODS)
"""How the missing contrast is predicted: the cWDM model, or one of the baselines."""


@dataclass(frozen=True)
class SynthesisSettings:
    """How to sample; the defaults are the official cWDM inference."""

    sampler: str = "ddpm"
    """"ddpm" (ancestral, as the official code), "ddim" (deterministic with eta 0), "dpm++2m"
    (DPM-Solver++(2M), deterministic, for 10-20 steps) or "x0" (one step: a quick preview)."""
    steps: int = 1000
    """Number of sampling steps (1000 is the full chain; fewer respaces it; "x0" always takes 1)."""
    eta: float = 0.0
    """DDIM noise (0: deterministic)."""
    seed: int = 42
    """Run seed; each case's generator is derived from it and the case id."""
    progress: bool = True
    """Draw a progress bar per case on stderr."""
    method: str = "diffusion"
    """"diffusion" (the cWDM model), or the "linear" or "nearest" baseline (no model, no sampling)."""
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    """Precision, memory format, backend switches and compilation of the denoiser."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")


@dataclass
class CaseResult:
    """What happened to one case; one row of the run report."""

    case: str
    status: str
    """"written", "skipped" or "failed"."""
    target: str | None = None
    output: str | None = None
    seconds: float = 0.0
    device: str | None = None
    peak_memory_mib: float | None = None
    message: str = ""
    files: list[str] = field(default_factory=list)
    resampled: bool = False
    """Whether the inputs were resampled onto a 1 mm model grid (``brasyn.resample``)."""
    grid_of: str | None = None
    """The contrast whose grid the output is on, when resampled."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Loaded:
    """A case read from disk and brought into model space, ready to be sampled."""

    volumes: dict[Modality, Volume]
    """The conditions as the model sees them (resampled onto a 1 mm grid where ``plan`` says so)."""
    prepared: Prepared
    plan: GridPlan | None = None
    """How the inputs were resampled; None when they were on one 1 mm grid already."""
    reference: Volume | None = None
    """With a plan: the input whose grid the result goes back onto."""


@dataclass
class Prepared:
    """A case in model space, with what is needed to go back."""

    images: np.ndarray
    """(3, D, H, W) float32 in [0, 1], the conditions in the model's order."""
    geometry: Geometry
    brain: np.ndarray
    reference: Volume
    condition_percentiles: dict[Modality, float]


class Synthesizer:
    """Synthesises missing contrasts with one checkpoint per target, loaded once and reused, or with a
    baseline (``weights`` may then be ``None``; ``baselines`` defaults to the default ratios)."""

    def __init__(
        self,
        weights: WeightStore | None,
        device: torch.device,
        settings: SynthesisSettings,
        baselines: Baselines | None = None,
    ) -> None:
        if settings.method == "diffusion" and weights is None:
            raise ValueError("the diffusion method needs a WeightStore")
        self.weights = weights
        self.device = device
        self.settings = settings
        self.baselines = baselines or Baselines()
        self._diffusions: dict[DiffusionConfig, Diffusion] = {}
        self._models: dict[Modality, torch.nn.Module] = {}
        self.precision = "fp32"
        """The precision the denoiser runs in ("auto" resolved for the device)."""
        if settings.method == "diffusion":
            self.precision = resolve_precision(settings.speed.precision, device)
            configure_backends(device, settings.speed)

    @property
    def source(self) -> str:
        """Where the predictions come from, for messages."""
        if self.settings.method == "diffusion":
            return f"the weights ({self.weights.folder})"
        return f"the {self.settings.method} baseline ({self.baselines.source})"

    # --- tensor level ------------------------------------------------------------------------

    def diffusion_for(self, target: Modality) -> Diffusion:
        """The noise schedule the checkpoint for ``target`` was trained with."""
        config = self.weights.info(target).diffusion
        if config not in self._diffusions:
            self._diffusions[config] = Diffusion.from_config(config)
        return self._diffusions[config]

    def steps_for(self, target: Modality) -> int:
        """Sampling steps for ``target``: as asked, at most the length of its training chain."""
        if self.settings.sampler == "x0":
            return 1
        return min(self.settings.steps, self.diffusion_for(target).num_steps)

    def model_for(self, target: Modality) -> torch.nn.Module:
        """The denoiser for ``target`` as the speed settings want it (memory format, compiled); kept."""
        if target not in self._models:
            model = self.weights.load(target, self.device)
            self._models[target] = optimise_model(model, self.device, self.settings.speed)
        return self._models[target]

    @torch.inference_mode()
    def sample_images(
        self,
        images: torch.Tensor,
        target: Modality,
        generator: torch.Generator | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor:
        """(1, 3, D, H, W) [0, 1] conditions in model space to the (1, 1, D, H, W) [0, 1] target."""
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
                sampler=self.settings.sampler,
                steps=self.steps_for(target),
                generator=generator,
                progress=progress,
                eta=self.settings.eta,
                clip=info.diffusion.clip,
            )
        return bands_to_image(bands).clamp_(0.0, 1.0)

    def predict(
        self,
        images: torch.Tensor,
        target: Modality,
        generator: torch.Generator | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> torch.Tensor:
        """(1, 3, D, H, W) [0, 1] conditions in model space to the (1, 1, D, H, W) [0, 1] target, by the
        settings' method; WeightsError when its checkpoint or fit is missing."""
        if self.settings.method == "diffusion":
            return self.sample_images(images, target, generator, progress)
        conditions = images[0].float().cpu().numpy()
        return torch.from_numpy(self.baselines.predict(self.settings.method, conditions, target))[None, None]

    def intensity_ratios(self, target: Modality) -> dict[Modality, float]:
        """Per condition: the ratio p99.9(target) / p99.9(condition) that restores the input scale."""
        if self.settings.method == "diffusion":
            return self.weights.info(target).intensity_ratios
        return self.baselines.ratios(target)

    # --- array level -------------------------------------------------------------------------

    def prepare(self, volumes: dict[Modality, Volume], target: Modality, case_id: str) -> Prepared:
        """Checks the grid and brings the three conditions (model order) into model space."""
        order = conditions_for(target)
        missing = [m for m in order if m not in volumes]
        if missing:
            raise CaseError(case_id, f"no {', '.join(missing)} volume to condition {target} on")
        check_same_grid({m.value: volumes[m] for m in order}, case_id)
        stored = [volumes[m].data for m in order]
        reference = volumes[order[0]]
        images, geometry, brain = prepare(stored, reference.affine)
        percentiles = {m: high_percentile(volumes[m].data) for m in order}
        return Prepared(images, geometry, brain, reference, percentiles)

    def synthesize(
        self,
        volumes: dict[Modality, Volume],
        target: Modality,
        case_id: str,
        progress: Callable[[dict[str, Any]], None] | None = None,
        prepared: Prepared | None = None,
    ) -> tuple[np.ndarray, Prepared, np.ndarray]:
        """The target contrast on the grid and intensity scale of the inputs.

        Returns it with the prepared case and the model-space [0, 1] result (for previews). ``prepared``
        is :meth:`prepare`'s result for these volumes where it was made already.
        """
        if prepared is None:
            prepared = self.prepare(volumes, target, case_id)
        generator = case_generator(self.settings.seed, case_id, self.device)
        images = torch.from_numpy(prepared.images)[None]
        try:
            model_space = self.predict(images, target, generator, progress)[0, 0].float().cpu().numpy()
            return self.restore(model_space, prepared, target), prepared, model_space
        except WeightsError as exc:
            raise CaseError(case_id, str(exc)) from exc

    def restore(self, model_space: np.ndarray, prepared: Prepared, target: Modality) -> np.ndarray:
        """A (D, H, W) [0, 1] model-space target back on the grid and intensity scale of the inputs."""
        on_grid = restore_geometry(model_space, prepared.geometry)
        ratios = {m.value: r for m, r in self.intensity_ratios(target).items()}
        scale = estimate_scale({m.value: p for m, p in prepared.condition_percentiles.items()}, ratios)
        return restore_intensity(on_grid, scale, prepared.brain)

    # --- case level --------------------------------------------------------------------------

    def needs_work(self, case: Case, output_dir: Path, overwrite: bool = False) -> bool:
        """Whether :meth:`process` would load and synthesise ``case`` (not skip it)."""
        if case.target is None or case.output_name is None:
            return False
        return overwrite or not (output_dir / case.output_name).exists()

    def load(self, case: Case, grid_of: Modality | None = None) -> Loaded:
        """Reads ``case``'s conditions, resamples them onto one 1 mm grid where they are not on one, and
        brings them into model space (CPU only, no model): the part of a case that can run while another
        case is being sampled. Raises CaseError."""
        if case.target is None:
            raise CaseError(case.id, case.skip_reason or "nothing to synthesise")
        volumes = {m: load_volume(p, case.id) for m, p in case.conditions.items()}
        plan = plan_grid(volumes, case.id, grid_of)
        reference = None
        if plan is not None:
            reference = volumes[plan.reference]
            volumes = to_model_grid(volumes, plan)
        return Loaded(volumes, self.prepare(volumes, case.target, case.id), plan, reference)

    def process(
        self,
        case: Case,
        output_dir: Path,
        overwrite: bool = False,
        preview: Callable[[Case, Prepared, np.ndarray], None] | None = None,
        grid_of: Modality | None = None,
        loaded: Callable[[], Loaded] | None = None,
    ) -> CaseResult:
        """Synthesise and write one case; never raises for a problem of the case itself.

        Inputs that are not on one 1 mm grid are resampled onto one (:mod:`brasyn.resample`) and the
        result goes back onto the grid of ``grid_of`` (default: the highest-resolution input); the
        preview then shows the resampled inputs, as the model saw them. ``loaded`` returns
        :meth:`load`'s result for this case (or raises its CaseError) where that was started ahead,
        while the previous case was sampled.
        """
        start = time.perf_counter()
        result = CaseResult(case=case.id, status="failed", device=str(self.device))
        result.files = [str(p) for p in case.files.values()]
        if case.target is None or case.output_name is None:
            result.status, result.message = "skipped", case.skip_reason or "nothing to synthesise"
            return result
        result.target = case.target.value
        output = output_dir / case.output_name
        result.output = str(output)
        if output.exists() and not overwrite:
            result.status = "skipped"
            result.message = f"{output.name} already exists (use --overwrite to replace it)"
            return result
        reset_peak_memory(self.device)
        bar = None
        try:
            ready = loaded() if loaded is not None else self.load(case, grid_of)
            if ready.plan is not None:
                result.resampled, result.grid_of = True, ready.plan.reference.value
            if self.settings.progress and self.settings.method == "diffusion":
                bar = tqdm(
                    total=self.steps_for(case.target),
                    desc=f"{case.id} {case.target}",
                    file=sys.stderr,
                    leave=False,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0,
                )
            progress = (lambda info: bar.update(1)) if bar is not None else None
            data, prepared, model_space = self.synthesize(
                ready.volumes, case.target, case.id, progress, prepared=ready.prepared
            )
            reference = prepared.reference
            if ready.plan is not None:
                reference = ready.reference
                data = to_reference_grid(data, prepared.brain, ready.plan, reference)
            if not np.any(data):
                raise CaseError(
                    case.id,
                    f"the synthetic image is empty (all voxels 0); check the inputs and {self.source}",
                    case.files.values(),
                )
            write_volume(data, reference, output, description=f"brasyn synthetic {case.target}")
            if preview is not None:
                preview(case, prepared, model_space)
        except CaseError as exc:
            result.message = exc.message
            result.files = [str(p) for p in (exc.files or case.files.values())]
            return result
        finally:
            if bar is not None:
                bar.close()
            result.seconds = round(time.perf_counter() - start, 3)
            result.peak_memory_mib = round(peak_memory_mib(self.device), 1)
        result.status = "written"
        result.message = f"{case.target} written to {output.name}"
        return result
