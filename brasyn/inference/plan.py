"""What a batch would do, found without doing it (``--dry-run``): per case the contrast it lacks, the
output it would write or keep, the checkpoint its target takes, and an estimate of the batch's time.

Only names are looked at (discovery) and the output folder is only read (an existing output's settings
record decides whether it would be kept, as in a run); no input volume is loaded and nothing is written.
The estimate times one denoiser forward per target on zeros of the model's size on the run's device
(:meth:`~brasyn.inference.predictors.DiffusionPredictor.estimate_case_seconds`) and multiplies by the
steps and the cases: reading, preparing and writing the cases are not in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from brasyn.common.errors import CaseError, WeightsError
from brasyn.data.cases import Case
from brasyn.data.modalities import Modality
from brasyn.inference.predictors import DiffusionPredictor
from brasyn.inference.sharding import Shard
from brasyn.inference.synthesize import Synthesizer

__all__ = ["QUICK_STEPS", "BatchPlan", "CasePlan", "cpu_time_warning", "duration", "plan_batch"]

log = logging.getLogger(__name__)

QUICK_STEPS = 10
"""The model calls of the quick setting the CPU warning advises (``--sampler dpm++2m --steps 10``)."""


@dataclass(frozen=True)
class CasePlan:
    """One case as a run would take it."""

    case: str
    action: str
    """``write`` (synthesise), ``keep`` (an output with this run's settings exists), ``skip`` (nothing
    to synthesise) or ``fail`` (a naming problem, or no checkpoint for its target)."""
    target: Modality | None = None
    """The contrast it lacks (or ``--target`` asks for)."""
    output: Path | None = None
    checkpoint: str = ""
    """The file its target's denoiser is loaded from, or the baseline's source."""
    note: str = ""
    """Why it is kept, skipped or fails."""


@dataclass(frozen=True)
class BatchPlan:
    cases: list[CasePlan]
    seconds_per_case: dict[Modality, float] = field(default_factory=dict)
    """The sampling time of one BraTS-size case per target, estimated from one timed forward."""

    @property
    def to_write(self) -> list[CasePlan]:
        return [c for c in self.cases if c.action == "write"]

    @property
    def estimated_seconds(self) -> float | None:
        """The estimated sampling time of every case to write; None where there is no estimate (a
        baseline, or the timing failed)."""
        todo = self.to_write
        if not todo or any(c.target not in self.seconds_per_case for c in todo):
            return None
        return sum(self.seconds_per_case[c.target] for c in todo if c.target is not None)


def _checkpoint(synthesizer: Synthesizer, target: Modality) -> str:
    """The file ``target``'s denoiser comes from (raises WeightsError where there is none)."""
    predictor = synthesizer.predictor
    if isinstance(predictor, DiffusionPredictor):
        info = predictor.weights.info(target)
        return f"{predictor.weights.folder / info.file} (sha256 {info.sha256[:12]}...)"
    return predictor.describe()


def _case_plan(
    item: Case | CaseError,
    synthesizer: Synthesizer,
    output: Path,
    overwrite: bool,
    grid_of: Modality | None,
    resume_any: bool,
) -> CasePlan:
    if isinstance(item, CaseError):
        return CasePlan(item.case, "fail", note=item.message)
    if item.target is None or item.output_name is None:
        return CasePlan(item.id, "skip", note=item.skip_reason or "nothing to synthesise")
    path = output / item.output_name
    try:
        checkpoint = _checkpoint(synthesizer, item.target)
    except WeightsError as exc:
        return CasePlan(item.id, "fail", item.target, path, note=str(exc))
    if not synthesizer.needs_work(item, output, overwrite, grid_of, resume_any):
        note = "an output written with these settings exists (kept; --overwrite replaces it)"
        return CasePlan(item.id, "keep", item.target, path, checkpoint, note)
    note = "replaces the existing output" if path.exists() else ""
    return CasePlan(item.id, "write", item.target, path, checkpoint, note)


def plan_batch(
    found: Sequence[Case | CaseError],
    synthesizer: Synthesizer,
    output: Path,
    *,
    overwrite: bool = False,
    grid_of: Modality | None = None,
    resume_any: bool = False,
    shard: Shard | None = None,
    estimate: bool = True,
) -> BatchPlan:
    """What :func:`~brasyn.inference.batch.run_batch` would do with the same arguments, without doing it;
    ``estimate`` times one denoiser forward per target to write (diffusion only)."""
    if shard is not None:
        found = shard.select(found, key=lambda item: item.case if isinstance(item, CaseError) else item.id)
    cases = [_case_plan(item, synthesizer, output, overwrite, grid_of, resume_any) for item in found]
    seconds: dict[Modality, float] = {}
    predictor = synthesizer.predictor
    if estimate and isinstance(predictor, DiffusionPredictor):
        for target in dict.fromkeys(c.target for c in cases if c.action == "write" and c.target):
            try:
                seconds[target] = predictor.estimate_case_seconds(target)
            except (RuntimeError, ValueError, WeightsError) as exc:  # an estimate is never a refusal
                log.warning("no time estimate for %s: %s", target.value, exc)
    return BatchPlan(cases, seconds)


def duration(seconds: float) -> str:
    """A time as a reader takes it in: seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def cpu_time_warning(plan: BatchPlan, predictor: DiffusionPredictor) -> str | None:
    """What a batch that fell back to the CPU will cost: one case and all the cases to write, from the
    plan's timed forward; the quick sampler is advised only where it takes fewer model calls than this
    run. None where nothing is to be written or there is no estimate."""
    total, todo = plan.estimated_seconds, plan.to_write
    if total is None or not todo or todo[0].target is None:
        return None
    steps = predictor.steps(todo[0].target)
    text = (
        f"on this CPU one BraTS-size case with {predictor.sampling.sampler}, {steps} steps"
        + (f", {predictor.draws} draws" if predictor.draws > 1 else "")
        + f" takes about {duration(total / len(todo))}"
    )
    if len(todo) > 1:
        text += f", the {len(todo)} cases to synthesise about {duration(total)}"
    text += " (timed from one forward); "
    if steps > QUICK_STEPS:
        text += f"for a quick result use --sampler dpm++2m --steps {QUICK_STEPS}, or "
    return text + "run where a GPU is visible (docker run --gpus all)"
