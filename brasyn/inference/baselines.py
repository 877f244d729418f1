"""Two simple ways to fill in a missing contrast, to measure the diffusion model against.

Both work on the model-space images of the pipeline (each contrast reoriented, clipped to its 0.1 / 99.9 %
quantiles and scaled to [0, 1] by :func:`brasyn.transform.preprocess.normalise`) and go through the same
preparation, geometry and intensity restoration as the diffusion model (``--method linear|nearest``), so
only the model-space prediction differs. Neither needs a GPU or a checkpoint.

- ``nearest``: the condition most like the target, as it is: t1n for t1c and back, t2w for t2f and back.
- ``linear``: per target, ``bias + sum_c weight_c * c`` over the three conditions, clipped to [0, 1]; the
  four numbers are least-squares fits over the brain voxels (any contrast non-zero) of complete cases,
  each brought into model space as training brings it (cases on differing grids included).

``python -m brasyn.baselines fit --data DIR [--data DIR ...] --out WEIGHTS [-v]``
(:mod:`brasyn.commands.baselines`) writes ``baselines.json`` into a weights folder, beside (and independent
of) ``manifest.json``::

    {"format_version": 1,
     "linear": {"t1n": {"weights": {"t1c": 0.4, "t2w": 0.1, "t2f": 0.3}, "bias": 0.02, "voxels": 9}, ...},
     "intensity_ratios": {"t1n": {"t1c": 0.7, "t2w": 0.46, "t2f": 1.11}, ...},
     "training_cases": ["BraTS-GLI-00001-000", ...],
     "provenance": {"created": "...", "brasyn_version": "...", "data": ["..."]}}

The intensity ratios (per target and condition: median over the training cases of
p99.9(target) / p99.9(condition)) restore the input scale exactly as a checkpoint's ratios do. Without a
``baselines.json``, ``nearest`` uses the default ratios of :mod:`brasyn.weights.manifest`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from brasyn.common.errors import CaseError, WeightsError
from brasyn.common.files import atomic_write
from brasyn.data.modalities import MODALITIES, Modality, conditions_for
from brasyn.data.volumes import Volume
from brasyn.transform.intensity import median_ratios
from brasyn.transform.model_space import to_model_space
from brasyn.weights.manifest import DEFAULT_INTENSITY_RATIOS, parse_ratios

__all__ = [
    "BASELINES_NAME",
    "NEAREST",
    "Baselines",
    "LinearFit",
    "predict_linear",
    "predict_nearest",
    "fit_baselines",
]

log = logging.getLogger("brasyn.baselines")

BASELINES_NAME = "baselines.json"
FORMAT_VERSION = 1
NEAREST: dict[Modality, Modality] = {
    Modality.T1N: Modality.T1C,
    Modality.T1C: Modality.T1N,
    Modality.T2W: Modality.T2F,
    Modality.T2F: Modality.T2W,
}
"""The condition copied by ``nearest`` for each target: same weighting, with or without contrast agent /
fluid suppression."""

_HOW_TO_FIT = "create it with `python -m brasyn.baselines fit --data TRAINING_DIR --out {folder}`"


@dataclass(frozen=True)
class LinearFit:
    """``target ~ bias + sum_c weights[c] * c`` on [0, 1] model-space intensities."""

    weights: dict[Modality, float]
    """One weight per condition contrast."""
    bias: float
    voxels: int = 0
    """Brain voxels the fit was made on."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "weights": {m.value: w for m, w in self.weights.items()},
            "bias": self.bias,
            "voxels": self.voxels,
        }


def predict_linear(images: np.ndarray, target: Modality, fit: LinearFit) -> np.ndarray:
    """(3, D, H, W) conditions in :func:`conditions_for` order to the [0, 1] target (D, H, W)."""
    out = np.full(images.shape[1:], fit.bias, dtype=np.float32)
    for image, condition in zip(images, conditions_for(target), strict=True):
        out += np.float32(fit.weights[condition]) * image
    return np.clip(out, 0.0, 1.0, out=out)


def predict_nearest(images: np.ndarray, target: Modality) -> np.ndarray:
    """(3, D, H, W) conditions in :func:`conditions_for` order to a copy of the one paired with ``target``."""
    return np.array(images[conditions_for(target).index(NEAREST[target])], dtype=np.float32)


@dataclass(frozen=True)
class Baselines:
    """The contents of ``baselines.json``: linear fits and intensity ratios per target."""

    linear: dict[Modality, LinearFit] = field(default_factory=dict)
    """Targets with a linear fit; ``linear`` refuses the others."""
    intensity_ratios: dict[Modality, dict[Modality, float]] = field(
        default_factory=lambda: {t: dict(r) for t, r in DEFAULT_INTENSITY_RATIOS.items()}
    )
    """target -> condition -> median of p99.9(target) / p99.9(condition)."""
    training_cases: tuple[str, ...] = ()
    provenance: dict[str, Any] = field(default_factory=dict)
    source: str = "the default intensity ratios (no baselines.json)"
    """Where the numbers come from, for messages."""

    def ratios(self, target: Modality) -> dict[Modality, float]:
        return self.intensity_ratios[Modality(target)]

    def digest(self, target: Modality, method: str) -> str:
        """sha256 of the numbers ``method`` uses for ``target`` (its fit, if linear, and the ratios)."""
        used: dict[str, Any] = {"ratios": {c.value: r for c, r in self.ratios(target).items()}}
        if method == "linear" and target in self.linear:
            used["linear"] = self.linear[target].to_dict()
        return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "linear": {t.value: self.linear[t].to_dict() for t in MODALITIES if t in self.linear},
            "intensity_ratios": {
                t.value: {c.value: r for c, r in self.intensity_ratios[t].items()} for t in MODALITIES
            },
            "training_cases": list(self.training_cases),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> Baselines:
        """Parse ``baselines.json``; ValueError says which field is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError(f"it must hold a JSON object, not {type(data).__name__}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version is {data.get('format_version')!r}, expected {FORMAT_VERSION}")
        linear_entries = data.get("linear") or {}
        ratio_entries = data.get("intensity_ratios") or {}
        if not isinstance(linear_entries, Mapping) or not isinstance(ratio_entries, Mapping):
            raise ValueError("linear and intensity_ratios must be objects keyed by target contrast")
        unknown = (set(linear_entries) | set(ratio_entries)) - {m.value for m in MODALITIES}
        if unknown:
            raise ValueError(f"unknown target contrast(s) {sorted(unknown)}")
        linear = {}
        for key, entry in linear_entries.items():
            target = Modality(key)
            try:
                weights = {c: float(entry["weights"][c.value]) for c in conditions_for(target)}
                fit = LinearFit(weights, float(entry["bias"]), int(entry.get("voxels", 0)))
            except (KeyError, TypeError, ValueError) as e:
                names = ", ".join(c.value for c in conditions_for(target))
                raise ValueError(
                    f"linear[{key!r}] needs 'weights' for {names} and a 'bias' ({type(e).__name__}: {e})"
                ) from e
            if not all(np.isfinite([*weights.values(), fit.bias])):
                raise ValueError(f"linear[{key!r}] holds a value that is not finite")
            linear[target] = fit
        ratios = {t: parse_ratios(t, ratio_entries.get(t.value)) for t in MODALITIES}
        return cls(
            linear=linear,
            intensity_ratios=ratios,
            training_cases=tuple(str(c) for c in data.get("training_cases") or ()),
            provenance=dict(data.get("provenance") or {}),
            source=source,
        )

    def save(self, folder: Path | str) -> Path:
        """Write ``folder/baselines.json`` atomically; the rest of the folder is left alone."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / BASELINES_NAME
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
        return path

    @classmethod
    def load(cls, folder: Path | str) -> Baselines:
        """Read ``folder/baselines.json``; WeightsError saying what to do when it is absent or invalid."""
        path = Path(folder) / BASELINES_NAME
        if not path.is_file():
            raise WeightsError(
                f"there is no {BASELINES_NAME} in {folder}; {_HOW_TO_FIT.format(folder=folder)}"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls.from_dict(data, source=str(path))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
            raise WeightsError(
                f"{path} cannot be used ({e}); fit it again: {_HOW_TO_FIT.format(folder=folder)}"
            ) from e


# --- fitting ---------------------------------------------------------------------------------------


def fit_baselines(
    cases: Iterable[tuple[str, Mapping[Modality, Volume]]], provenance: Mapping[str, Any] | None = None
) -> Baselines:
    """Linear fits and intensity ratios from complete cases, each ``(case id, {contrast: volume})``.

    The cases are read one at a time, so the iterable may load them lazily. Each case is brought into
    model space once, as training brings it (:func:`brasyn.transform.model_space.to_model_space` of all four
    contrasts: resampled where the grids differ, each contrast normalised as the pipeline does); every
    target is fitted on the case's brain voxels (any contrast non-zero), accumulating the normal equations
    over all cases. A case that cannot be brought into model space is skipped with a warning. ValueError
    without any usable case.
    """
    gram = {t: np.zeros((4, 4)) for t in MODALITIES}
    moment = {t: np.zeros(4) for t in MODALITIES}
    voxels = dict.fromkeys(MODALITIES, 0)
    percentiles = []
    ids = []
    for case_id, volumes in cases:
        try:
            stack, record = to_model_space(volumes, MODALITIES, case_id)
        except CaseError as e:
            log.warning("skipped %s: %s", e.case, e.message)
            continue
        brain = record.model_brain()
        for target in MODALITIES:
            design = np.ones((int(brain.sum()), 4))
            for column, condition in enumerate(conditions_for(target)):
                design[:, column] = stack[MODALITIES.index(condition)][brain]
            gram[target] += design.T @ design
            moment[target] += design.T @ stack[MODALITIES.index(target)][brain].astype(np.float64)
            voxels[target] += len(design)
        percentiles.append(record.percentiles)
        ids.append(case_id)
        log.info("%s: added to the fit", case_id)
    if not ids:
        raise ValueError("no complete case (all four contrasts) to fit the baselines on")
    linear = {}
    for target in MODALITIES:
        solution = np.linalg.lstsq(gram[target], moment[target], rcond=None)[0]
        weights = {c: float(w) for c, w in zip(conditions_for(target), solution[:3], strict=True)}
        linear[target] = LinearFit(weights, float(solution[3]), voxels[target])
    medians = {t: median_ratios(percentiles, t, fallback=DEFAULT_INTENSITY_RATIOS[t]) for t in MODALITIES}
    return Baselines(linear, medians, tuple(ids), dict(provenance or {}), source="the fitted baselines")
