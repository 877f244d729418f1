"""Speed and memory of the core maths, printed as JSON.

    python -m brasyn.bench [--config official|small|tiny] [--shape D H W] [--device cpu|cuda[:N]]
                           [--channels-last] [--repeats N] [--warmup N] [--threads N] [--json FILE]

Times (median of ``--repeats`` after ``--warmup`` runs, synchronised on CUDA): one denoiser forward at
the sub-band size of a ``--shape`` volume, one sampler step (forward + image-space clipping + update),
and ``dwt3`` / ``idwt3`` of the volume.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from brasyn.bands import image_to_bands
from brasyn.diffusion import Diffusion
from brasyn.unet import PRESETS, Denoiser
from brasyn.wavelet import dwt3, idwt3

log = logging.getLogger("brasyn.bench")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict[str, Any]:
    """Median and all timings of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        runs.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(runs), "runs": runs}


def _peak_memory_mib(device: torch.device) -> dict[str, float]:
    peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        peak["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = PRESETS[args.config]
    gen = torch.Generator(device=device).manual_seed(0)
    volume = torch.rand(1, 3, *args.shape, generator=gen, device=device)
    cond = image_to_bands(volume)
    band_shape = (1, config.out_channels, *cond.shape[2:])
    x = torch.randn(band_shape, generator=gen, device=device)
    t = torch.tensor([500], device=device)

    model = Denoiser.from_config(config).to(device).eval()
    with torch.no_grad():
        for p in model.parameters():  # fresh models output zeros; give every layer work to do
            p.normal_(0.0, 0.02, generator=gen)
    if args.channels_last:
        model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        cond = cond.contiguous(memory_format=torch.channels_last_3d)
    diffusion = Diffusion()
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": args.config,
        "parameters": sum(p.numel() for p in model.parameters()),
        "volume_shape": list(args.shape),
        "denoiser_input_shape": [1, config.in_channels, *cond.shape[2:]],
        "memory_format": "channels_last_3d" if args.channels_last else "contiguous",
        "repeats": args.repeats,
        "warmup": args.warmup,
    }
    single = volume[:, :1]
    bands = dwt3(single)
    with torch.inference_mode():
        result["dwt3_ms"] = time_ms(lambda: dwt3(single), device, max(args.repeats, 5), 1)
        result["idwt3_ms"] = time_ms(lambda: idwt3(bands), device, max(args.repeats, 5), 1)
        inputs = torch.cat([x, cond], dim=1)
        log.info("timing the denoiser forward at %s", tuple(inputs.shape))
        result["forward_ms"] = time_ms(lambda: model(inputs, t), device, args.repeats, args.warmup)
        log.info("timing one sampler step")
        result["ddim_step_ms"] = time_ms(
            lambda: diffusion.sample(model, cond, band_shape, "ddim", steps=1, generator=gen),
            device,
            args.repeats,
            args.warmup,
        )
    result.update(_peak_memory_mib(device))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m brasyn.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="official")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("D", "H", "W"),
        default=[224, 224, 160],
        help="image volume size (the network sees half of it); default 224 224 160",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="run the denoiser in channels_last_3d memory format (faster convolutions on CPU)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    divisor = 2 * PRESETS[args.config].divisor
    if any(s % divisor for s in args.shape):
        print(f"--shape must be multiples of {divisor} for the {args.config} config", file=sys.stderr)
        return 2
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
