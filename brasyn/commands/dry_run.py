"""``brasyn --dry-run``: the main job's plan printed instead of run (:mod:`brasyn.inference.plan`).

On stdout: the folders and the weights, one line per case (the contrast it lacks, what the run would do,
the output file and the checkpoint its target takes), and the estimated time of the batch, said to be an
estimate. Exit 0; a setup the run would refuse is refused the same way before this (exit 2).
"""

from __future__ import annotations

from pathlib import Path

from brasyn.inference.plan import BatchPlan, duration

__all__ = ["print_plan"]


def _estimate_line(plan: BatchPlan, device: str, steps: str) -> str:
    todo = len(plan.to_write)
    if not todo:
        return "estimated time: none (no case to synthesise)"
    seconds = plan.estimated_seconds
    if seconds is None:
        return f"estimated time: no estimate for {todo} case(s) (a baseline takes seconds per case)"
    return (
        f"estimated time: about {duration(seconds)} for {todo} case(s) to synthesise on {device} "
        f"(an estimate: one timed denoiser forward on {device}, scaled to a BraTS-size volume, times "
        f"{steps} per case; reading, preparing and writing the cases are not counted)"
    )


def print_plan(
    plan: BatchPlan, input_root: Path, output: Path, weights: Path, summary: str, device: str, steps: str
) -> int:
    """Print ``plan`` (the run's folders, ``summary`` of the predictor) and return the exit status 0."""
    state = "exists" if output.is_dir() else "does not exist; a run would create it"
    lines = [
        "dry run: no input is loaded into the model and nothing is written",
        f"input: {input_root} ({len(plan.cases)} case(s))",
        f"output: {output} ({state})",
        f"weights: {weights}",
        f"method: {summary}",
    ]
    for case in plan.cases:
        lacks = f"lacks {case.target.value}, " if case.target is not None else ""
        where = f" -> {case.output}" if case.output is not None else ""
        text = f"  {case.case}: {lacks}{case.action}{where}"
        if case.checkpoint:
            text += f"; checkpoint {case.checkpoint}"
        if case.note:
            text += f"; {case.note}"
        lines.append(text)
    lines.append(_estimate_line(plan, device, steps))
    print("\n".join(lines), flush=True)
    return 0
