"""One case end to end: read the three present contrasts, bring them into model space, let the predictor
fill in the missing one, bring it back onto the input grid and scale, and write it.

:class:`Synthesizer` holds a :class:`~brasyn.inference.predictors.Predictor` and the run's seed; it does not
loop over cases (that is :mod:`brasyn.inference.batch`) and does not know which method predicts. Per case:

    volumes.load_volume -> model_space.to_model_space -> predictor.predict
        -> model_space.from_model_space -> volumes.write_volume

Each phase is timed into :attr:`CaseResult.phases` (seconds): ``load`` (reading the files), ``prepare``
(resampling where needed, normalisation, window), ``sample`` (the predictor), ``restore`` (geometry,
intensity, back onto the reference grid) and ``write``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brasyn.common.errors import CaseError, WeightsError
from brasyn.common.measure import peak_memory_mib, reset_peak_memory
from brasyn.common.runtime import case_generator
from brasyn.common.version import __version__
from brasyn.data.cases import Case
from brasyn.data.modalities import Modality, conditions_for
from brasyn.data.provenance import Decision, decide, short_description
from brasyn.data.volumes import Volume, load_volume, write_problem, write_volume
from brasyn.inference.draws import DrawSummary, Welford, sample_draws
from brasyn.inference.predictors import Predictor, Progress
from brasyn.inference.progress import step_bar
from brasyn.inference.stopping import raise_if_stopped
from brasyn.transform.intensity import OUTPUT_THRESHOLD
from brasyn.transform.model_space import ModelSpace, from_model_space, to_model_space

__all__ = [
    "EMPTY_IMAGE",
    "PHASES",
    "CaseResult",
    "Loaded",
    "Preview",
    "Synthesizer",
    "Synthetic",
    "predict_draws",
]

EMPTY_IMAGE = "the synthetic image is empty"
"""The start of a case's error when the model predicted nothing (an early or unfit model)."""

log = logging.getLogger("brasyn")

PHASES = ("load", "prepare", "sample", "restore", "write")
"""The timed phases of one case, in order."""


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
    """Whether the inputs were resampled onto a 1 mm model grid (``brasyn.transform.resample``)."""
    grid_of: str | None = None
    """The contrast whose grid the output is on, when resampled."""
    model_shape: list[int] | None = None
    """The size of the model window the case was predicted in."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each phase reached (:data:`PHASES`); load and prepare may have run ahead, while
    the previous case was sampled."""
    note: str | None = None
    """Why an existing output was kept or replaced (:class:`brasyn.data.provenance.Decision`), else None."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Loaded:
    """A case read from disk and brought into model space, ready to be predicted."""

    images: np.ndarray
    """(3, D, H, W) float32 in [0, 1]: the conditions in :func:`conditions_for` order."""
    record: ModelSpace
    phases: dict[str, float]
    """Seconds of ``load`` and ``prepare``."""


@dataclass(frozen=True)
class Synthetic:
    """One written case's prediction, for what ``--extras`` writes beside the output."""

    images: np.ndarray
    """(3, D, H, W) model-space conditions."""
    record: ModelSpace
    mean: np.ndarray
    """(D, H, W) [0, 1] model-space result: the mean of the draws (the one draw where there is one)."""
    spread: np.ndarray | None
    """(D, H, W) model-space standard deviation of the draws; None for one draw."""
    spread_on_grid: np.ndarray | None
    """``spread`` on the output's grid and intensity scale; None for one draw."""
    settings: dict[str, Any]
    """The output's settings record."""


Preview = Callable[[Case, Synthetic], None]
"""Called after a write with the case and its :class:`Synthetic` (the ``--extras`` writer)."""


def predict_draws(
    predictor: Predictor,
    seed: int,
    images: np.ndarray,
    target: Modality,
    case_id: str,
    progress: Progress | None = None,
    after_draw: Callable[[Welford], None] | None = None,
) -> DrawSummary:
    """``predictor``'s draws of one case's model-space ``images``, each from its own noise (seeded by
    ``seed``, ``case_id`` and the draw's index; :mod:`brasyn.inference.draws`), summarised; ``progress``
    sees every sampling step of every batch of draws. CaseError where the target has no weights."""
    device = predictor.device
    conditions = torch.from_numpy(images)[None]

    def sample(indices: Sequence[int]) -> np.ndarray:
        generators = [case_generator(seed, case_id, device, k) for k in indices]
        batch = conditions.expand(len(generators), *conditions.shape[1:])
        # one draw: its generator alone, as a predictor written for one draw at a time expects
        source = generators[0] if len(generators) == 1 else generators
        out = predictor.predict(batch, target, source, progress)
        return out[:, 0].float().cpu().numpy()

    draws = getattr(predictor, "draws", 1)  # a predictor of its own may know nothing of draws
    try:
        return sample_draws(sample, draws, getattr(predictor, "draw_batch", None), after_draw)
    except WeightsError as exc:
        raise CaseError(case_id, str(exc)) from exc


def _write_output(case: Case, data: np.ndarray, reference: Volume, output: Path, settings: dict) -> None:
    """The case's output, atomically, with its settings record; CaseError where it cannot be written."""
    try:
        write_volume(data, reference, output, description=short_description(settings), record=settings)
    except OSError as exc:  # disk full, folder gone, read-only: this case fails, the batch goes on
        raise CaseError(case.id, write_problem(exc, output), case.files.values()) from exc


def _stepper(bar: Any) -> Progress:
    """Called at every sampling step: ends the case at once when a stop signal arrived (also one whose
    exception a library swallowed) and moves the step bar."""

    def step(info: dict[str, Any]) -> None:
        raise_if_stopped()
        if bar is not None:
            bar.update(info["x"].shape[0])

    return step


def _draws_bar(case: Case, predictor: Predictor) -> Any:
    """The step bar of a case over all its draws; None off a terminal or for a one-step method."""
    assert case.target is not None
    steps, draws = predictor.steps(case.target), getattr(predictor, "draws", 1)
    if not steps:
        return None
    return step_bar(steps * draws, f"{case.id} {case.target}" + (f" x{draws}" if draws > 1 else ""))


def _refuse_empty(case: Case, data: np.ndarray, predictor: Predictor) -> None:
    if not np.any(data):
        raise CaseError(
            case.id,
            f"{EMPTY_IMAGE} (all voxels 0); check the inputs and {predictor.describe()}",
            case.files.values(),
        )


def _write_extras(preview: Preview, case: Case, synthetic: Synthetic) -> None:
    try:
        preview(case, synthetic)
    except OSError as exc:  # the extras are extras: the written case stands
        log.warning("%s: no extras: %s", case.id, exc)


class Synthesizer:
    """Synthesises the missing contrast of one case at a time with ``predictor``; each case's random
    generator follows from ``seed`` and the case id alone (not from the order of the batch)."""

    def __init__(self, predictor: Predictor, seed: int = 42, progress: bool = True) -> None:
        self.predictor = predictor
        self.seed = seed
        self.progress = progress

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    def output_settings(self, target: Modality, grid_of: Modality | None = None) -> dict[str, Any]:
        """This run's settings for an output of ``target``, as its record holds them
        (:mod:`brasyn.data.provenance`); WeightsError where ``target`` has no weights."""
        return {
            **self.predictor.output_settings(target, self.seed),
            "grid_of": grid_of.value if grid_of is not None else None,
        }

    def decision(
        self,
        case: Case,
        output_dir: Path,
        overwrite: bool = False,
        grid_of: Modality | None = None,
        resume_any: bool = False,
    ) -> Decision:
        """Whether ``case``'s output is (re)written, given what the output folder holds."""
        assert case.target is not None and case.output_name is not None
        output = output_dir / case.output_name
        try:
            settings = self.output_settings(case.target, grid_of)
        except WeightsError:  # no weights for this target: the case fails in process, not here
            return Decision(True)
        return decide(output, settings, overwrite=overwrite, resume_any=resume_any)

    def needs_work(
        self,
        case: Case,
        output_dir: Path,
        overwrite: bool = False,
        grid_of: Modality | None = None,
        resume_any: bool = False,
    ) -> bool:
        """Whether :meth:`process` would load and synthesise ``case`` (not skip it)."""
        if case.target is None or case.output_name is None:
            return False
        return self.decision(case, output_dir, overwrite, grid_of, resume_any).work

    def load(self, case: Case, grid_of: Modality | None = None) -> Loaded:
        """Reads ``case``'s conditions and brings them into model space (CPU only, no model): the part of
        a case that can run while another case is being predicted. Raises CaseError."""
        if case.target is None:
            raise CaseError(case.id, case.skip_reason or "nothing to synthesise")
        start = time.perf_counter()
        volumes = {m: load_volume(p, case.id) for m, p in case.conditions.items()}
        read = time.perf_counter()
        images, record = self.to_model_space(volumes, case.target, case.id, grid_of)
        return Loaded(images, record, {"load": read - start, "prepare": time.perf_counter() - read})

    def to_model_space(
        self,
        volumes: dict[Modality, Volume],
        target: Modality,
        case_id: str,
        grid_of: Modality | None = None,
    ) -> tuple[np.ndarray, ModelSpace]:
        """The conditions of ``target`` in model space, with the record that undoes it."""
        return to_model_space(volumes, conditions_for(target), case_id, grid_of)

    def predict(
        self, images: np.ndarray, target: Modality, case_id: str, progress: Progress | None = None
    ) -> np.ndarray:
        """The (D, H, W) [0, 1] model-space target of one case (the mean of its draws), with the case's
        own random draws."""
        return self.predict_draws(images, target, case_id, progress).mean

    def predict_draws(
        self,
        images: np.ndarray,
        target: Modality,
        case_id: str,
        progress: Progress | None = None,
        after_draw: Callable[[Welford], None] | None = None,
    ) -> DrawSummary:
        """The predictor's draws of one case, summarised (:func:`predict_draws`)."""
        return predict_draws(self.predictor, self.seed, images, target, case_id, progress, after_draw)

    def restore(
        self,
        model_space: np.ndarray,
        record: ModelSpace,
        target: Modality,
        threshold: float = OUTPUT_THRESHOLD,
    ) -> np.ndarray:
        """A model-space target back on the grid and intensity scale of the inputs (``threshold`` 0 for a
        spread map)."""
        try:
            ratios = self.predictor.intensity_ratios(target)
        except WeightsError as exc:
            raise CaseError(record.case, str(exc)) from exc
        return from_model_space(model_space, record, ratios, threshold)

    def process(
        self,
        case: Case,
        output_dir: Path,
        overwrite: bool = False,
        preview: Preview | None = None,
        grid_of: Modality | None = None,
        loaded: Callable[[], Loaded] | None = None,
        resume_any: bool = False,
    ) -> CaseResult:
        """Synthesise and write one case; never raises for a problem of the case itself.

        ``loaded`` returns :meth:`load`'s result for this case (or raises its CaseError) where that was
        started ahead, while the previous case was predicted. An existing output is kept or replaced as
        :func:`brasyn.data.provenance.decide` says (``overwrite``, ``resume_any``); a replacement is written
        whole beside it and renamed over it, so a failed one leaves the old file as it was.
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
        decision = self.decision(case, output_dir, overwrite, grid_of, resume_any)
        result.note = decision.note
        if not decision.work:
            result.status, result.message = "skipped", decision.message
            return result
        if decision.note == "replaced: settings differed":
            log.warning("%s: %s", case.id, decision.message)
        reset_peak_memory(self.device)
        bar = None
        try:
            ready = loaded() if loaded is not None else self.load(case, grid_of)
            result.phases.update(ready.phases)
            record = ready.record
            result.model_shape = list(record.model_shape)
            if record.grid is not None:
                result.resampled, result.grid_of = True, record.grid.reference.value
            if self.progress:
                bar = _draws_bar(case, self.predictor)
            clock = time.perf_counter()
            drawn = self.predict_draws(ready.images, case.target, case.id, _stepper(bar))
            model_space = drawn.mean
            result.phases["sample"] = time.perf_counter() - clock
            clock = time.perf_counter()
            data = self.restore(model_space, record, case.target)
            spread_on_grid = None
            if preview is not None and drawn.spread is not None:
                spread_on_grid = self.restore(drawn.spread, record, case.target, threshold=0.0)
            result.phases["restore"] = time.perf_counter() - clock
            _refuse_empty(case, data, self.predictor)
            clock = time.perf_counter()
            settings = {
                **self.output_settings(case.target, grid_of),
                "version": __version__,
                "target": case.target.value,
                "resampled": result.resampled,
            }
            _write_output(case, data, record.reference, output, settings)
            result.phases["write"] = time.perf_counter() - clock
            if preview is not None:
                _write_extras(
                    preview,
                    case,
                    Synthetic(ready.images, record, model_space, drawn.spread, spread_on_grid, settings),
                )
        except CaseError as exc:
            result.message = exc.message
            result.files = [str(p) for p in (exc.files or case.files.values())]
            return result
        except WeightsError as exc:  # this target's checkpoint: the other cases may still have theirs
            result.message = str(exc)
            return result
        finally:
            if bar is not None:
                bar.close()
            result.seconds = round(time.perf_counter() - start, 3)
            result.peak_memory_mib = round(peak_memory_mib(self.device), 1)
            result.phases = {k: round(v, 4) for k, v in result.phases.items()}
        result.status = "written"
        result.message = f"{case.target} written to {output.name}"
        if decision.note == "replaced: settings differed":
            result.message += " (replaced: its settings differed)"
        return result
