"""PNG previews for a person to look at (``--extras``): the four contrasts of a case, the synthetic one
marked, in three planes through the brain's largest abnormality.

The figure (:func:`preview_figure`) has a title naming the case, the synthesised contrast and how it was
made; one column per contrast, always t1n, t1c, t2w, t2f whatever the target, the synthetic column titled
``<contrast> (synthetic)`` in a coloured frame; rows axial, coronal and sagittal in the radiological
convention (patient right on the image's left, anterior and superior at the top), with the patient
directions (R/L, A/P, S/I) written at the edges of each panel and the slice's index in its corner. Each
column is windowed on its own brain: from the 0.5th to the 99.5th percentile of its voxels inside the brain
(:func:`window`), so a contrast whose brain is bright overall (t1n after min-max scaling) is not drawn
white. Below the panels, in capitals: a synthetic image is not for diagnosis, and, where the weights are
demo or random, that they are (:func:`notes`); the PNG's text record says the same, with the model grid,
the crossing voxel and the slices.

Where the slices cross (:func:`slice_centre`): the centre of mass of the largest connected region of
abnormally bright FLAIR (t2f) signal inside the brain, where a lesion shows best; "abnormally bright" is
brighter than the brain's median by three times its median absolute deviation, and the region must be at
least :data:`MIN_LESION_MM3` (smaller ones are noise). Without such a region: the brain's centre of mass.

matplotlib is imported only when a figure is drawn, so a run without ``--extras`` never pays for it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brasyn.common.errors import WeightsError
from brasyn.common.files import atomic_write
from brasyn.data.cases import Case
from brasyn.data.modalities import MODALITIES, Modality
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.synthesize import Preview, Synthesizer, Synthetic
from brasyn.model.samplers import SAMPLERS
from brasyn.transform.intensity import keep_signal
from brasyn.transform.preprocess import MODEL_AXES

__all__ = [
    "MATPLOTLIB_MISSING",
    "MIN_LESION_MM3",
    "NOT_FOR_DIAGNOSIS",
    "PLANES",
    "Panel",
    "Spread",
    "matplotlib_available",
    "notes",
    "panels",
    "preview_figure",
    "preview_settings",
    "previewer",
    "slice_centre",
    "spread_window",
    "window",
    "write_preview",
]

log = logging.getLogger("brasyn")

MIN_LESION_MM3 = 500
"""The smallest bright region taken as the abnormality to centre on (voxels are 1 mm in model space)."""
BRIGHT_MADS = 3.0
"""Brighter than the brain's median by this many median absolute deviations counts as abnormal."""
_BLOCK = 4
"""Connected regions are found on blocks of this many voxels a side (fast without scipy, fine enough)."""
SYNTHETIC_COLOUR = "#ff8c00"
SPREAD_COLOURS = "inferno"
"""The uncertainty column's colour map: dark where the draws agree, bright where they differ."""
PLANES = ("axial", "coronal", "sagittal")
MATPLOTLIB_MISSING = (
    "--extras draws its previews with matplotlib, which is not installed here: "
    "pip install matplotlib==3.11.2 (see requirements.txt), or leave out --extras"
)
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
WINDOW_PERCENTILES = (0.5, 99.5)
"""Each column is drawn from the first to the second percentile of its voxels inside the brain."""
NOT_FOR_DIAGNOSIS = "SYNTHETIC IMAGE, NOT FOR DIAGNOSIS"
QUALITY_NOTES = {
    "demo": "DEMO WEIGHTS: the bundled small model, not the released cWDM checkpoints; demo quality",
    "random": "RANDOM WEIGHTS (python -m brasyn.weights init): noise, for tests only",
}


def matplotlib_available() -> bool:
    """Whether previews can be drawn (asked before a run starts; importing matplotlib is left for later)."""
    return importlib.util.find_spec("matplotlib") is not None


# --- where to slice -------------------------------------------------------------------------------


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected region of a (small) boolean array, as a mask (empty when there is none)."""
    seen = np.zeros(mask.shape, dtype=bool)
    best: list[tuple[int, int, int]] = []
    steps = ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1))
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        region, queue = [start], deque([start])
        while queue:
            x, y, z = queue.popleft()
            for dx, dy, dz in steps:
                n = (x + dx, y + dy, z + dz)
                if all(0 <= n[i] < mask.shape[i] for i in range(3)) and mask[n] and not seen[n]:
                    seen[n] = True
                    region.append(n)
                    queue.append(n)
        if len(region) > len(best):
            best = region
    out = np.zeros(mask.shape, dtype=bool)
    if best:
        out[tuple(np.array(best).T)] = True
    return out


def _blocks(mask: np.ndarray) -> np.ndarray:
    """Per block of :data:`_BLOCK` voxels a side: whether a quarter of it or more is set."""
    padded = np.pad(mask, [(0, -s % _BLOCK) for s in mask.shape])
    shape = [s // _BLOCK for s in padded.shape]
    grouped = padded.reshape(shape[0], _BLOCK, shape[1], _BLOCK, shape[2], _BLOCK)
    return grouped.mean(axis=(1, 3, 5)) >= 0.25


def _centre_of_mass(mask: np.ndarray) -> tuple[int, int, int]:
    return tuple(round(float(c.mean())) for c in np.nonzero(mask))  # type: ignore[return-value]


def slice_centre(flair: np.ndarray, brain: np.ndarray) -> tuple[tuple[int, int, int], str]:
    """The voxel the three slices pass through, and what it is ("lesion" or "brain centre"); see the module
    text for the rule. ``flair`` and ``brain`` share one 3-D shape."""
    if not brain.any():
        return tuple(s // 2 for s in brain.shape), "volume centre"  # type: ignore[return-value]
    values = flair[brain]
    median = float(np.median(values))
    spread = float(np.median(np.abs(values - median)))
    bright = brain & (flair > median + BRIGHT_MADS * max(spread, 1e-6))
    region = _largest_region(_blocks(bright))
    if region.any():
        cells = region.repeat(_BLOCK, 0).repeat(_BLOCK, 1).repeat(_BLOCK, 2)
        lesion = bright & cells[: bright.shape[0], : bright.shape[1], : bright.shape[2]]
        if lesion.sum() >= MIN_LESION_MM3:
            return _centre_of_mass(lesion), "lesion"
    return _centre_of_mass(brain), "brain centre"


# --- the panels -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One plane of one volume as shown, with the patient direction at each edge."""

    plane: str
    index: int
    """The slice's index along the axis the plane cuts."""
    count: int
    """The slices along that axis."""
    image: np.ndarray
    """Rows top to bottom, columns left to right, as drawn."""
    left: str
    right: str
    top: str
    bottom: str


def panels(volume: np.ndarray, centre: Sequence[int], axes: Sequence[str]) -> list[Panel]:
    """Axial, coronal and sagittal slices of ``volume`` through ``centre``.

    ``axes`` are the nibabel codes of the array's axes (the direction each index increases towards; the
    model grid is ``("L", "P", "S")``); the edge letters follow from them. Axial and coronal slices put the
    first axis across, sagittal ones the second; the third axis runs upwards and the second downwards, so
    on the model grid the views read as radiologists read them (patient right on the left, anterior and
    superior at the top)."""
    x, y, z = (int(c) for c in centre)
    a0, a1, a2 = axes

    def across(code: str) -> tuple[str, str]:
        return _OPPOSITE[code], code  # the index increases to the right

    return [
        # rows follow the second axis downwards
        Panel("axial", z, volume.shape[2], volume[:, :, z].T, *across(a0), _OPPOSITE[a1], a1),
        # rows follow the third axis upwards
        Panel("coronal", y, volume.shape[1], volume[:, y, :].T[::-1], *across(a0), a2, _OPPOSITE[a2]),
        Panel("sagittal", x, volume.shape[0], volume[x, :, :].T[::-1], *across(a1), a2, _OPPOSITE[a2]),
    ]


# --- the figure -----------------------------------------------------------------------------------


def window(volume: np.ndarray, brain: np.ndarray | None = None) -> tuple[float, float]:
    """The grey levels a column is drawn between: :data:`WINDOW_PERCENTILES` of ``volume`` inside
    ``brain`` (without a mask, or with an empty one: of its non-zero voxels)."""
    values = volume[brain] if brain is not None and brain.any() else volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, WINDOW_PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)


@dataclass(frozen=True)
class Spread:
    """The standard deviation of a case's draws, in model space, for the uncertainty column."""

    image: np.ndarray
    draws: int


def spread_window(spread: np.ndarray, brain: np.ndarray | None = None) -> tuple[float, float]:
    """The uncertainty column's range: from 0 (the draws agree) to the 99.5th percentile of the spread
    inside ``brain``, so a few extreme voxels do not wash the rest out."""
    values = spread[brain] if brain is not None and brain.any() else spread[spread != 0]
    high = float(np.percentile(values, WINDOW_PERCENTILES[1])) if values.size else 0.0
    return 0.0, high if high > 0 else 1.0


def notes(quality: str | None) -> list[str]:
    """What a reader of a preview must know about the image: it is synthetic, and, for ``quality``
    "demo" or "random" weights, that they are."""
    return [NOT_FOR_DIAGNOSIS, *([QUALITY_NOTES[quality]] if quality in QUALITY_NOTES else [])]


def _column_title(contrast: Modality, synthetic: Modality) -> str:
    return f"{contrast.value} (synthetic)" if contrast is synthetic else contrast.value


def preview_figure(
    volumes: Mapping[Modality, np.ndarray],
    synthetic: Modality,
    title: str,
    centre: Sequence[int],
    axes: Sequence[str] = ("L", "P", "S"),
    brain: np.ndarray | None = None,
    footer: Sequence[str] = (),
    spread: Spread | None = None,
) -> Any:
    """A matplotlib ``Figure`` (no pyplot: nothing global) of the four contrasts (columns t1n, t1c, t2w,
    t2f) in three planes (rows) through ``centre``, each contrast windowed on its own ``brain``
    (:func:`window`); with ``spread``, a fifth column: the draws' standard deviation in a heat map from 0
    to its 99.5th percentile in the brain (:func:`spread_window`); the lines of ``footer`` (:func:`notes`)
    below the panels."""
    from matplotlib.figure import Figure

    columns: list[tuple[str, np.ndarray, tuple[float, float], bool]] = [
        (_column_title(c, synthetic), volumes[c], window(volumes[c], brain), c is synthetic)
        for c in MODALITIES
    ]
    if spread is not None:
        title_of_spread = f"{synthetic.value} std ({spread.draws} draws)"
        columns.append((title_of_spread, spread.image, spread_window(spread.image, brain), True))
    figure = Figure(figsize=(10.0 * len(columns) / len(MODALITIES), 8.4), dpi=100, facecolor="black")
    grid = figure.subplots(len(PLANES), len(columns), squeeze=False)
    figure.suptitle(title, color="white", fontsize=11)
    for column, (heading, volume, (low, high), marked) in enumerate(columns):
        is_spread = spread is not None and column == len(MODALITIES)
        for row, panel in enumerate(panels(volume, centre, axes)):
            ax = grid[row][column]
            colours = SPREAD_COLOURS if is_spread else "gray"
            ax.imshow(panel.image, cmap=colours, vmin=low, vmax=high, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if row == 0:
                colour = SYNTHETIC_COLOUR if marked else "white"
                ax.set_title(heading, color=colour, fontsize=10)
            if column == 0:
                ax.set_ylabel(panel.plane, color="white", fontsize=10)
            for spine in ax.spines.values():
                spine.set_color(SYNTHETIC_COLOUR if marked else "black")
                spine.set_linewidth(3.0 if marked else 0.5)
            letter = {"color": "yellow", "fontsize": 8, "transform": ax.transAxes}
            ax.text(0.02, 0.5, panel.left, ha="left", va="center", **letter)
            ax.text(0.98, 0.5, panel.right, ha="right", va="center", **letter)
            ax.text(0.5, 0.98, panel.top, ha="center", va="top", **letter)
            ax.text(0.5, 0.02, panel.bottom, ha="center", va="bottom", **letter)
            ax.text(0.02, 0.98, f"slice {panel.index} of {panel.count}", ha="left", va="top", **letter)
    for line, text in enumerate(footer):
        figure.text(
            0.5, 0.035 - 0.025 * line, text, ha="center", va="center", color=SYNTHETIC_COLOUR, fontsize=10
        )
    bottom = 0.01 + 0.025 * len(footer)
    figure.subplots_adjust(left=0.04, right=0.99, bottom=bottom, top=0.9, wspace=0.03, hspace=0.05)
    return figure


def write_preview(path: Path, figure: Any, description: str = "") -> None:
    """Save ``figure`` as a PNG at ``path`` atomically (a reader never sees half a file); ``description``
    goes into the PNG's text chunks."""
    atomic_write(
        path,
        lambda handle: figure.savefig(
            handle, format="png", facecolor="black", metadata={"Description": description}
        ),
        prefix=".brasyn-preview-",
        suffix=".png",
        durable=False,
    )


def previewer(
    folder: Path, settings: str = "", quality: Mapping[Modality, str | None] | None = None
) -> Preview:
    """Writes ``folder/<case>-<target>.png``: the three inputs as the model saw them and the synthetic
    contrast as it is written (thresholded, zero outside the brain), in three planes through the largest
    abnormality; ``settings`` (how the image was made) goes into the title, and the quality of each
    target's weights (``quality``: "demo", "random" ...) below the panels (:func:`notes`)."""
    folder.mkdir(parents=True, exist_ok=True)

    def preview(case: Case, synthetic: Synthetic) -> None:
        images, record = synthetic.images, synthetic.record
        brain = record.model_brain()
        target = Modality(case.target)
        volumes = {Modality(m): image for m, image in zip(record.contrasts, images, strict=True)}
        volumes[target] = keep_signal(synthetic.mean, brain)
        spread = None
        if synthetic.spread is not None:
            spread = Spread(np.where(brain, synthetic.spread, 0.0), int(synthetic.settings.get("draws", 2)))
        centre, where = slice_centre(volumes[Modality.T2F], brain)
        title = f"{case.id} \u2014 target {target.value}" + (f" \u2014 {settings}" if settings else "")
        footer = notes((quality or {}).get(target))
        shape = "x".join(str(s) for s in images.shape[1:])
        x, y, z = centre
        description = (
            f"{title}; model grid {shape}; slices through the {where} at voxel {tuple(centre)}: axial slice "
            f"{z}, coronal slice {y}, sagittal slice {x}; each column windowed on its brain's "
            f"{WINDOW_PERCENTILES[0]}-{WINDOW_PERCENTILES[1]}th percentiles; "
            + (
                f"last column: per-voxel standard deviation of {spread.draws} draws, 0 to its "
                f"{WINDOW_PERCENTILES[1]}th percentile in the brain; "
                if spread is not None
                else ""
            )
            + "; ".join(footer)
        )
        try:
            figure = preview_figure(volumes, target, title, centre, MODEL_AXES, brain, footer, spread)
        except (ValueError, RuntimeError) as exc:  # an extra: the written case stands
            log.warning("%s: no preview: it could not be drawn (%s)", case.id, exc)
            return
        write_preview(folder / f"{case.id}-{target.value}.png", figure, description)
        log.debug("%s: preview through the %s at voxel %s", case.id, where, tuple(centre))

    return preview


def preview_settings(synthesizer: Synthesizer) -> tuple[str, dict[Modality, str | None]]:
    """How a synthesizer makes its images, for a preview's title (the method, and for the diffusion model
    its sampler, steps and run seed), and the quality of each target's weights."""
    predictor = synthesizer.predictor
    settings = predictor.settings()
    text = str(settings.get("method", ""))
    if "sampler" in settings:
        steps = SAMPLERS[settings["sampler"]].steps_for(settings["steps"])
        text += f", {settings['sampler']} {steps} step{'s' if steps != 1 else ''}, seed {synthesizer.seed}"
        if settings.get("draws", 1) > 1:
            text += f", mean of {settings['draws']} draws"
    quality: dict[Modality, str | None] = {}
    for target in MODALITIES:
        try:  # the baselines have no weights to be of any quality
            quality[target] = (
                predictor.weights.info(target).quality if isinstance(predictor, DiffusionPredictor) else None
            )
        except WeightsError:  # no weights for it: no case of it is written, so none is previewed
            quality[target] = None
    return text, quality
