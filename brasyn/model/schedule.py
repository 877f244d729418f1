"""The noise schedule: betas, the timesteps a shorter chain visits, and the per-step coefficient tables.

The schedule is data: :class:`StepTables` is computed once in float64 from ``alpha_bar`` and copied to the
sampling device as float32 before a loop starts, so that no step synchronises host and device. Both the
diffusion model (:mod:`brasyn.model.diffusion`) and the samplers (:mod:`brasyn.model.samplers`) read it;
it depends on neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

__all__ = ["SCHEDULES", "StepTables", "at_step", "beta_schedule", "spaced_timesteps"]

SCHEDULES = ("linear", "cosine")
"""The noise schedules :func:`beta_schedule` knows."""


def beta_schedule(name: str, steps: int) -> torch.Tensor:
    """Betas in float64. "linear" is the DDPM schedule (1e-4 to 0.02 for 1000 steps, rescaled for
    other lengths); "cosine" is Nichol & Dhariwal (2021), eq. 17, capped at 0.999."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if name == "linear":
        scale = 1000.0 / steps
        return torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64)
    if name == "cosine":
        s = torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    choices = " or ".join(repr(n) for n in SCHEDULES)
    raise ValueError(f"unknown noise schedule {name!r}; choose {choices}")


def spaced_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` model timesteps spread evenly over 0 .. total-1, both ends included, ascending."""
    if not 1 <= steps <= total:
        raise ValueError(f"steps must be between 1 and {total}, got {steps}")
    if steps == 1:
        return [total - 1]
    return [round(i * (total - 1) / (steps - 1)) for i in range(steps)]


@dataclass(frozen=True)
class StepTables:
    """Per-step coefficients of a (possibly respaced) chain; entry ``i`` belongs to model timestep
    ``timesteps[i]``, and the step from index ``i`` leads to index ``i - 1`` (to x0 at ``i = 0``)."""

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    betas: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    fixed_large_variance: torch.Tensor
    """beta_t, with the posterior variance of step 1 at step 0 (the official "fixed large")."""

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> StepTables:
        ac = alphas_cumprod.to(torch.float64)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        # Respacing keeps alpha_bar at the kept steps; the betas of the shorter chain follow from it.
        betas = 1 - ac / ac_prev
        posterior_variance = betas * (1 - ac_prev) / (1 - ac)
        # The posterior variance is 0 at step 0, which no sampler can draw with: step 1's stands in.
        first = posterior_variance[1:2] if len(ac) > 1 else betas[:1]
        fixed_large = torch.cat([first, betas[1:]])
        return cls(
            timesteps=timesteps.to(torch.long),
            alphas_cumprod=ac,
            alphas_cumprod_prev=ac_prev,
            betas=betas,
            sqrt_alphas_cumprod=ac.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1 - ac).sqrt(),
            posterior_variance=posterior_variance,
            posterior_mean_coef1=betas * ac_prev.sqrt() / (1 - ac),
            posterior_mean_coef2=(1 - ac_prev) * (1 - betas).sqrt() / (1 - ac),
            fixed_large_variance=fixed_large,
        )

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> StepTables:
        """A copy on ``device``; coefficients in ``dtype``, timesteps stay integers."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            target_dtype = value.dtype if f.name == "timesteps" else dtype
            moved[f.name] = value.to(device=device, dtype=target_dtype)
        return StepTables(**moved)

    def __len__(self) -> int:
        return len(self.timesteps)


def at_step(table: torch.Tensor, index: torch.Tensor | int, ndim: int) -> torch.Tensor:
    """Coefficient(s) for a step index (int) or a batch of indices, shaped to broadcast over x."""
    value = table[index]
    return value.reshape(-1, *([1] * (ndim - 1))) if value.dim() else value
