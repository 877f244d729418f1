"""Gaussian diffusion in the sub-band space: forward noising, training loss and sampling.

The network predicts the clean sub-bands x0 directly (cWDM's ``predict_xstart``). Notation follows
Ho et al. (2020), "Denoising Diffusion Probabilistic Models" (DDPM), and Song et al. (2021), "Denoising
Diffusion Implicit Models" (DDIM):

    alpha_bar_t   cumulative product of (1 - beta_s) for s <= t        (``alphas_cumprod``)
    q(x_t | x_0)  = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)      DDPM eq. 4
    mu_t          = coef1_t x_0 + coef2_t x_t                          DDPM eq. 7
    beta_tilde_t  = beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)  DDPM eq. 7

The settings a model was trained with are data too (:class:`DiffusionConfig`: chain length, schedule,
what the network predicts, whether its x0 is clipped), so a weights manifest and a training state can
record them and a reader can refuse what it does not support. The schedule is data
(:class:`brasyn.model.schedule.StepTables`); the samplers (:mod:`brasyn.model.samplers`) are short free
functions over ``(denoise, x, tables)`` reporting through a ``callback``; :meth:`Diffusion.sample` looks
one up by its name and runs it.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from brasyn.model.bands import clip_bands
from brasyn.model.samplers import SAMPLERS, Callback, Generators, RunOptions, Sampler, standard_normal
from brasyn.model.schedule import SCHEDULES, StepTables, at_step, beta_schedule, spaced_timesteps

__all__ = ["MAX_DRAWS", "MAX_STEPS", "PREDICTIONS", "Diffusion", "DiffusionConfig", "Sampling"]

PREDICTIONS = ("x0",)
"""What a denoiser may predict: cWDM predicts the clean sub-bands (``predict_xstart``), and every sampler
here is written for that."""
MAX_STEPS = 10000
"""Longest training chain a :class:`DiffusionConfig` accepts (the official one has 1000 steps)."""


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion settings a denoiser was trained with, one default per setting (the official cWDM).

    A model only works with the chain it was trained on, so these travel with its weights (the manifest
    entry) and with a training state; ``from_dict`` refuses what this code cannot honour rather than
    sampling something else quietly.
    """

    steps: int = 1000
    """Length of the training chain (1 .. MAX_STEPS); samplers may visit fewer of its timesteps."""
    schedule: str = "linear"
    """Noise schedule, one of SCHEDULES."""
    prediction: str = "x0"
    """What the network predicts; only "x0" (the clean sub-bands, as cWDM) is supported."""
    clip: bool = True
    """Clamp the predicted x0 to [0, 1] in image space while sampling, as the official code does."""

    def __post_init__(self) -> None:
        # bool is an int subclass, but True steps is a mistake, not a chain of one.
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral):
            raise ValueError(f"steps must be a whole number, not {type(self.steps).__name__} {self.steps!r}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be between 1 and {MAX_STEPS}, got {self.steps}")
        object.__setattr__(self, "steps", int(self.steps))  # numpy integers become plain ints for JSON
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise ValueError(
                f"schedule {self.schedule!r} is not one of {', '.join(repr(n) for n in SCHEDULES)}"
            )
        if not isinstance(self.prediction, str):
            raise ValueError(f"prediction must be a string, not {type(self.prediction).__name__}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"prediction {self.prediction!r} is not supported: brasyn's denoisers and samplers predict "
                f"the clean sub-bands, so only {', '.join(repr(p) for p in PREDICTIONS)} is"
            )
        if not isinstance(self.clip, bool):
            raise ValueError(f"clip must be true or false, not {type(self.clip).__name__} {self.clip!r}")

    def to_dict(self) -> dict[str, Any]:
        """All four settings as a plain JSON object."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> DiffusionConfig:
        """Parse a JSON object; missing keys take the defaults (older manifests hold only ``steps`` and
        ``schedule``), unknown keys and wrong types raise ValueError naming them."""
        if not isinstance(settings, Mapping):
            raise ValueError(f"diffusion settings must be an object, not {type(settings).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [str(k) for k in settings if k not in known]
        if unknown:
            raise ValueError(
                f"unknown diffusion setting(s) {', '.join(repr(k) for k in unknown)}; "
                f"the settings are {', '.join(known)}"
            )
        return cls(**settings)


MAX_DRAWS = 64
"""The most samples one case may be the mean of."""


@dataclass(frozen=True)
class Sampling:
    """How the diffusion model is sampled; the defaults are the official cWDM inference."""

    sampler: str = "ddpm"
    """"ddpm" (ancestral, as the official code), "ddim" (deterministic with eta 0), "dpm++2m"
    (DPM-Solver++(2M), deterministic, for 10-20 steps) or "x0" (one step: a quick preview)."""
    steps: int = 1000
    """Number of sampling steps (1000 is the full chain; fewer respaces it; "x0" always takes 1)."""
    eta: float = 0.0
    """DDIM noise (0: deterministic)."""
    draws: int = 1
    """Samples per case, each from its own noise; the output is their voxel-wise mean and their spread
    the uncertainty map (:mod:`brasyn.inference.draws`)."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps must be between 1 and 1000, got {self.steps}")
        if not 1 <= self.draws <= MAX_DRAWS:
            raise ValueError(f"draws must be between 1 and {MAX_DRAWS}, got {self.draws}")

    @property
    def algorithm(self) -> Sampler:
        """The sampler named, with its facts (:data:`brasyn.model.samplers.SAMPLERS`)."""
        return SAMPLERS[self.sampler]

    @property
    def steps_taken(self) -> int:
        """The steps the sampler takes: ``steps``, or 1 for "x0" whatever ``steps`` says."""
        return self.algorithm.steps_for(self.steps)

    def describe(self) -> str:
        """The sampling in words, for logs: ``20 ddim steps``, or ``x0 (one prediction)``."""
        taken = self.steps_taken
        if self.sampler == "x0":
            text = "x0 (one prediction)"
        else:
            text = f"{taken} {self.sampler} step{'s' if taken != 1 else ''}"
        return text + (f", mean of {self.draws} draws" if self.draws > 1 else "")


class Diffusion:
    """The noise schedule of cWDM and the operations on it.

    ``tables`` holds the float64 schedule over all ``steps`` (``betas``, ``alphas_cumprod``,
    ``posterior_variance`` ...); float32 copies are made once per device when needed. ``config`` is the
    :class:`DiffusionConfig` it was built from (``Diffusion(steps, schedule)`` keeps the other defaults).
    """

    def __init__(self, steps: int = 1000, schedule: str = "linear") -> None:
        self._config = DiffusionConfig(steps=steps, schedule=schedule)
        betas = beta_schedule(self._config.schedule, self._config.steps)
        self.tables = StepTables.from_alphas_cumprod(
            torch.cumprod(1 - betas, dim=0), torch.arange(self._config.steps)
        )
        self._device_tables: dict[tuple[torch.device, torch.dtype], StepTables] = {}

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> Diffusion:
        """The diffusion a checkpoint's settings describe; ``clip`` becomes the sampling default."""
        if not isinstance(config, DiffusionConfig):
            raise TypeError(f"config must be a DiffusionConfig, not {type(config).__name__}")
        diffusion = cls(steps=config.steps, schedule=config.schedule)
        # The tables depend on steps and schedule alone; the other settings ride along.
        diffusion._config = config
        return diffusion

    @property
    def config(self) -> DiffusionConfig:
        """The settings this diffusion was built from."""
        return self._config

    @property
    def num_steps(self) -> int:
        """Length of the training chain."""
        return self._config.steps

    @property
    def schedule(self) -> str:
        """Name of the noise schedule."""
        return self._config.schedule

    def tables_on(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> StepTables:
        key = (torch.device(device), dtype)
        if key not in self._device_tables:
            self._device_tables[key] = self.tables.to(device, dtype)
        return self._device_tables[key]

    def respaced(self, steps: int) -> StepTables:
        """Tables of a chain that visits ``steps`` evenly spaced timesteps (float64, on the CPU)."""
        if steps == self.num_steps:
            return self.tables
        kept = torch.tensor(spaced_timesteps(self.num_steps, steps))
        return StepTables.from_alphas_cumprod(self.tables.alphas_cumprod[kept], kept)

    def log_snr_spaced(self, steps: int) -> StepTables:
        """Tables of a chain whose ``steps`` timesteps are evenly spaced in log-SNR,
        lambda_t = log(sqrt(alpha_bar_t) / sqrt(1 - alpha_bar_t)), from the last timestep to the first.

        The solver's error depends on the steps in lambda, which uniform timesteps make very uneven
        (the last of 20 uniform steps spans a third of the whole lambda range); on a Gaussian test
        problem this cuts DPM-Solver++(2M)'s error 10x at 20 steps. Where rounding to integer timesteps
        would repeat one (near t = 0, for 50 steps and more), the later ones move up to stay distinct.
        """
        ac = self.tables.alphas_cumprod
        lam = (0.5 * (ac.log() - (1 - ac).log())).numpy()  # decreasing in t
        wanted = np.linspace(lam[-1], lam[0], steps) if steps > 1 else lam[-1:]
        # lambda is monotone: interpolate t(lambda) on the increasing (reversed) table
        t = np.interp(wanted, lam[::-1], np.arange(self.num_steps - 1, -1, -1, dtype=np.float64))
        kept = np.round(t[::-1]).astype(np.int64)  # ascending timesteps
        # near t = 0 lambda moves fastest, so many steps round onto the same timestep: keep them distinct
        for i in range(1, len(kept)):
            kept[i] = max(kept[i], kept[i - 1] + 1)
        if kept[-1] > self.num_steps - 1:
            return self.respaced(steps)
        kept = torch.from_numpy(kept)
        return StepTables.from_alphas_cumprod(ac[kept], kept)

    # Training ---------------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (DDPM eq. 4)."""
        tables = self.tables_on(x0.device)
        return (
            at_step(tables.sqrt_alphas_cumprod, t, x0.dim()) * x0
            + at_step(tables.sqrt_one_minus_alphas_cumprod, t, x0.dim()) * noise
        )

    def training_loss(
        self,
        model: nn.Module,
        x0: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> torch.Tensor:
        """Mean squared error between the predicted and the true clean sub-bands.

        ``x0`` and ``cond`` are model sub-bands (LLL/3); ``noise`` is the DWT of image-space Gaussian
        noise (its LLL not divided by 3), as the official training draws it.
        """
        x_t = self.q_sample(x0, t, noise)
        prediction = model(torch.cat([x_t, cond], dim=1), t)
        return torch.mean((prediction.float() - x0) ** 2)

    # Sampling ---------------------------------------------------------------------------------

    def p_mean_variance(
        self,
        model: nn.Module,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        clip: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Mean, variance ("fixed large") and x0 prediction of p(x_{t-1} | x_t) for the official model.

        With ``clip`` the predicted x0 is clamped to [0, 1] in image space before the posterior mean.
        """
        tables = self.tables_on(x_t.device)
        x0 = model(torch.cat([x_t, cond], dim=1), t).float()
        if clip:
            x0 = clip_bands(x0)
        ndim = x_t.dim()
        coef1 = at_step(tables.posterior_mean_coef1, t, ndim)
        coef2 = at_step(tables.posterior_mean_coef2, t, ndim)
        mean = coef1 * x0 + coef2 * x_t
        variance = at_step(tables.fixed_large_variance, t, ndim).expand_as(x_t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": variance.log(),
            "pred_xstart": x0,
        }

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        cond: torch.Tensor,
        shape: tuple[int, ...] | torch.Size,
        sampler: str = "ddpm",
        steps: int | None = None,
        generator: Generators = None,
        progress: Callback | None = None,
        eta: float = 0.0,
        clip: bool | None = None,
        variance: str = "fixed_large",
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Clean target sub-bands (``shape``, float32) sampled given the condition sub-bands ``cond``.

        ``sampler`` "ddpm" is the official ancestral sampler (1000 steps unless ``steps`` respaces it);
        "ddim" is deterministic for ``eta = 0``; "dpm++2m" is DPM-Solver++(2M) over ``steps`` evenly spaced
        timesteps; "x0" is one step whatever ``steps`` says. ``noise`` replaces the initial Gaussian draw.
        ``progress`` receives a dict (``i``, ``steps``, ``t``, ``x``, ``pred_xstart``) after every step.
        ``generator`` may be one per batch element (:func:`brasyn.model.samplers.standard_normal`).
        ``clip`` (clamp the predicted x0 to [0, 1] in image space) defaults to ``config.clip``.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {tuple(SAMPLERS)}")
        algorithm = SAMPLERS[sampler]
        clip = self._config.clip if clip is None else clip
        steps = algorithm.steps_for(self.num_steps if steps is None else steps)
        device = cond.device
        generators = [generator] if isinstance(generator, torch.Generator) else list(generator or ())
        for one in generators:
            if one.device.type != device.type:
                raise ValueError(
                    f"the generator is on {one.device} but sampling runs on {device}; "
                    f"create it with torch.Generator(device={str(device)!r})"
                )
        spaced = self.log_snr_spaced(steps) if algorithm.log_snr_spacing else self.respaced(steps)
        tables = spaced.to(device)
        if noise is None:
            x = standard_normal(tuple(shape), generator, device)
        else:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(shape)}")
            x = noise.to(device=device, dtype=torch.float32)

        def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            x0 = model(torch.cat([x_t.to(cond.dtype), cond], dim=1), t).float()
            return clip_bands(x0) if clip else x0

        callback = None
        if progress is not None:
            total = len(tables)

            def callback(info: dict[str, Any]) -> None:
                progress({**info, "steps": total})

        return algorithm.run(denoise, x, tables, RunOptions(eta, variance, generator, callback))
