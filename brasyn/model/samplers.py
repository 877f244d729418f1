"""The samplers: each a short function of ``(denoise, x, tables)`` that can be read against its paper.

``denoise(x_t, t)`` returns the model's (clipped) prediction of the clean sub-bands; ``tables`` is a
:class:`brasyn.model.schedule.StepTables` (the schedule, respaced, on the sampling device); ``callback``
receives ``{"i", "t", "x", "pred_xstart"}`` after every step. Nothing here reads a value back to the
host, so a GPU runs the loop without a synchronisation per step.

:data:`SAMPLERS` names them for the command lines and holds what the rest of brasyn needs to know of
each (:class:`Sampler`), so that no caller tells samplers apart by their names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from brasyn.model.schedule import StepTables

__all__ = [
    "SAMPLERS",
    "VARIANCES",
    "Callback",
    "Denoise",
    "Generators",
    "Sampler",
    "RunOptions",
    "SamplerRun",
    "sample_ancestral",
    "sample_ddim",
    "sample_dpmpp_2m",
    "standard_normal",
]

VARIANCES = ("fixed_large", "fixed_small")
"""The variance of an ancestral step: beta_t (the official choice) or the posterior's beta_tilde_t."""

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x_t, t) -> x0``: the model's (clipped) prediction of the clean sub-bands."""
Callback = Callable[[dict[str, Any]], None]


Generators = torch.Generator | Sequence[torch.Generator] | None
"""The random source of a sampling run: one generator for the whole batch, or one per batch element (each
element's noise then depends on its own generator alone, not on the batch it is sampled in)."""


def standard_normal(
    shape: Sequence[int], generator: Generators, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Gaussian noise of ``shape``; with one generator per element of the first axis, element ``k`` is what
    ``generator[k]`` alone draws for a batch of one, so a draw is the same in any batch."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    one = (1, *shape[1:])
    return torch.cat([torch.randn(one, generator=g, device=device, dtype=dtype) for g in generator])


def _randn_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    return standard_normal(x.shape, generator, x.device, x.dtype)


@torch.no_grad()
def sample_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    tables: StepTables,
    variance: str = "fixed_large",
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling, DDPM Algorithm 2 with an x0-predicting model: x_{t-1} ~ N(mu_t, sigma_t^2)."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    std = tables.fixed_large_variance if variance == "fixed_large" else tables.posterior_variance
    std = std.sqrt()
    batch = x.shape[0]
    for i in reversed(range(len(tables))):
        t = tables.timesteps[i].expand(batch)
        x0 = denoise(x, t)
        # 1. posterior mean, DDPM eq. 7, with the predicted x0
        x_new = tables.posterior_mean_coef1[i] * x0 + tables.posterior_mean_coef2[i] * x
        # 2. noise on every step but the last
        if i > 0:
            x_new = x_new + std[i] * _randn_like(x, generator)
        x = x_new
        if callback is not None:
            callback({"i": len(tables) - 1 - i, "t": t, "x": x, "pred_xstart": x0})
    return x


@torch.no_grad()
def sample_ddim(
    denoise: Denoise,
    x: torch.Tensor,
    tables: StepTables,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM sampling, Song et al. (2021) eq. 12; ``eta = 0`` is deterministic, ``eta = 1`` is
    ancestral sampling with the posterior variance."""
    ac, ac_prev = tables.alphas_cumprod, tables.alphas_cumprod_prev
    # eq. 16: sigma_t(eta)
    sigma = eta * ((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev)).sqrt()
    eps_coef = (1 - ac_prev - sigma**2).clamp(min=0).sqrt()
    batch = x.shape[0]
    for i in reversed(range(len(tables))):
        t = tables.timesteps[i].expand(batch)
        x0 = denoise(x, t)
        # 1. the noise the model's x0 implies
        eps = (x - tables.sqrt_alphas_cumprod[i] * x0) / tables.sqrt_one_minus_alphas_cumprod[i]
        # 2. "predicted x0" + "direction pointing to x_t" (+ random noise), eq. 12
        x_new = ac_prev[i].sqrt() * x0 + eps_coef[i] * eps
        if eta > 0 and i > 0:
            x_new = x_new + sigma[i] * _randn_like(x, generator)
        x = x_new
        if callback is not None:
            callback({"i": len(tables) - 1 - i, "t": t, "x": x, "pred_xstart": x0})
    return x


@dataclass(frozen=True)
class _SolverSteps:
    """Per-step coefficients of DPM-Solver++(2M), computed in float64: step ``i`` maps x at index ``i``
    to x at index ``i - 1`` (to the clean sample at ``i = 0``) as ``a x + b D``."""

    a: torch.Tensor
    b: torch.Tensor
    half_inverse_ratio: torch.Tensor
    """1 / (2 r_i), r_i = h_{i+1} / h_i; 0 where the step is first order (the first and the last)."""

    @classmethod
    def from_tables(cls, tables: StepTables) -> _SolverSteps:
        ac = tables.alphas_cumprod.to(torch.float64)
        ac_next = tables.alphas_cumprod_prev.to(torch.float64)
        alpha_s, sigma_s = ac.sqrt(), (1 - ac).sqrt()
        alpha_t, sigma_t = ac_next.sqrt(), (1 - ac_next).sqrt()
        # exp(-h) = (sigma_t / alpha_t) / (sigma_s / alpha_s), h the step in log-SNR lambda = log(alpha/sigma)
        exp_neg_h = (sigma_t / alpha_t) / (sigma_s / alpha_s)
        h = -torch.log(exp_neg_h)  # +inf at the last step (to sigma = 0)
        half_inverse_ratio = torch.zeros_like(h)
        n = len(ac)
        for i in range(1, n - 1):  # not the first step (n - 1, no history) nor the last (0, h = inf)
            half_inverse_ratio[i] = 0.5 * h[i] / h[i + 1]
        return cls(a=sigma_t / sigma_s, b=alpha_t * (1 - exp_neg_h), half_inverse_ratio=half_inverse_ratio)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> _SolverSteps:
        return _SolverSteps(
            *(v.to(device=device, dtype=dtype) for v in (self.a, self.b, self.half_inverse_ratio))
        )


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    tables: StepTables,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. (2022), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
    Probabilistic Models", Algorithm 2, in the data-prediction form; the model's x0 is clipped to the
    image range before it enters the update (their thresholding). Deterministic; first order on the first
    step (no history yet) and on the last (to sigma = 0, where it returns the model's x0, as DDIM does)."""
    steps = _SolverSteps.from_tables(tables).to(x.device)
    batch = x.shape[0]
    previous: torch.Tensor | None = None
    for i in reversed(range(len(tables))):
        t = tables.timesteps[i].expand(batch)
        x0 = denoise(x, t)
        d = x0 if previous is None else x0 + steps.half_inverse_ratio[i] * (x0 - previous)
        x = steps.a[i] * x + steps.b[i] * d
        previous = x0
        if callback is not None:
            callback({"i": len(tables) - 1 - i, "t": t, "x": x, "pred_xstart": x0})
    return x


@dataclass(frozen=True)
class RunOptions:
    """What a run may ask of any sampler; each sampler takes what it uses of it."""

    eta: float
    variance: str
    generator: Generators
    callback: Callback | None


SamplerRun = Callable[[Denoise, torch.Tensor, StepTables, RunOptions], torch.Tensor]
"""One sampler over the same arguments as every other."""


@dataclass(frozen=True)
class Sampler:
    """A sampler and the facts about it that commands, reports and the diffusion model act on."""

    name: str
    """What a command line, a parameters file and a report call it."""
    run: SamplerRun
    deterministic: bool
    """Draws nothing after the starting noise (DDIM: with its default eta 0), so one seed gives one
    output."""
    takes_eta: bool
    """``eta`` changes its draws: a report records eta for it, and for no other sampler."""
    log_snr_spacing: bool = False
    """Visits timesteps evenly spaced in log-SNR (:meth:`brasyn.model.diffusion.Diffusion.log_snr_spaced`)
    rather than evenly spaced timesteps."""
    fixed_steps: int | None = None
    """Takes this many steps whatever was asked (None: the steps asked)."""

    def steps_for(self, asked: int) -> int:
        """The steps it takes when ``asked`` were asked for: what it runs and what a report records."""
        return asked if self.fixed_steps is None else self.fixed_steps


SAMPLERS: dict[str, Sampler] = {
    sampler.name: sampler
    for sampler in (
        Sampler(
            "ddpm",
            lambda d, x, tables, o: sample_ancestral(d, x, tables, o.variance, o.generator, o.callback),
            deterministic=False,
            takes_eta=False,
        ),
        Sampler(
            "ddim",
            lambda d, x, tables, o: sample_ddim(d, x, tables, o.eta, o.generator, o.callback),
            deterministic=True,
            takes_eta=True,
        ),
        Sampler(
            "dpm++2m",
            lambda d, x, tables, o: sample_dpmpp_2m(d, x, tables, o.callback),
            deterministic=True,
            takes_eta=False,
            log_snr_spacing=True,
        ),
        # one DDIM step from pure noise at the last timestep straight to the model's x0: a quick preview
        Sampler(
            "x0",
            lambda d, x, tables, o: sample_ddim(d, x, tables, o.eta, o.generator, o.callback),
            deterministic=True,
            takes_eta=False,
            fixed_steps=1,
        ),
    )
}
"""``ddpm``: ancestral (the official sampler); ``ddim``: deterministic DDIM; ``dpm++2m``: DPM-Solver++(2M),
a second-order multistep solver for 10-20 steps; ``x0``: one step, the model's x0 from pure noise. In this
order on command lines and in messages."""
