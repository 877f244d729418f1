"""The command line shared by ``entrypoint.py``, ``python -m brasyn`` and the MLCube ``infer`` task.

Forms:

* no arguments: ``/input`` to ``/output`` (the Docker form; ``BRASYN_INPUT`` / ``BRASYN_OUTPUT`` override);
* ``--input DIR --output DIR [options]``;
* ``--t1n FILE --t1c FILE --t2w FILE --out FILE [options]`` (any three of the four contrasts): one case;
* ``infer --data_path DIR --output_path DIR [--weights PATH] [--parameters_file FILE]`` (MLCube), and
  ``hotfix``, which does nothing (a ``hotfix:`` key in the parameters file is accepted and ignored);
* ``demo [--out DIR] [options]``: the example case (``brasyn.commands.example``) through the bundled weights;
* ``doctor [--weights DIR] [--output DIR] [--device ...]``: is this machine ready (``commands.doctor``);
* ``--dry-run`` with any form: the plan (cases, outputs, weights, estimated time) instead of the run.

Every form but MLCube's also reads a config file (``--config FILE`` or ``$BRASYN_CONFIG``) and the
variables ``BRASYN_SAMPLER``, ``BRASYN_STEPS``, ``BRASYN_PRECISION`` and ``BRASYN_DEVICE``, a flag first,
then a variable, then the file (:mod:`brasyn.commands.sources`); MLCube's ``infer`` reads its parameters
file alone, as MedPerf sets it.

Exit status: 0 when every case was written or skipped, 1 when any case failed (after all others ran),
2 when the run could not start (bad arguments, missing folders or weights), 143 when stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from brasyn.commands.command import HelpFormatter, Subcommands, parse_arguments, run_command
from brasyn.commands.converters import contrast, one_of, shard_spec, whole_number
from brasyn.commands.demo import run_demo
from brasyn.commands.doctor import main as doctor_main
from brasyn.commands.dry_run import print_plan
from brasyn.commands.info import main as info_main
from brasyn.commands.options import (
    MLCUBE_IGNORED,
    MLCUBE_PARAMETERS,
    NAMINGS,
    add_device_option,
    add_draws_option,
    add_map_option,
    add_method_option,
    add_sampling_options,
    add_single_case_options,
    add_speed_options,
    add_threads_option,
    add_verbosity_option,
    add_version_option,
    apply_threads,
    contrast_mapping,
    mlcube_weights,
    read_parameters,
    refuse_conflicts,
    sampling_settings,
    single_case_files,
    speed_settings,
    torch_threads,
)
from brasyn.commands.owner import run_as_output_owner
from brasyn.commands.sources import add_config_option, apply_sources
from brasyn.common.errors import CaseError
from brasyn.data.cases import Case, discover, refuse_no_cases, single_case
from brasyn.inference.batch import check_folders, merge_shard_reports, run_batch
from brasyn.inference.plan import cpu_time_warning, plan_batch
from brasyn.inference.predictors import DiffusionPredictor, Predictor, make_predictor
from brasyn.inference.sharding import is_devices_worker, run_workers, shard_from_environment
from brasyn.inference.synthesize import Synthesizer
from brasyn.weights.bundled import BUNDLED_WEIGHTS, holds_demo_weights

__all__ = ["DEFAULT_WEIGHTS", "build_mlcube_parser", "build_parser", "main", "run"]

log = logging.getLogger("brasyn")

DEFAULT_WEIGHTS = BUNDLED_WEIGHTS
"""The weights folder shipped beside the package (baked into the container image)."""
MOUNTED_WEIGHTS = Path("/weights")
"""Where a container user mounts other weights (``-v DIR:/weights``)."""


def _default_weights() -> Path:
    """``$BRASYN_WEIGHTS``, else weights mounted at /weights (read like the MLCube weights mount: a
    manifest or the official files by name; other files are refused), else the bundled ones."""
    env = os.environ.get("BRASYN_WEIGHTS")
    if env:
        return Path(env)
    return mlcube_weights(MOUNTED_WEIGHTS) or DEFAULT_WEIGHTS


def build_parser() -> argparse.ArgumentParser:
    """The main command's flags; every value is checked by the converter that also checks the MLCube
    parameters file (:data:`brasyn.commands.options.MLCUBE_PARAMETERS`)."""
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="brasyn",
        description="Synthesise the missing MR contrast (t1n, t1c, t2w or t2f) of every case folder.",
        epilog="Other forms: 'brasyn --t1n FILE --t1c FILE --t2w FILE --out FILE [options]' synthesises one "
        "case given by its files (any three of --t1n, --t1c, --t2w, --t2f); "
        "'brasyn demo [--out DIR] [options]' runs the example case through the bundled "
        "weights; 'brasyn doctor [--weights DIR] [--output DIR] [--device ...]' checks the machine, the user "
        "and the weights for a run; 'brasyn infer --data_path DIR --output_path DIR [--weights PATH] "
        "[--parameters_file FILE]' is the MLCube task.",
    )
    add = parser.add_argument
    add(
        "--input",
        type=Path,
        help="folder of case folders (or one case's files, or several cases' files side by side); default "
        "$BRASYN_INPUT or /input",
    )
    add(
        "--output",
        type=Path,
        help="folder for the synthetic files, one per case; default $BRASYN_OUTPUT or /output",
    )
    add(
        "--weights",
        type=Path,
        help="weights folder with manifest.json, or with the official cWDM files (t1_gen.pt, t1ce_gen.pt, "
        "t2_gen.pt, flair_gen.pt), or one checkpoint file in such a folder (its contrast alone); default "
        "$BRASYN_WEIGHTS or the bundled weights",
    )
    add_config_option(parser)
    add_map_option(parser)
    add_single_case_options(parser)
    add_method_option(parser)
    add_sampling_options(parser)
    add(
        "--seed",
        type=whole_number(0),
        default=42,
        help="run seed (default 42); each case's seed follows from it and the case id",
    )
    add_draws_option(parser)
    add_device_option(parser)
    add_threads_option(parser)
    speed = add_speed_options(parser)
    speed.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="do not read and prepare the next case while the current one is sampled",
    )
    add(
        "--target",
        type=contrast,
        metavar="CONTRAST",
        help="synthesise this contrast (t1n, t1c, t2w, t2f or an alias such as flair) even in complete cases "
        "(pseudo-validation)",
    )
    add(
        "--naming",
        type=one_of(*NAMINGS),
        default="input",
        metavar="{" + ",".join(NAMINGS) + "}",
        help="output names like the case's inputs (default) or always <case>-<contrast>.nii.gz",
    )
    add(
        "--grid-of",
        type=contrast,
        metavar="CONTRAST",
        help="when a case's contrasts are not on one 1 mm grid: write the output on the grid of this input "
        "contrast (default: the highest-resolution one); a case that lacks it fails",
    )
    add(
        "--overwrite",
        action="store_true",
        help="replace existing outputs instead of skipping (default: keep those written with this run's "
        "settings, synthesise again those written with other settings)",
    )
    add(
        "--resume-any",
        action="store_true",
        help="keep every existing output, whatever settings it was written with",
    )
    add(
        "--devices",
        help="'all': one worker process per visible GPU, each on its own share of the cases; "
        "N: N workers (on the CPU where there is no GPU)",
    )
    add(
        "--shard",
        type=shard_spec,
        help="take only share i of n of the cases (e.g. 0/4; Slurm: "
        "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT); under torchrun the rank is the share",
    )
    add("--report", type=Path, help="write a JSON report here (outside the output folder)")
    add(
        "--extras",
        type=Path,
        help="write a PNG preview per case here (outside the output folder), and with --draws N > 1 each "
        "case's uncertainty map <case>-<target>-std.nii.gz",
    )
    add("--no-progress", action="store_true", help="no progress bars")
    add(
        "--dry-run",
        action="store_true",
        help="print the cases found, the contrast each lacks, the output names, the checkpoints and an "
        "estimate of the batch's time (one timed forward), without loading any input into the model or "
        "writing anything",
    )
    add_verbosity_option(parser)
    add_version_option(parser, "brasyn")
    return parser


def build_mlcube_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, prog="brasyn infer", description="MLCube inference task"
    )
    parser.add_argument("--data_path", type=Path, required=True, help="input folder of case folders")
    parser.add_argument("--output_path", type=Path, required=True, help="output folder")
    parser.add_argument("--weights", type=Path, default=None, help="weights folder (or its manifest.json)")
    parser.add_argument(
        "--parameters_file",
        type=Path,
        default=None,
        help=f"YAML with any of {', '.join(MLCUBE_PARAMETERS)} (checked like the flags of the same name)",
    )
    add_verbosity_option(parser)
    return parser


def _mlcube_arguments(argv: list[str]) -> argparse.Namespace:
    """The MLCube ``infer`` form as the main command's arguments: the parameters file's values pass the
    same converters as the flags (a bad value or an unknown key stops the run, naming the file)."""
    ml = parse_arguments(build_mlcube_parser(), argv)
    args = build_parser().parse_args([])
    args.input, args.output = ml.data_path, ml.output_path
    args.verbose, args.quiet = ml.verbose, ml.quiet
    if ml.weights is not None:
        # MLCube always mounts its weights input; an empty one means the weights baked into the image
        args.weights = mlcube_weights(ml.weights)
        if args.weights is None:
            log.info("the weights folder %s is empty: using the weights baked into the image", ml.weights)
    if ml.parameters_file is not None:
        for key, value in read_parameters(ml.parameters_file, MLCUBE_PARAMETERS, MLCUBE_IGNORED).items():
            setattr(args, key, value)
    return args


def _single_case(args: argparse.Namespace) -> Case | None:
    """The case of the single-case form (``--t1n FILE ... --out FILE``), None for the folder form."""
    files = single_case_files(args)
    return None if files is None else single_case(files, args.out)


def run(args: argparse.Namespace) -> int:
    """Everything after argument parsing: build the predictor and the synthesizer, run the batch, return
    the exit status."""
    single = _single_case(args)
    if single is not None:
        args.output = args.out.parent
    args.input = args.input or Path(os.environ.get("BRASYN_INPUT", "/input"))
    args.output = args.output or Path(os.environ.get("BRASYN_OUTPUT", "/output"))
    args.weights = args.weights or _default_weights()
    if args.weights.is_file() and args.weights.name == "manifest.json":
        args.weights = args.weights.parent  # the manifest names its folder
    refuse_conflicts(args)
    apply_threads(args.threads)  # results depend on the thread count: a site pins it for identical bytes
    sampling = sampling_settings(args)
    speed = speed_settings(args)
    mapping = contrast_mapping(args)
    dry_run = getattr(args, "dry_run", False)
    folders = {"report": args.report, "extras": args.extras}
    # refused now what cannot work; created only once the run will really start, so that a run which
    # stops with exit 2 (no cases, bad weights) leaves no empty output folder behind, as a dry run
    check_folders(None if single else args.input, args.output, **folders, create=False)
    predictor = make_predictor(args.method, args.weights, args.device, sampling, speed)
    speed.configure_backends(predictor.device)  # process-wide switches: set once, here
    if single is not None:
        args.input = single.folder  # what the report and the log name as the input
    found = (
        [single]
        if single is not None
        else discover(args.input, target=args.target, naming=args.naming, mapping=mapping)
    )
    refuse_no_cases(found, args.input)  # a wrong mount must not look like a successful run
    log.info("%d case(s) in %s; %s; seed %d", len(found), args.input, predictor.summary(), args.seed)
    if dry_run:
        return _print_plan(args, found, predictor)
    check_folders(None if single else args.input, args.output, **folders, create=True)
    if isinstance(predictor, DiffusionPredictor) and predictor.fell_back_to_cpu:
        _warn_cpu_time(args, found, predictor)
    batch = run_batch(
        found,
        Synthesizer(predictor, seed=args.seed, progress=not args.no_progress),
        args.output,
        overwrite=args.overwrite,
        grid_of=args.grid_of,
        prefetch=args.prefetch,
        extras=args.extras,
        shard=args.shard or shard_from_environment(),
        report=args.report,
        # tables on stdout, the log on stderr, in every command; under --devices the parent prints one
        table=None if is_devices_worker() else sys.stdout,
        context={
            "input": str(args.input),
            "output": str(args.output),
            "weights": str(args.weights),
            "device": str(predictor.device),
            "weights_quality": predictor.quality(),
            "checkpoints": predictor.checkpoints(),
            "settings": {
                # what the predictor uses: a baseline has no sampler, steps or precision to claim
                **predictor.settings(),
                "seed": args.seed,
                "map": mapping.describe(),
                "progress": not args.no_progress,
                "threads": torch_threads(),
            },
        },
        resume_any=args.resume_any,
    )
    return int(batch.exit_code)


def _warn_cpu_time(
    args: argparse.Namespace, found: list[Case | CaseError], predictor: DiffusionPredictor
) -> None:
    """Before the first case of a run that fell back to the CPU: what one case and the whole batch (this
    process's share of it, less the outputs kept) will take."""
    plan = plan_batch(
        found,
        Synthesizer(predictor, seed=args.seed, progress=False),
        args.output,
        overwrite=args.overwrite,
        grid_of=args.grid_of,
        resume_any=args.resume_any,
        shard=args.shard or shard_from_environment(),
    )
    warning = cpu_time_warning(plan, predictor)
    if warning:
        log.warning("%s", warning)


def _print_plan(args: argparse.Namespace, found: list[Case | CaseError], predictor: Predictor) -> int:
    """``--dry-run``: what :func:`run` would do with these cases, printed (:mod:`brasyn.commands.dry_run`)."""
    synthesizer = Synthesizer(predictor, seed=args.seed, progress=False)
    plan = plan_batch(
        found,
        synthesizer,
        args.output,
        overwrite=args.overwrite,
        grid_of=args.grid_of,
        resume_any=args.resume_any,
        shard=args.shard or shard_from_environment(),
    )
    steps = f"{predictor.settings().get('steps', 0)} {predictor.settings().get('sampler', '')} steps"
    return print_plan(
        plan, args.input, args.output, args.weights, predictor.summary(), str(predictor.device), steps
    )


def _parse_main(argv: list[str]) -> argparse.Namespace:
    """The main job's arguments: the flags, then the ``BRASYN_*`` variables and the config file for what
    no flag gave (:func:`brasyn.commands.sources.apply_sources`)."""
    parser = build_parser()
    return apply_sources(parser, argv, parse_arguments(parser, argv))


def _synthesise(argv: list[str]) -> int:
    """The main job on an argument list (what ``brasyn demo`` runs)."""
    return run(_parse_main(argv))


def _output_folder(args: argparse.Namespace) -> Path:
    """The output folder :func:`run` will write into, resolved as it resolves it."""
    if getattr(args, "out", None) is not None:
        return args.out.parent  # the single-case form
    return args.output or Path(os.environ.get("BRASYN_OUTPUT", "/output"))


def _announce_demo_weights(args: argparse.Namespace) -> None:
    """The run's first log line, in capitals, when the denoisers it would use are the demo model: an image
    built without ``--build-arg WEIGHTS`` carries them, and a run with them exits 0 like any other."""
    weights = args.weights or _default_weights()
    if args.method == "diffusion" and holds_demo_weights(weights):
        log.warning(
            "DEMO WEIGHTS: %s HOLDS THE SMALL DEMO MODEL, NOT THE RELEASED cWDM CHECKPOINTS; ITS IMAGES ARE "
            "NOT FIT FOR A CHALLENGE SUBMISSION OR ANY REAL USE. Get the released ones with python -m "
            "brasyn.weights fetch-official --out DIR, then pass --weights DIR or build the image with "
            "--build-arg WEIGHTS=DIR",
            weights,
        )


def _run_parsed(args: argparse.Namespace, argv: list[str]) -> int:
    """The main job on parsed arguments; with ``--devices N``, ``argv`` (as typed) is what each worker
    process runs with its own shard. Started as root, it first becomes the output folder's owner
    (:mod:`brasyn.commands.owner`), before any case is read or any worker started."""
    _announce_demo_weights(args)
    run_as_output_owner(_output_folder(args))
    if args.devices and not getattr(args, "dry_run", False):  # a dry run plans every share at once
        single_case_files(args)  # refuses --devices with the single-case form
        # without --report the workers' reports go to a scratch folder, for the one table of all cases
        with tempfile.TemporaryDirectory(prefix="brasyn-devices-") as scratch:
            keep = args.report is not None
            report = args.report if keep else Path(scratch) / "report.json"
            return run_workers(
                argv if keep else [*argv, "--report", str(report)],
                args.devices,
                shard=args.shard,
                finished=lambda codes: merge_shard_reports(report, codes, keep=keep),
                threads=args.threads,
            )
    return run(args)


def _main_job(argv: list[str]) -> int:
    return run_command(lambda: _run_parsed(_parse_main(argv), argv))


def _mlcube_infer(argv: list[str]) -> int:
    return run_command(lambda: _run_parsed(_mlcube_arguments(argv), ["infer", *argv]))


def _demo(argv: list[str]) -> int:
    return run_command(lambda: run_demo(argv, _synthesise, build_parser()))


def _hotfix(argv: list[str]) -> int:
    return 0  # MLCube's hotfix task: nothing to do


def _doctor(argv: list[str]) -> int:
    return doctor_main(argv, default_weights=_default_weights)  # the folder a run would take


main = Subcommands(
    {"infer": _mlcube_infer, "demo": _demo, "hotfix": _hotfix, "doctor": _doctor, "info": info_main},
    default=_main_job,
)
"""``python -m brasyn`` / ``entrypoint.py`` / ``brasyn``: the main job, MLCube's ``infer`` and ``hotfix``
tasks, ``brasyn demo``, ``brasyn doctor`` and ``brasyn info``."""
