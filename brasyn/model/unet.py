"""The cWDM denoiser: a 3-D U-Net that maps noisy target sub-bands plus condition sub-bands to clean
target sub-bands.

Module names follow the official checkpoints (guided-diffusion's ``UNetModel`` with the BraTS settings of
cWDM), so their plain state_dicts load with ``strict=True``: ``time_embed.{0,2}``, ``input_blocks.N.M``,
``middle_block.{0,1}``, ``output_blocks.N.M``, ``out.{0,2}``. No attention, concatenation skips, resampling
by residual blocks (average pooling down, nearest up, on all three axes).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["Denoiser", "DenoiserConfig", "PRESETS", "timestep_embedding"]


@dataclass(frozen=True)
class DenoiserConfig:
    """Size of a :class:`Denoiser`; the defaults are the official cWDM BraTS model."""

    in_channels: int = 32
    """8 noisy target sub-bands + 3 x 8 condition sub-bands."""
    out_channels: int = 8
    """The 8 predicted clean sub-bands."""
    model_channels: int = 64
    """Width of the first level; also the size of the sinusoidal time embedding."""
    channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    """Width of each level as a multiple of ``model_channels``."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level (the decoder has one more)."""
    num_groups: int = 32
    """GroupNorm groups; every width must be divisible by it."""
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # a config may come from a hand-edited manifest: refuse what would fail later as a division by zero
        for name in ("in_channels", "out_channels", "model_channels", "num_res_blocks", "num_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        if isinstance(self.channel_mult, (str, bytes)) or not self.channel_mult:
            raise ValueError(f"channel_mult must be a list of whole numbers, not {self.channel_mult!r}")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise ValueError(f"channel_mult must hold whole numbers of at least 1, not {self.channel_mult!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout!r}")
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        for width in (self.model_channels * m for m in self.channel_mult):
            if width % self.num_groups:
                raise ValueError(f"channel width {width} is not divisible by num_groups={self.num_groups}")

    @property
    def divisor(self) -> int:
        """Spatial sizes of the network input must be multiples of this."""
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DenoiserConfig:
        """Build from a dict that may hold other keys too (e.g. a checkpoint's whole config)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        return d


PRESETS: dict[str, DenoiserConfig] = {
    "official": DenoiserConfig(),
    "small": DenoiserConfig(model_channels=16, num_groups=8),
    "tiny": DenoiserConfig(model_channels=8, num_groups=4, num_res_blocks=1),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of the integer diffusion step, as the official model uses."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with float32 statistics whatever the input dtype (the official model's numerics).

    A float32 input is normalised as is. A bfloat16 input (under autocast) stays bfloat16: the CPU and
    CUDA kernels already accumulate its mean and variance in float32, so the official code's copy of
    the whole activation to float32 and back buys nothing but two passes over memory (1.4x slower
    bf16 forwards of the small config on CPU, same error against fp32).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.group_norm(x, self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        if x.dtype != torch.bfloat16:
            out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
            return out.to(x.dtype)
        # autocast would cast the input up to float32 again; the kernel's own accumulation suffices. The
        # CPU kernel takes float32 affine parameters with a bfloat16 input (exactly the float32 result,
        # rounded once); the CUDA kernel wants one dtype.
        dtype = torch.float32 if x.device.type == "cpu" else x.dtype
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x, self.num_groups, self.weight.to(dtype), self.bias.to(dtype), self.eps)


def _autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for this device type (devices autocast does not know, such as "meta",
    never have it)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _avg_pool2(x: torch.Tensor) -> torch.Tensor:
    """2x2x2 average pooling as a sum of eight strided views: the same numbers as ``avg_pool3d``, in
    every dtype (CPU ``avg_pool3d`` has no bfloat16) and fast in both memory formats."""
    total = x[:, :, 0::2, 0::2, 0::2]
    for i, j, k in ((0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)):
        total = total + x[:, :, i::2, j::2, k::2]
    return total * 0.125


def _conv(c_in: int, c_out: int, kernel: int = 3) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel, padding=kernel // 2)


class ResBlock(nn.Module):
    """Pre-activation residual block with the time embedding added after the first convolution.

    With ``resample`` set to "down" or "up", both branches are resampled between the first
    normalisation and the first convolution, as in the official model.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        num_groups: int,
        dropout: float = 0.0,
        resample: str | None = None,
    ) -> None:
        super().__init__()
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.in_layers = nn.Sequential(
            GroupNorm32(num_groups, channels), nn.SiLU(), _conv(channels, out_channels)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(num_groups, out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero(_conv(out_channels, out_channels)),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else _conv(channels, out_channels, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return _avg_pool2(x)
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is None:
            h = self.in_layers(x)
        else:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self._resample(h))
            x = self._resample(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class EmbedSequential(nn.Sequential):
    """A sequence whose residual blocks also receive the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class Denoiser(nn.Module):
    """``model(x, t)``: x is (B, in_channels, D, H, W), t an integer tensor (B,); returns
    (B, out_channels, D, H, W), the predicted clean sub-bands. D, H, W must be multiples of
    ``2 ** (len(channel_mult) - 1)``.
    """

    def __init__(
        self,
        in_channels: int = 32,
        out_channels: int = 8,
        model_channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2, 2, 4, 4),
        num_res_blocks: int = 2,
        num_groups: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.config = DenoiserConfig(
            in_channels=in_channels,
            out_channels=out_channels,
            model_channels=model_channels,
            channel_mult=tuple(channel_mult),
            num_res_blocks=num_res_blocks,
            num_groups=num_groups,
            dropout=dropout,
        )
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def block(c_in: int, c_out: int, resample: str | None = None) -> ResBlock:
            return ResBlock(c_in, emb_dim, c_out, num_groups, dropout, resample)

        ch = model_channels
        self.input_blocks = nn.ModuleList([EmbedSequential(_conv(in_channels, ch))])
        skip_channels = [ch]
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.input_blocks.append(EmbedSequential(block(ch, model_channels * mult)))
                ch = model_channels * mult
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential(block(ch, ch, "down")))
                skip_channels.append(ch)

        self.middle_block = EmbedSequential(block(ch, ch), block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if level and i == num_res_blocks:
                    layers.append(block(ch, ch, "up"))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(num_groups, ch), nn.SiLU(), _zero(_conv(ch, out_channels)))
        self.checkpointing = False
        """Activation checkpointing while gradients are taken: each block's activations are recomputed in
        the backward pass instead of kept (the same gradients, one more forward's work, about a third
        less memory of a whole-volume step). Not part of the config: it changes no number."""

    @classmethod
    def from_config(cls, config: DenoiserConfig) -> Denoiser:
        return cls(**{f.name: getattr(config, f.name) for f in fields(config)})

    def _block(self, module: nn.Module, emb: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """One block on its input (a decoder block: on its input and skip, concatenated inside, so that
        checkpointing keeps no copy of the concatenation)."""

        def run(emb: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
            return module(inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1), emb)

        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(run, emb, *inputs, use_reentrant=False)
        return run(emb, *inputs)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        divisor = self.config.divisor
        if any(s % divisor for s in x.shape[2:]):
            raise ValueError(
                f"Denoiser input spatial size {tuple(x.shape[2:])} must be a multiple of {divisor}"
            )
        if self.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last_3d):
            # a model moved to channels_last_3d runs that way throughout (faster oneDNN convolutions)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        emb = timestep_embedding(t, self.config.model_channels)
        emb = self.time_embed(emb.to(self.time_embed[0].weight.dtype))
        # Under autocast the first convolution (it reads the noisy bands and the conditions) and the
        # output head (it writes the predicted bands) stay float32: 2 % of the work, a third less
        # difference from a float32 forward, and no rounding of the prediction to 8 significant bits.
        exact = contextlib.nullcontext()
        if _autocast_enabled(x.device.type):
            exact = torch.autocast(x.device.type, enabled=False)
        with exact:
            h = self.input_blocks[0](x.to(self.input_blocks[0][0].weight.dtype), emb)
        skips = [h]
        for module in self.input_blocks[1:]:
            h = self._block(module, emb, h)
            skips.append(h)
        h = self._block(self.middle_block, emb, h)
        for module in self.output_blocks:
            h = self._block(module, emb, h, skips.pop())
        with exact:
            return self.out(h.to(self.out[2].weight.dtype))
