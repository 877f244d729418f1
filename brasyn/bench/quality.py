"""Does a faster setting change the images? Two measurements on complete cases (all four contrasts),
each contrast in turn (or ``--target``) withheld and synthesised from the other three
(``python -m brasyn.quality``, :mod:`brasyn.commands.quality`):

``samplers``: each ``sampler:steps[:precision]`` variant synthesises the withheld contrast through the
batch runner that every run uses (:func:`brasyn.inference.batch.run_batch`: an input folder without the
contrast, the same seed and noise, resampling, restoring and writing), and the written file is scored
against the real one with the challenge's metrics (:func:`brasyn.evaluate.metrics.score`): the table a user
picks a fast mode from.

``precision``: with identical noise, the model-space result of bfloat16 against float32 must differ less
than two float32 results with different seeds differ from each other. Three chains per case (float32 with
``--seed``, float32 with ``--seed + 1``, bfloat16 with ``--seed``); SSIM between the float32 and bfloat16
results, and between the two float32 ones, over the model window or a ``--crop`` of it centred on the
brain (a crop keeps a 1000-step CPU run to minutes; the network is fully convolutional). The conditions
are brought into model space as a run does (:func:`brasyn.transform.model_space.to_model_space`); the
comparison itself is of the predictor's model-space output, where a crop is possible.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brasyn.common.acceleration import PRECISIONS, SpeedSettings
from brasyn.common.cpu_backends import BACKENDS
from brasyn.common.errors import BrasynError
from brasyn.data.cases import Case, complete_cases, discover
from brasyn.data.modalities import Modality
from brasyn.data.volumes import load_volume
from brasyn.evaluate.metrics import score, ssim
from brasyn.inference.batch import run_batch
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import Synthesizer
from brasyn.model.diffusion import Sampling
from brasyn.model.samplers import SAMPLERS
from brasyn.train.validation import withheld_inputs
from brasyn.weights.store import WeightStore

__all__ = [
    "DEFAULT_VARIANTS",
    "Variant",
    "complete_cases_in",
    "compare_precision",
    "compare_samplers",
    "markdown_table",
    "parse_variant",
]

log = logging.getLogger("brasyn.quality")

DEFAULT_VARIANTS = ("ddpm:1000", "ddim:100", "ddim:50", "ddim:20", "dpm++2m:20", "dpm++2m:10", "x0:1")


@dataclasses.dataclass(frozen=True)
class Variant:
    sampler: str
    steps: int
    precision: str = "fp32"
    backend: str = "torch"

    @property
    def name(self) -> str:
        engine = f":{self.backend}" if self.backend != "torch" else ""
        return f"{self.sampler}:{self.steps}:{self.precision}{engine}"


def parse_variant(text: str) -> Variant:
    """``sampler:steps[:precision[:backend]]``, e.g. ``ddim:50``, ``dpm++2m:20:bf16`` or
    ``dpm++2m:10:bf16:openvino``."""
    parts = text.split(":")
    if len(parts) not in (2, 3, 4) or parts[0] not in SAMPLERS or not parts[1].isdigit():
        raise ValueError(
            f"variant {text!r}: expected sampler:steps[:precision[:backend]] with a sampler of "
            f"{tuple(SAMPLERS)}"
        )
    precision = parts[2] if len(parts) >= 3 else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"variant {text!r}: precision must be one of {', '.join(PRECISIONS)}")
    backend = parts[3] if len(parts) == 4 else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"variant {text!r}: backend must be one of {', '.join(BACKENDS)}")
    return Variant(parts[0], int(parts[1]), precision, backend)


def complete_cases_in(data: Path, ids: list[str] | None = None) -> list[Case]:
    """The case folders under ``data`` that hold all four contrasts (optionally only ``ids``)."""
    cases, _ = complete_cases(discover(data), "a quality comparison")
    if ids:
        cases = [c for c in cases if c.id in ids]
    if not cases:
        raise BrasynError(
            f"no case folder in {data} holds all four contrasts{' among ' + str(ids) if ids else ''}"
        )
    return cases


def _predictor(weights: WeightStore, device: torch.device, variant: Variant) -> DiffusionPredictor:
    speed = SpeedSettings(precision=variant.precision, backend=variant.backend)
    return DiffusionPredictor(weights, device, Sampling(variant.sampler, variant.steps), speed)


def compare_samplers(
    cases: list[Case],
    targets: list[Modality],
    weights: WeightStore,
    device: torch.device,
    variants: list[Variant],
    seed: int = 42,
) -> list[dict[str, Any]]:
    """One row per case, target and variant: the seconds of the case as a run takes them (the batch
    runner, seed and noise as a run draws them) and the written file's scores against the real contrast;
    from the second variant on also its SSIM and PSNR against the first variant's image (how far a
    precision or a backend moves the result)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="brasyn-quality-") as tmp:
        for case in cases:
            for target in targets:
                truth = load_volume(case.files[target], case.id)
                first: np.ndarray | None = None
                inputs = withheld_inputs([case], target, Path(tmp) / f"{case.id}-without-{target.value}")
                for number, variant in enumerate(variants):
                    log.info("%s %s: %s", case.id, target, variant.name)
                    predictor = _predictor(weights, device, variant)
                    output = inputs.with_name(f"{inputs.name}-{number}")
                    batch = run_batch(
                        discover(inputs), Synthesizer(predictor, seed, progress=False), output, prefetch=False
                    )
                    (result,) = batch.results
                    if result.status != "written":
                        raise BrasynError(f"{case.id} {target}: {variant.name} failed: {result.message}")
                    data = load_volume(Path(result.output), case.id).data
                    scores = score(data, truth.data)
                    against_first = {}
                    if first is None:
                        first = data
                    else:
                        moved = score(data, first)
                        against_first = {"ssim_vs_first": moved["ssim"], "psnr_vs_first": moved["psnr"]}
                    rows.append(
                        {
                            "case": case.id,
                            "target": target.value,
                            "variant": variant.name,
                            "steps": predictor.steps(target),
                            "seconds": round(result.seconds, 2),
                            **{k: v for k, v in scores.items() if v is not None},
                            **against_first,
                        }
                    )
                    log.info("%s", row_text(rows[-1]))
    return rows


def row_text(row: dict[str, Any]) -> str:
    """A result row as one log line (``case=... target=t2f ssim=0.9123 ...``), numbers to 4 figures."""

    def text(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return ",".join(f"{k}:{text(v)}" for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return "x".join(map(text, value))
        return str(value)

    return " ".join(f"{k}={text(v)}" for k, v in row.items())


def _crop_window(brain: np.ndarray, crop: tuple[int, int, int] | None) -> tuple[slice, ...]:
    """A window of size ``crop`` centred on the brain's bounding box, inside the volume."""
    if crop is None:
        return tuple(slice(None) for _ in brain.shape)
    nonzero = np.argwhere(brain)
    centre = (nonzero.min(0) + nonzero.max(0)) // 2 if len(nonzero) else np.array(brain.shape) // 2
    window = []
    for c, size, length in zip(centre, crop, brain.shape, strict=True):
        if size > length:
            raise ValueError(f"--crop {crop} is larger than the model window {brain.shape}")
        start = int(np.clip(c - size // 2, 0, length - size))
        window.append(slice(start, start + size))
    return tuple(window)


def compare_precision(
    cases: list[Case],
    targets: list[Modality],
    weights: WeightStore,
    device: torch.device,
    sampler: str = "ddpm",
    steps: int = 1000,
    seed: int = 42,
    crop: tuple[int, int, int] | None = None,
) -> list[dict[str, Any]]:
    """Per case and target: SSIM(bf16, fp32) with the same noise against SSIM(fp32, fp32 other seed)."""
    rows = []
    for case in cases:
        volumes = {m: load_volume(p, case.id) for m, p in case.files.items()}
        for target in targets:
            synthesizer = Synthesizer(_predictor(weights, device, Variant(sampler, steps)), seed)
            conditions = {m: v for m, v in volumes.items() if m is not target}
            prepared, _ = synthesizer.to_model_space(conditions, target, case.id)
            window = _crop_window(prepared[0] > 0, crop)
            images = np.ascontiguousarray(prepared[(slice(None), *window)])
            results = {}
            seconds = {}
            for name, variant, run_seed in (
                ("fp32", Variant(sampler, steps, "fp32"), seed),
                ("fp32_other_seed", Variant(sampler, steps, "fp32"), seed + 1),
                ("bf16", Variant(sampler, steps, "bf16"), seed),
            ):
                runner = Synthesizer(_predictor(weights, device, variant), run_seed)
                log.info(
                    "%s %s: %s, %s, seed %d",
                    case.id,
                    target,
                    Sampling(sampler, steps).describe(),
                    name,
                    run_seed,
                )
                start = time.perf_counter()
                results[name] = runner.predict(images, target, case.id)
                seconds[name] = round(time.perf_counter() - start, 2)
            rows.append(_precision_row(case, target, sampler, steps, images, results, seconds))
            log.info("%s", row_text(rows[-1]))
    return rows


def _precision_row(
    case: Case,
    target: Modality,
    sampler: str,
    steps: int,
    images: np.ndarray,
    results: dict[str, np.ndarray],
    seconds: dict[str, float],
) -> dict[str, Any]:
    between_precisions = ssim(results["bf16"], results["fp32"])
    between_seeds = ssim(results["fp32_other_seed"], results["fp32"])
    return {
        "case": case.id,
        "target": target.value,
        "sampler": sampler,
        "steps": steps,
        "shape": list(images.shape[1:]),
        "ssim_bf16_vs_fp32": between_precisions,
        "ssim_fp32_seed_vs_seed": between_seeds,
        "max_abs_bf16_vs_fp32": float(np.abs(results["bf16"] - results["fp32"]).max()),
        "bf16_closer_than_seeds": between_precisions > between_seeds,
        "seconds": seconds,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The sampler table's rows as a Markdown table."""
    lines = [
        "| case | target | variant | steps | s | SSIM | PSNR | SSIM brain | PSNR brain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['target']} | {r['variant']} | {r['steps']} | {r['seconds']:.1f} | "
            f"{r['ssim']:.4f} | {r['psnr']:.2f} | {r.get('ssim_brain', float('nan')):.4f} | "
            f"{r.get('psnr_brain', float('nan')):.2f} |"
        )
    return "\n".join(lines)
