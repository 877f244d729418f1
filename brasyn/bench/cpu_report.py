"""Every CPU figure of docs/benchmarks.md in one JSON (``python -m brasyn.bench cpu``).

Its parts run one after another, each in a process of its own, so that one part's memory (an OpenVINO
model holds several GB) never adds to another's, and a part that fails or is killed leaves the others'
figures:

1. ``floor``: the processor's convolution floor and the share of it the default forward reaches
   (``python -m brasyn.bench floor``).
2. ``backends``: the backends side by side in groups (``python -m brasyn.bench backends``), each group
   one process, since all of them at once do not fit 24 GB: torch's backends, then OpenVINO's beside
   eager bf16; the official code's fp32 forward is the reference of both where a checkout is given.
   ``winner``: the fastest backend within the error bound over a batch of ``cases`` x ``steps``
   forwards, start-up shared, against eager bf16 of torch's group (:func:`_winner` says why).
3. ``default_path``: the fast CPU path (``--precision auto --backend auto``) against the official code
   (``python -m brasyn.bench --official DIR --no-case``: ``official.speedup``, ``max_abs_difference``,
   ``output_max_abs``).
4. ``batch``: ``cases`` real-size cases (the complete cases of ``data`` again and again under BraTS names,
   each without one contrast in turn; phantoms where no data is given) through ``python -m brasyn`` with
   ``--sampler dpm++2m --steps 10`` on the same path: the batch's wall time against the sum of its
   sampling phases (what reading ahead and writing cost on top), and the process's peak RSS.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brasyn.bench.backends import pick_winner
from brasyn.bench.floor import cpu_features
from brasyn.common.cpu_backends import openvino_available
from brasyn.data.cases import complete_cases, discover
from brasyn.data.modalities import MODALITIES
from brasyn.data.phantom import phantom, write_phantom_case

__all__ = ["CpuReportSettings", "backend_groups", "batch_inputs", "cpu_report"]

log = logging.getLogger("brasyn.bench")

TORCH_GROUP = ("eager-fp32", "eager-bf16", "compile-bf16")
OPENVINO_GROUP = ("eager-bf16", "openvino-bf16")


@dataclass
class CpuReportSettings:
    out: Path
    """Where each part's JSON and ``cpu.json`` are written."""
    official: Path | None = None
    data: Path | None = None
    config: str = "official"
    shape: tuple[int, int, int] = (224, 224, 160)
    rounds: int = 3
    cases: int = 8
    steps: int = 10
    threads: int | None = None
    weights: Path | None = None
    """The batch's weights (default: the bundled ones)."""
    case_shape: tuple[int, int, int] = (240, 240, 155)
    parts: Sequence[str] = field(default_factory=lambda: ("floor", "backends", "default_path", "batch"))


def backend_groups(official: bool, openvino: bool) -> list[list[str]]:
    """The backends groups, each run in one process: the official reference first in each."""
    reference = ["official-fp32"] if official else []
    groups = [[*reference, *TORCH_GROUP]]
    if openvino:
        groups.append([*reference, *OPENVINO_GROUP])
    return groups


def _bench(
    args: list[str], json_path: Path, threads: int | None
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``python -m brasyn.bench ARGS --json FILE`` in a child process: its JSON (None when it failed), and
    its wall time, exit status and peak RSS."""
    cmd = [sys.executable, "-m", "brasyn.bench", *args, "--json", str(json_path)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return _child(cmd, json_path)


def _child(cmd: list[str], json_path: Path | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    log.info("running %s", " ".join(cmd[1:]))
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    # this child's own resource use (RUSAGE_CHILDREN would give the largest of all children so far)
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    process = {
        "command": " ".join(cmd[1:]),
        "exit_code": code,
        "wall_seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }
    if code != 0 or json_path is None or not json_path.exists():
        return None, process
    return json.loads(json_path.read_text()), process


def batch_inputs(folder: Path, data: Path | None, cases: int, shape: tuple[int, int, int]) -> Path:
    """``cases`` case folders ``BraTS-GLI-9NNNN-000`` in ``folder``, linked to the complete cases of
    ``data`` in turn, case ``i`` without contrast ``i mod 4``; phantoms of ``shape`` without data."""
    if data is not None:
        complete, _ = complete_cases(discover(data), "the batch benchmark")
        if not complete:
            raise ValueError(f"{data} holds no case with all four contrasts")
        sources = [case.files for case in complete]
    else:
        phantom_root = folder / "phantoms"
        sources = [
            write_phantom_case(
                phantom_root,
                f"phantom{j}",
                {
                    m.value: phantom(shape, seed=4 * j + k, scale=300.0 * (k + 1))
                    for k, m in enumerate(MODALITIES)
                },
            )
            for j in range(2)
        ]
        sources = [{m: paths[m.value] for m in MODALITIES} for paths in sources]
    root = folder / "input"
    for i in range(cases):
        case_id = f"BraTS-GLI-{90000 + i:05d}-000"
        (root / case_id).mkdir(parents=True, exist_ok=True)
        files = sources[i % len(sources)]
        dropped = MODALITIES[i % len(MODALITIES)]
        for modality, path in files.items():
            if modality != dropped:
                os.symlink(Path(path).resolve(), root / case_id / f"{case_id}-{modality.value}.nii.gz")
    return root


def _batch(settings: CpuReportSettings, work: Path) -> dict[str, Any]:
    inputs = batch_inputs(work, settings.data, settings.cases, settings.case_shape)
    report = work / "batch-report.json"
    cmd = [sys.executable, "-m", "brasyn", "--input", str(inputs), "--output", str(work / "output")]
    cmd += ["--sampler", "dpm++2m", "--steps", str(settings.steps), "--device", "cpu", "--no-progress"]
    cmd += ["--precision", "auto", "--backend", "auto"]  # the fast CPU path
    cmd += ["--report", str(report)]
    if settings.weights is not None:
        cmd += ["--weights", str(settings.weights)]
    if settings.threads is not None:
        cmd += ["--threads", str(settings.threads)]
    _, process = _child(cmd, None)
    if not report.exists():
        return {"process": process, "failed": "the run wrote no report"}
    saved = json.loads(report.read_text())
    phases: dict[str, float] = {}
    for case in saved["cases"]:
        for phase, seconds in (case.get("phases") or {}).items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    batch_seconds = (
        dt.datetime.fromisoformat(saved["finished"]) - dt.datetime.fromisoformat(saved["started"])
    ).total_seconds()
    sampling = phases.get("sample", 0.0)
    return {
        "cases": settings.cases,
        "data": str(settings.data) if settings.data else f"phantoms {list(settings.case_shape)}",
        "settings": saved.get("settings", {}),
        "summary": saved.get("summary"),
        "batch_seconds": round(batch_seconds, 1),
        "phase_seconds": {k: round(v, 2) for k, v in phases.items()},
        "sampling_seconds_per_case": round(sampling / max(1, settings.cases), 2),
        "batch_over_sampling": round(batch_seconds / sampling, 3) if sampling else None,
        "process": process,
    }


def cpu_report(settings: CpuReportSettings) -> dict[str, Any]:
    """The parts of the module text that ``settings.parts`` names, each JSON also in ``settings.out``."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    size = ["--config", settings.config, "--shape", *map(str, settings.shape)]
    official = ["--official", str(settings.official)] if settings.official else []
    result: dict[str, Any] = {"cpu": cpu_features(), "threads": settings.threads}
    if "floor" in settings.parts:
        figures, process = _bench(["floor", *size], out / "floor.json", settings.threads)
        result["floor"] = {**(figures or {}), "process": process}
    if "backends" in settings.parts:
        groups = []
        for index, names in enumerate(backend_groups(settings.official is not None, openvino_available())):
            args = [
                "backends",
                *size,
                *official,
                "--rounds",
                str(settings.rounds),
                "--steps",
                str(settings.steps),
            ]
            args += [arg for name in names for arg in ("--backend", name)]
            figures, process = _bench(args, out / f"backends-{index + 1}.json", settings.threads)
            groups.append({"asked": names, **(figures or {}), "process": process})
        result["backends"] = {"groups": groups, "winner": _winner(groups)}
    if "default_path" in settings.parts:
        args = [*size, *official, "--device", "cpu", "--precision", "auto", "--backend", "auto", "--no-case"]
        figures, process = _bench(args, out / "default-path.json", settings.threads)
        result["default_path"] = {**(figures or {}), "process": process}
    if "batch" in settings.parts:
        with tempfile.TemporaryDirectory(prefix="brasyn-cpu-batch-") as work:
            result["batch"] = _batch(settings, Path(work))
    (out / "cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _winner(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The best backend of all groups, each taken from the first group that measured it, so eager bf16
    from torch's own group: beside a loaded OpenVINO model torch's forwards ran 5-13 % slower
    (docs/benchmarks.md), which a run, holding one engine, never sees. Each group's own one-process
    verdict is kept under ``same_process``."""
    merged: dict[str, dict[str, Any]] = {}
    verdicts = []
    for group in groups:
        table = group.get("backends")
        if not table:  # the group's process failed
            continue
        for name, row in table.items():
            merged.setdefault(name, row)
        verdicts.append(pick_winner(table))
    if not merged:
        return {"name": None, "adopt": False, "reason": "no group was measured", "same_process": []}
    return {**pick_winner(merged), "same_process": verdicts}
