"""The command kit: one validation for flags and MLCube parameters, one torchrun reading, one way to start
and end a command (exit statuses, -v)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

import pytest

from brasyn.commands.command import run_command
from brasyn.commands.converters import contrast, device_spec, one_of, real_number, whole_number
from brasyn.commands.options import (
    MLCUBE_PARAMETERS,
    add_device_option,
    add_speed_options,
    add_threads_option,
    add_verbosity_option,
    read_parameters,
    speed_settings,
)
from brasyn.common.acceleration import SpeedSettings
from brasyn.common.errors import ExitCode, UsageError, WeightsError
from brasyn.common.logs import configure_logging
from brasyn.common.runtime import TorchrunEnvironment, torchrun_environment
from brasyn.inference.sharding import shard_from_environment


@pytest.fixture(autouse=True)
def brasyn_logger():
    """Commands reconfigure the "brasyn" logger for their process; put it back for the next test."""
    logger = logging.getLogger("brasyn")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved


# --- converters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [("flair", "t2f"), ("FLAIR", "t2f"), ("t1ce", "t1c"), ("T2", "t2w"), ("t1", "t1n"), ("t2f", "t2f")],
)
def test_contrast_accepts_every_alias_and_returns_the_canonical_name(alias, canonical):
    assert contrast(alias) == canonical


@pytest.mark.parametrize("bad", ["t5", "", 2, True])
def test_contrast_refuses_other_values_naming_the_four(bad):
    with pytest.raises(argparse.ArgumentTypeError, match="t1n, t1c, t2w or t2f"):
        contrast(bad)


def test_whole_number_takes_ints_and_their_text():
    steps = whole_number(1, 1000)
    assert steps("20") == 20 and steps(20) == 20 and steps(" 1000 ") == 1000 and steps(1) == 1
    assert whole_number()("-3") == -3


@pytest.mark.parametrize("bad", ["2.7", 2.7, 2.0, "2.0", True, False, "abc", "", None, 0, 1001, "1e3"])
def test_whole_number_refuses_fractions_bools_text_and_values_outside_its_range(bad):
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        whole_number(1, 1000)(bad)
    message = str(caught.value)
    assert "a whole number from 1 to 1000" in message
    assert repr(bad) in message if isinstance(bad, str) else str(bad) in message


def test_whole_number_names_one_sided_ranges():
    with pytest.raises(argparse.ArgumentTypeError, match="a whole number of 0 or more, got -1"):
        whole_number(0)(-1)


def test_real_number_takes_numbers_and_refuses_the_rest():
    eta = real_number(0, 1)
    assert eta("0.5") == 0.5 and eta(1) == 1.0 and eta(0) == 0.0 and isinstance(eta(1), float)
    for bad in ("abc", True, "nan", float("inf"), "-inf", 1.5, -0.1, None, [0.5]):
        with pytest.raises(argparse.ArgumentTypeError, match="a number from 0 to 1"):
            eta(bad)


def test_one_of_takes_exactly_its_choices():
    sampler = one_of("ddpm", "ddim", "dpm++2m", "x0")
    assert sampler("dpm++2m") == "dpm++2m"
    for bad in ("DDIM", "ddim ", "abc", 1, None):
        with pytest.raises(argparse.ArgumentTypeError, match=r"one of ddpm, ddim, dpm\+\+2m or x0"):
            sampler(bad)


def test_device_spec_checks_the_form_only():
    assert device_spec("auto") == "auto" and device_spec(" CPU ") == "cpu"
    assert device_spec("cuda") == "cuda" and device_spec("cuda:7") == "cuda:7"  # no GPU needed here
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:-1", "mps", 0):
        with pytest.raises(argparse.ArgumentTypeError, match="auto, cpu, cuda or cuda:N"):
            device_spec(bad)


def test_argparse_prints_the_converters_sentence(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=whole_number(1, 1000))
    with pytest.raises(SystemExit) as caught:
        parser.parse_args(["--steps", "2.7"])
    assert caught.value.code == 2
    assert "argument --steps: expected a whole number from 1 to 1000, got '2.7'" in capsys.readouterr().err


# --- MLCube parameters ---------------------------------------------------------------------------


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "parameters.yaml"
    path.write_text(text)
    return path


def test_parameters_are_converted_like_the_flags(tmp_path):
    path = _yaml(
        tmp_path,
        "sampler: ddim\nsteps: 20\nseed: 7\ndevice: CPU\neta: 0\nnaming: brats2023\n"
        "target: flair\nmethod: linear\nprecision: bf16\ngrid_of: t1ce\n",
    )
    assert read_parameters(path, MLCUBE_PARAMETERS) == {
        "sampler": "ddim",
        "steps": 20,
        "seed": 7,
        "device": "cpu",
        "eta": 0.0,
        "naming": "brats2023",
        "target": "t2f",
        "method": "linear",
        "precision": "bf16",
        "grid_of": "t1c",
    }


def test_the_documented_parameter_keys_are_the_known_ones():
    documented = {
        "sampler",
        "steps",
        "seed",
        "draws",
        "device",
        "eta",
        "naming",
        "target",
        "method",
        "grid_of",
    }
    assert set(MLCUBE_PARAMETERS) == documented | {"precision", "backend", "map"}


def test_the_shipped_parameters_file_is_valid():
    path = Path(__file__).resolve().parents[2] / "mlcube" / "workspace" / "parameters.yaml"
    assert read_parameters(path, MLCUBE_PARAMETERS) == {"sampler": "ddpm", "steps": 1000, "seed": 42}


@pytest.mark.parametrize(
    ("text", "key", "shown", "allowed"),
    [
        ("steps: 2.7\n", "steps", "2.7", "a whole number from 1 to 1000"),
        ("steps: '2.7'\n", "steps", "'2.7'", "a whole number from 1 to 1000"),
        ("steps: abc\n", "steps", "'abc'", "a whole number from 1 to 1000"),
        ("steps: true\n", "steps", "True", "a whole number from 1 to 1000"),
        ("target: t5\n", "target", "'t5'", "t1n, t1c, t2w or t2f"),
        ("sampler: [ddim]\n", "sampler", "['ddim']", "one of ddpm, ddim, dpm++2m or x0"),
        ("eta: 2\n", "eta", "2", "a number from 0 to 1"),
        ("device: gpu\n", "device", "'gpu'", "auto, cpu, cuda or cuda:N"),
    ],
)
def test_a_bad_value_names_the_file_key_value_and_what_is_allowed(tmp_path, text, key, shown, allowed):
    path = _yaml(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        read_parameters(path, MLCUBE_PARAMETERS)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: {shown} is not valid: ")
    assert allowed in message


def test_an_unknown_key_is_refused_with_the_known_keys(tmp_path):
    path = _yaml(tmp_path, "sampler: ddim\nstep: 20\n")
    with pytest.raises(UsageError) as caught:
        read_parameters(path, MLCUBE_PARAMETERS)
    message = str(caught.value)
    assert str(path) in message and "'step'" in message and "did you mean steps" in message
    assert (
        "the known keys are backend, device, draws, eta, grid_of, map, method, naming, precision, sampler, seed, "
        "steps" in message
    )


def test_null_keeps_the_default_and_an_empty_file_sets_nothing(tmp_path):
    assert read_parameters(_yaml(tmp_path, "steps:\nsampler: ddim\n"), MLCUBE_PARAMETERS) == {
        "sampler": "ddim"
    }
    assert read_parameters(_yaml(tmp_path, "# nothing\n"), MLCUBE_PARAMETERS) == {}


@pytest.mark.parametrize(
    ("text", "why"),
    [("- ddim\n- 20\n", "must hold a mapping"), ("steps: [1\n", "is not valid YAML")],
)
def test_a_file_that_is_not_a_mapping_is_refused_by_name(tmp_path, text, why):
    path = _yaml(tmp_path, text)
    with pytest.raises(UsageError, match=why) as caught:
        read_parameters(path, MLCUBE_PARAMETERS)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_refused_by_name(tmp_path):
    with pytest.raises(UsageError, match=r"cannot read the parameters file .*absent\.yaml"):
        read_parameters(tmp_path / "absent.yaml", MLCUBE_PARAMETERS)


def _alias_bomb(levels: int = 9) -> str:
    """A parameters file whose ``map:`` holds 10**levels leaves through nested aliases, in a few hundred
    bytes."""
    lines = ["map:", '  t1c: &l0 ["*a","*b","*c","*d","*e","*f","*g","*h","*i","*j"]']
    for level in range(1, levels):
        lines.append(f"  x{level}: &l{level} [" + ",".join([f"*l{level - 1}"] * 10) + "]")
    lines.append(f"  t2w: *l{levels - 1}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["parameters", "config", "mapping"])
def test_yaml_aliases_are_refused_at_once_naming_the_file(tmp_path, capsys, where):
    import time

    from brasyn.commands.cli import main

    text = _alias_bomb()
    assert len(text.encode()) < 600
    path = _yaml(tmp_path, text if where != "mapping" else text.replace("map:\n", "").replace("  ", ""))
    (tmp_path / "in").mkdir()
    folders = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    argv = {
        "parameters": ["infer", "--data_path", str(tmp_path / "in"), "--output_path", str(tmp_path / "out")],
        "config": [*folders, "--config", str(path)],
        "mapping": [*folders, "--map", str(path)],
    }[where]
    if where == "parameters":
        argv += ["--parameters_file", str(path)]
    start = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err
    assert str(path) in err and "alias *l" in err and "write each value out in full" in err
    assert "Traceback" not in err


def test_a_refused_value_is_shown_cut_to_a_line(tmp_path):
    path = _yaml(tmp_path, "sampler: [" + ", ".join(["ddim"] * 20000) + "]\n")
    with pytest.raises(UsageError) as caught:
        read_parameters(path, MLCUBE_PARAMETERS)
    message = str(caught.value)
    assert message.startswith(f"{path}: sampler: ['ddim', ") and "..." in message
    assert len(message) < 400


# --- shared flags --------------------------------------------------------------------------------


def _speed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_speed_options(parser)
    return parser


def test_speed_options_have_the_same_defaults_in_every_command():
    first, second = _speed_parser().parse_args([]), _speed_parser().parse_args([])
    assert vars(first) == vars(second)
    assert speed_settings(first) == SpeedSettings()
    assert first.channels_last is True and first.precision == "fp32"


def test_both_channels_last_spellings_parse():
    parser = _speed_parser()
    assert parser.parse_args(["--channels-last"]).channels_last is True
    assert parser.parse_args(["--no-channels-last"]).channels_last is False
    args = parser.parse_args(["--precision", "bf16", "--compile", "--no-tf32", "--no-cudnn-benchmark"])
    assert speed_settings(args) == SpeedSettings("bf16", True, False, False, True)


def test_speed_options_refuse_an_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        _speed_parser().parse_args(["--precision", "fp16"])
    assert "expected one of fp32, bf16 or auto, got 'fp16'" in capsys.readouterr().err


def test_device_verbosity_and_threads_flags():
    parser = argparse.ArgumentParser()
    add_device_option(parser, default="cpu")
    add_verbosity_option(parser)
    add_threads_option(parser)
    args = parser.parse_args([])
    assert (args.device, args.verbose, args.threads) == ("cpu", 0, 0)
    args = parser.parse_args(["--device", "CUDA:1", "-vv", "--threads", "3"])
    assert (args.device, args.verbose, args.threads) == ("cuda:1", 2, 3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "-1"])


# --- torchrun ------------------------------------------------------------------------------------


def test_torchrun_environment_absent_set_and_malformed():
    assert torchrun_environment({}) is None
    assert torchrun_environment({"RANK": "1", "LOCAL_RANK": "1"}) is None  # no WORLD_SIZE: not torchrun
    assert torchrun_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == TorchrunEnvironment(
        3, 4, 1
    )
    assert torchrun_environment({"RANK": "0", "WORLD_SIZE": "2"}) == TorchrunEnvironment(0, 2, 0)
    for name, env in [
        ("RANK", {"RANK": "one", "WORLD_SIZE": "2"}),
        ("WORLD_SIZE", {"RANK": "0", "WORLD_SIZE": ""}),
        ("LOCAL_RANK", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1.5"}),
    ]:
        with pytest.raises(UsageError, match=f"environment variable {name}="):
            torchrun_environment(env)
    with pytest.raises(UsageError, match="RANK"):
        shard_from_environment({"RANK": "x", "WORLD_SIZE": "2"})


def test_torchrun_environment_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert torchrun_environment() == TorchrunEnvironment(1, 2, 0)


# --- logging and run_command ---------------------------------------------------------------------


def test_one_v_means_debug(brasyn_logger):
    configure_logging(1)
    assert brasyn_logger.level == logging.DEBUG
    configure_logging(0)
    assert brasyn_logger.level == logging.INFO
    configure_logging(-1)
    assert brasyn_logger.level == logging.WARNING
    assert len(brasyn_logger.handlers) == 1


def test_run_command_maps_outcomes_to_exit_statuses(capsys):
    configure_logging(0)

    def raising(exc: BaseException):
        def body() -> int:
            raise exc

        return body

    assert run_command(lambda: ExitCode.FAILED_CASES) == 1
    assert type(run_command(lambda: ExitCode.OK)) is int
    assert run_command(raising(KeyboardInterrupt())) == 130
    assert run_command(raising(UsageError("the input folder x does not exist"))) == 2
    assert "the input folder x does not exist" in capsys.readouterr().err
    assert run_command(raising(WeightsError("bad weights"))) == 2
    assert run_command(raising(SystemExit(0))) == 0
    assert run_command(raising(SystemExit(None))) == 0
    assert run_command(raising(SystemExit(2))) == 2
    assert run_command(raising(SystemExit(1))) == 2
    assert run_command(raising(ValueError("no case")), usage_errors=(ValueError,)) == 2
    assert "no case" in capsys.readouterr().err
    with pytest.raises(ValueError):  # a bug, not a usage error: the traceback stays
        run_command(raising(ValueError("bug")))


def test_run_command_points_caches_at_a_writable_place_without_a_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "no-such-home"))
    for var in ("XDG_CACHE_HOME", "TORCH_HOME", "MPLCONFIGDIR"):
        monkeypatch.delenv(var, raising=False)
    seen = {}

    def body() -> int:
        seen.update(os.environ)
        return 0

    assert run_command(body) == 0
    assert seen["HOME"] != str(tmp_path / "no-such-home") and os.access(seen["HOME"], os.W_OK)
    assert seen["TORCH_HOME"].startswith(seen["HOME"])


# --- the converted commands: -v works, a bad argument exits 2 ------------------------------------


def test_evaluate_takes_v_and_refuses_a_bad_device(tmp_path, capsys, brasyn_logger):
    from brasyn.commands.evaluate import main

    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    base = ["--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"), "--device", "cpu"]
    assert main([*base, "-v"]) == 2  # an empty --pred: nothing to score
    assert brasyn_logger.level == logging.DEBUG
    assert main(["drop", "-v", "--input", str(tmp_path / "none"), "--output", str(tmp_path / "o")]) == 2
    assert brasyn_logger.level == logging.DEBUG
    assert main([*base, "--device", "gpu"]) == 2
    assert "argument --device: expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    assert main(["drop", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--seed", "1.5"]) == 2


@pytest.mark.parametrize("where", ["before", "after"])
def test_baselines_takes_v_before_or_after_the_subcommand(tmp_path, brasyn_logger, where):
    from brasyn.commands.baselines import main

    fit = ["--data", str(tmp_path), "--out", str(tmp_path / "w")]
    argv = ["-v", "fit", *fit] if where == "before" else ["fit", "-v", *fit]
    assert main(argv) == 2  # no complete case in an empty folder
    assert brasyn_logger.level == logging.DEBUG


def test_baselines_refuses_a_bad_argument(capsys):
    from brasyn.commands.baselines import main

    assert main(["fit", "--bogus"]) == 2
    assert main(["fit"]) == 2
    assert "--data" in capsys.readouterr().err


def test_weights_takes_v_and_contrast_aliases_and_refuses_a_bad_target(tmp_path, capsys, brasyn_logger):
    from brasyn.commands.weights import main

    out = tmp_path / "w"
    assert main(["init", "-v", "--config", "tiny", "--out", str(out), "--targets", "flair"]) == 0
    assert brasyn_logger.level == logging.DEBUG
    assert capsys.readouterr().out.split()[0] == "t2f"
    assert main(["-v", "list", str(out)]) == 0
    assert brasyn_logger.level == logging.DEBUG
    assert main(["init", "--out", str(out), "--targets", "t5"]) == 2
    assert "t1n, t1c, t2w or t2f" in capsys.readouterr().err


def test_train_takes_v_and_refuses_bad_numbers_and_precisions(tmp_path, capsys, brasyn_logger):
    from brasyn.commands.train import main

    base = ["--data", str(tmp_path / "missing"), "--target", "flair", "--out", str(tmp_path / "w")]
    assert main([*base, "--device", "cpu", "-v"]) == 2  # parsed and started: the data folder is missing
    assert brasyn_logger.level == logging.DEBUG
    assert "missing" in capsys.readouterr().err
    for bad in (["--steps", "2.7"], ["--steps", "0"], ["--precision", "fp16"], ["--device", "gpu"]):
        assert main([*base, *bad]) == 2
        assert f"argument {bad[0]}: expected" in capsys.readouterr().err


def test_train_refuses_a_malformed_torchrun_environment(tmp_path, monkeypatch, capsys):
    from brasyn.commands.train import main

    configure_logging(0)
    monkeypatch.setenv("RANK", "zero")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["--data", str(tmp_path), "--target", "t2f", "--out", str(tmp_path / "w"), "--device", "cpu"]
    assert main(args) == 2
    assert "environment variable RANK='zero'" in capsys.readouterr().err


def test_example_takes_v_and_exits_2_when_it_cannot_write(tmp_path, capsys, brasyn_logger):
    from brasyn.commands.example import main

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    assert main(["--out", str(blocked), "--source", str(tmp_path / "none"), "-v"]) == 2
    assert brasyn_logger.level == logging.DEBUG
    assert "Traceback" not in capsys.readouterr().err
    assert main([]) == 2
    assert "--out" in capsys.readouterr().err


# --- logging: -q, one format with the date, lines through tqdm ------------------------------------


def test_q_means_warnings_only_and_excludes_v(capsys, brasyn_logger):
    from brasyn.commands.command import parse_arguments

    parser = argparse.ArgumentParser()
    add_verbosity_option(parser)
    args = parse_arguments(parser, ["-q"])
    assert args.quiet and brasyn_logger.level == logging.WARNING
    log = logging.getLogger("brasyn.test")
    log.info("an info line")
    log.warning("a warning line")
    err = capsys.readouterr().err
    assert "a warning line" in err and "an info line" not in err
    parse_arguments(parser, ["-v"])
    assert brasyn_logger.level == logging.DEBUG
    with pytest.raises(SystemExit):
        parser.parse_args(["-q", "-v"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "module",
    [
        "brasyn.commands.evaluate",
        "brasyn.commands.baselines",
        "brasyn.commands.weights",
        "brasyn.commands.train",
        "brasyn.commands.bench",
        "brasyn.commands.quality",
    ],
)
def test_every_command_takes_q(module, capsys):
    import importlib

    main = importlib.import_module(module).main
    assert main(["--help"]) == 0
    assert "-q, --quiet" in capsys.readouterr().out


def test_log_lines_carry_the_date_and_one_format(capsys, brasyn_logger):
    configure_logging(0)
    logging.getLogger("brasyn.anything").info("hello")
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO hello\n", err), err


def test_log_lines_do_not_break_a_progress_bar(capsys, brasyn_logger):
    from tqdm import tqdm

    configure_logging(0)
    with tqdm(total=3, desc="sampling", file=sys.stderr, ascii=True, mininterval=0) as bar:
        bar.update(1)
        logging.getLogger("brasyn.x").info("a line while the bar runs")
        bar.update(1)
    err = capsys.readouterr().err
    line = next(part for part in re.split(r"[\r\n]", err) if "a line while the bar runs" in part)
    # the log line stands alone: the bar was cleared before it and redrawn after it
    assert "sampling" not in line and line.endswith("a line while the bar runs")


# --- the MLCube hotfix key ----------------------------------------------------------------------------


def test_a_hotfix_key_is_accepted_and_ignored_with_a_debug_line(tmp_path, caplog):
    from brasyn.commands.options import MLCUBE_IGNORED

    path = tmp_path / "parameters.yaml"
    path.write_text("hotfix: {}\nsteps: 20\n")
    with caplog.at_level(logging.DEBUG, logger="brasyn"):
        logging.getLogger("brasyn").propagate = True
        assert read_parameters(path, MLCUBE_PARAMETERS, MLCUBE_IGNORED) == {"steps": 20}
    assert any("'hotfix' is ignored" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    with pytest.raises(UsageError, match="unknown key"):  # ignored only where asked
        read_parameters(path, MLCUBE_PARAMETERS)


# --- brasyn demo --help -------------------------------------------------------------------------------


def test_demo_help_is_plain_text_and_lists_the_main_options(capsys):
    from brasyn.commands.cli import main

    assert main(["demo", "--help"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":mod:" not in text and "`" not in text
    assert text.startswith("usage: brasyn demo [--out DIR] [-v | -q] [options of the main job]")
    for option in (
        "--sampler",
        "--steps",
        "--seed",
        "--device",
        "--method",
        "--precision",
        "--extras",
        "--report",
    ):
        assert option in text, option
    assert "brasyn --help" in text and "-q, --quiet" in text
    assert "--devices" not in text  # one example case: no worker processes
