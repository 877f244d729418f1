"""A folder of cases to a folder of outputs: the loop every job runs.

:func:`run_batch` takes the discovered cases (and the per-case errors discovery found), this process's
share of them (``--shard``, torchrun), and a :class:`~brasyn.inference.synthesize.Synthesizer`; it removes
what a killed earlier run left behind, reads the next case ahead while the current one is predicted, processes
each case, stops cleanly on SIGTERM or Ctrl-C (the case in progress is discarded, finished ones are kept),
logs one line per case and a summary table, and writes the JSON report. The command line, ``brasyn
demo``, ``python -m brasyn.bench`` and ``python -m brasyn.quality`` all run cases through it, so what
they time and score is what users run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from brasyn.common.errors import CaseError, ExitCode, UsageError
from brasyn.common.files import atomic_write
from brasyn.common.health import output_problem
from brasyn.common.version import __version__
from brasyn.data.cases import Case
from brasyn.data.modalities import Modality
from brasyn.data.volumes import remove_stale_temporaries
from brasyn.inference.extras import extras_writer
from brasyn.inference.prefetch import prefetched
from brasyn.inference.preview import MATPLOTLIB_MISSING, matplotlib_available
from brasyn.inference.progress import BatchBar
from brasyn.inference.sharding import Shard
from brasyn.inference.stopping import Interrupted, Stopper, signal_name
from brasyn.inference.synthesize import CaseResult, Synthesizer

__all__ = [
    "BatchResult",
    "check_folders",
    "merge_shard_reports",
    "report_path_for",
    "run_batch",
    "summary_table",
    "write_report",
]

log = logging.getLogger("brasyn")

STATUSES = ("written", "skipped", "failed")
NOT_RUN = "not run"
"""The status of a case a stop signal kept from running or cut short: listed, so a stop says what is left."""


def count_statuses(results: Sequence[CaseResult]) -> dict[str, int]:
    """Cases per status; ``not_run`` only where a stop left some (a finished run's totals stay three)."""
    counts = {s: sum(r.status == s for r in results) for s in STATUSES}
    not_run = sum(r.status == NOT_RUN for r in results)
    if not_run:
        counts["not_run"] = not_run
    return counts


def counts_text(counts: dict[str, int]) -> str:
    """``3 written, 0 skipped, 1 failed`` (``, 2 not run`` after a stop)."""
    text = f"{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed"
    return text + (f", {counts['not_run']} not run" if counts.get("not_run") else "")


@dataclass
class BatchResult:
    """What a batch did: one result per case in this share, and whether a signal cut it short."""

    results: list[CaseResult]
    started: dt.datetime
    finished: dt.datetime
    interrupted: bool = False
    signal: int | None = None
    """The signal that stopped the batch (SIGTERM or SIGINT), when one did."""
    shard: Shard | None = None
    context: dict[str, Any] = field(default_factory=dict)
    """What the caller wants the report to say about the run (input, weights, settings ...)."""

    @property
    def counts(self) -> dict[str, int]:
        return count_statuses(self.results)

    @property
    def exit_code(self) -> ExitCode:
        if self.interrupted:
            return ExitCode.INTERRUPTED if self.signal == signal.SIGINT else ExitCode.TERMINATED
        return ExitCode.FAILED_CASES if self.counts["failed"] else ExitCode.OK

    def report(self) -> dict[str, Any]:
        """The run report (``docs/report.schema.json``)."""
        return {
            "brasyn_version": __version__,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat(),
            **self.context,
            "interrupted": self.interrupted,
            "summary": self.counts,
            "cases": [r.to_dict() for r in self.results],
        }


def _log_result(result: CaseResult, number: int, total: int) -> None:
    line = f"[{result.status}] {result.case} (case {number} of {total}): {result.message}"
    if result.status == "written":
        line += f" ({result.seconds:.1f} s, {result.device}, peak {result.peak_memory_mib:.0f} MiB)"
        log.info(line)
    elif result.status == "skipped":
        # an output of unknown settings is kept: say so loudly, it may be a preview or another tool's
        (log.warning if result.note == "kept: settings unknown" else log.info)(line)
    else:
        log.error(line)


def summary_table(results: Sequence[CaseResult]) -> str:
    """One row per case: id, status, target, seconds and the message."""
    rows = [("case", "status", "target", "seconds", "message")]
    rows += [(r.case, r.status, r.target or "-", f"{r.seconds:.1f}", r.message) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    )


def report_path_for(path: Path, shard: Shard | None) -> Path:
    """Each of several shards writes its own report beside the asked-for one."""
    if shard is None or shard.count == 1:
        return path
    return path.with_name(f"{path.stem}.shard-{shard.index}-of-{shard.count}.json")


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the report atomically (never a half-written JSON for a job manager to read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(
        path, lambda handle: handle.write(text.encode()), prefix=".brasyn-report-", suffix="", durable=False
    )


def merge_shard_reports(path: Path, codes: Sequence[int], keep: bool = True) -> dict[str, Any] | None:
    """After ``--devices``: the reports of the ``len(codes)`` shares (:func:`report_path_for`) merged
    into ``path``: every case in id order, the totals, each share's exit status and report; printed as
    one summary table. The shares' own files are kept. None (and a warning) where no share wrote one.
    ``keep=False`` (no ``--report`` asked for, the reports are scratch): the table alone, nothing
    written and no file named in the log."""
    count = len(codes)
    shards, parts = [], []
    for index, code in enumerate(codes):
        part_path = report_path_for(path, Shard(index, count))
        try:
            part = json.loads(part_path.read_text())
        except (OSError, ValueError) as exc:
            log.warning(
                "worker %d/%d (exit %d) left no readable report %s: %s", index, count, code, part_path, exc
            )
            part = None
        shards.append(
            {
                "index": index,
                "count": count,
                "exit": int(code),
                "report": str(part_path) if part is not None else None,
                "interrupted": bool(part["interrupted"]) if part is not None else None,
            }
        )
        if part is not None:
            parts.append(part)
    if not parts:
        log.warning("no worker wrote a report: nothing to merge into %s", path)
        return None
    cases = sorted((c for part in parts for c in part["cases"]), key=lambda c: c["case"])
    fields = set(CaseResult.__dataclass_fields__)
    results = [CaseResult(**{k: v for k, v in c.items() if k in fields}) for c in cases]
    devices = list(dict.fromkeys(part["device"] for part in parts))
    merged = {
        **{k: v for k, v in parts[0].items() if k not in ("started", "finished", "cases", "summary")},
        "started": min(part["started"] for part in parts),
        "finished": max(part["finished"] for part in parts),
        "device": ", ".join(devices),
        "interrupted": any(part["interrupted"] for part in parts),
        "summary": count_statuses(results),
        "cases": cases,
        "shards": shards,
    }
    if results:
        print(summary_table(results), flush=True)  # tables go to stdout, as in every command
    counts = merged["summary"]
    log.info("all %d workers: %s%s", count, counts_text(counts), f"; report {path}" if keep else "")
    if keep:
        write_report(path, merged)
    return merged


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def _writable_folder(folder: Path, name: str, advice: str, create: bool = True) -> None:
    """Create ``folder`` (``name`` says which, in a message) and check this user may write into it; with
    ``create`` False, only whether it could be created and written (a dry run writes nothing)."""
    if not create:
        problem = output_problem(folder)
        if problem:
            raise UsageError(f"{name}: {problem}; {advice}")
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {name}: {exc.strerror or exc}") from exc
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{name} is not writable by this user (uid {os.getuid()}); {advice}")


def check_folders(
    input_root: Path | None,
    output: Path,
    report: Path | None = None,
    extras: Path | None = None,
    create: bool = True,
) -> None:
    """Refuse, with a sentence, what a batch cannot run with, before any case is touched: a missing
    input or one that is a file; an output, report or previews inside the input (brasyn never writes
    there); a report or previews inside the output (which must hold only the synthetic images); an
    output, report or previews folder that cannot be created or written. Creates the output folder
    (with ``create`` False, as for ``--dry-run``, nothing is created: the same refusals, from what exists).
    ``input_root`` is None for the single-case form, whose inputs are files named one by one."""
    if input_root is not None:
        if input_root.exists() and not input_root.is_dir():
            raise UsageError(
                f"the input {input_root} is a file, not a folder; give the folder that holds the cases"
            )
        if not input_root.is_dir():
            raise UsageError(
                f"the input folder {input_root} does not exist (mount it, e.g. -v DATA:/input:ro)"
            )
        if _inside(output, input_root):
            raise UsageError(
                f"the output folder {output} lies inside the input folder {input_root}; "
                "choose a separate folder (brasyn never writes into its input)"
            )
    for name, path in (("report", report), ("extras", extras)):
        if path is None:
            continue
        for folder, role in (
            (output, "output folder, which must hold only the synthetic images"),
            (input_root, "input folder, which brasyn never writes into"),
        ):
            if folder is not None and _inside(path, folder):
                raise UsageError(f"--{name} {path} lies inside the {role}; put it elsewhere")
    if report is not None and report.is_dir():
        raise UsageError(f"--report {report} is a folder; name a file such as {report / 'report.json'}")
    mount = "mount it writable or choose another folder"
    _writable_folder(output, f"the output folder {output}", mount, create)
    elsewhere = "make it writable or choose another place"
    if report is not None:
        name = f"the folder {report.parent} for --report {report.name}"
        _writable_folder(report.parent, name, elsewhere, create)
    if extras is not None:
        if not matplotlib_available():
            raise UsageError(MATPLOTLIB_MISSING)
        _writable_folder(extras, f"the folder {extras} for --extras", elsewhere, create)


def _case_id(item: Case | CaseError) -> str:
    return item.case if isinstance(item, CaseError) else item.id


def run_batch(
    found: Sequence[Case | CaseError],
    synthesizer: Synthesizer,
    output: Path,
    *,
    overwrite: bool = False,
    grid_of: Modality | str | None = None,
    prefetch: bool = True,
    extras: Path | None = None,
    shard: Shard | None = None,
    report: Path | None = None,
    context: dict[str, Any] | None = None,
    table: TextIO | None = None,
    resume_any: bool = False,
) -> BatchResult:
    """Process this share of ``found`` into ``output``; see the module text.

    An existing output is kept when its recorded settings are this run's (or unknown, or with
    ``resume_any``) and synthesised again when they differ; ``overwrite`` replaces every one
    (:func:`brasyn.data.provenance.decide`). ``table``: where the summary table goes (the main command:
    stdout, where every command prints its tables; None for commands whose stdout is their own JSON,
    such as the benchmarks).

    ``extras`` is a folder for a PNG preview per written case and, with several draws, its uncertainty
    map (:func:`brasyn.inference.extras.extras_writer`). ``report`` is written
    (per shard, :func:`report_path_for`) with ``context`` merged in, also after a stop signal. Never
    raises for a problem of one case.
    """
    started = dt.datetime.now(dt.timezone.utc)
    grid_of = Modality(grid_of) if grid_of is not None else None
    output.mkdir(parents=True, exist_ok=True)
    if shard is not None:
        found = shard.select(found, key=_case_id)
        log.info("shard %s: %d case(s)", shard, len(found))
    if shard is None or shard.count == 1:
        # with several shards another process may be writing into the same folder right now
        remove_stale_temporaries(output)
    preview = extras_writer(extras, synthesizer) if extras is not None else None
    results: list[CaseResult] = []
    stream = prefetched(
        found,
        load=lambda case: synthesizer.load(case, grid_of),
        wanted=lambda item: (
            isinstance(item, Case) and synthesizer.needs_work(item, output, overwrite, grid_of, resume_any)
        ),
        enabled=prefetch and len(found) > 1,
    )
    stopper = Stopper()
    bar = BatchBar(len(found), enabled=synthesizer.progress)
    taken = 0
    with stopper:
        try:
            with closing(stream):
                for item, loaded in stream:
                    stopper.check()
                    taken += 1
                    if isinstance(item, CaseError):
                        result = CaseResult(
                            case=item.case,
                            status="failed",
                            message=item.message,
                            files=[str(f) for f in item.files],
                        )
                    else:
                        result = synthesizer.process(
                            item,
                            output,
                            overwrite=overwrite,
                            preview=preview,
                            grid_of=grid_of,
                            loaded=loaded,
                            resume_any=resume_any,
                        )
                    results.append(result)
                    bar.case_done(result.seconds if "sample" in result.phases else None)
                    _log_result(result, len(results), len(found))
        except Interrupted:
            pass  # the stopper holds the signal
        except KeyboardInterrupt:  # SIGINT where no handler of ours could be installed
            stopper.signum = stopper.signum or signal.SIGINT
        finally:
            stopper.finish()
            bar.close()
        interrupted, signum = stopper.signum is not None, stopper.signum
        if interrupted:
            log.error("stopped by a signal; the case in progress was discarded, finished cases are kept")
            results += _not_run(found, results, signum, cut_short=taken > len(results))
        batch = _finish(results, started, interrupted, signum, shard, context, report, output, table)
    return batch


def _not_run(
    found: Sequence[Case | CaseError], results: Sequence[CaseResult], signum: int | None, cut_short: bool
) -> list[CaseResult]:
    """A row for each case of the share a stop left: the one it cut short (``cut_short``), then those
    never started, in the batch's order."""
    done = {r.case for r in results}
    left, name = [item for item in found if _case_id(item) not in done], signal_name(signum)
    rows = []
    for index, item in enumerate(left):
        if index == 0 and cut_short:
            message = f"stopped by {name} while it was synthesised; nothing of it was written: rerun"
        else:
            message = f"not started: the run was stopped by {name}; rerun"
        target = item.target.value if isinstance(item, Case) and item.target is not None else None
        files = [str(f) for f in (item.files.values() if isinstance(item, Case) else item.files)]
        rows.append(
            CaseResult(case=_case_id(item), status=NOT_RUN, target=target, message=message, files=files)
        )
    return rows


def _finish(
    results: list[CaseResult],
    started: dt.datetime,
    interrupted: bool,
    signum: int | None,
    shard: Shard | None,
    context: dict[str, Any] | None,
    report: Path | None,
    output: Path,
    table: TextIO | None,
) -> BatchResult:
    """Summary, report and a last clean-up, with further stop signals only noted."""
    batch = BatchResult(
        results,
        started,
        dt.datetime.now(dt.timezone.utc),
        interrupted,
        signum,
        shard,
        dict(context or {}),
    )
    if results and table is not None:
        table.write(summary_table(results) + "\n")
        table.flush()
    counts = batch.counts
    if counts.get("not_run"):
        # what the stop left, in the words a rerun needs: nothing was lost, the same command resumes
        log.warning(
            "%s: stopped by %s; the same command again runs the cases not run (finished ones are kept)",
            counts_text(counts),
            signal_name(signum),
        )
    else:
        log.info("%s", counts_text(counts))
    if report is not None:
        write_report(report_path_for(report, shard), batch.report())
    if shard is None or shard.count == 1:
        remove_stale_temporaries(output)  # e.g. the one a write cut short by the stop left
    return batch
