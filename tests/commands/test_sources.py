"""The main job's settings from four places: flag > BRASYN_* variable > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from brasyn.commands.cli import build_parser, main
from brasyn.commands.options import MLCUBE_PARAMETERS
from brasyn.commands.sources import SETTING_VARIABLES, apply_sources, variable_settings
from brasyn.common.errors import UsageError
from brasyn.data.contrast_map import ContrastMap
from tests.helpers import documentation_text


def parse(argv: list[str], environ: dict[str, str] | None = None):
    parser = build_parser()
    return apply_sources(parser, argv, parser.parse_args(argv), environ or {})


def config(tmp_path: Path, text: str, name: str = "brasyn.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_without_variables_or_config_the_flags_parse_as_before():
    plain = vars(build_parser().parse_args(["--steps", "20"]))
    assert vars(parse(["--steps", "20"], {"BRASYN_OTHER": "x"})) == plain
    assert vars(parse([])) == vars(build_parser().parse_args([]))


def test_the_variables_name_settings_of_the_parameters_file():
    assert set(SETTING_VARIABLES.values()) <= set(MLCUBE_PARAMETERS)
    assert set(SETTING_VARIABLES) == {
        "BRASYN_SAMPLER",
        "BRASYN_STEPS",
        "BRASYN_PRECISION",
        "BRASYN_BACKEND",
        "BRASYN_DEVICE",
    }


@pytest.mark.parametrize(
    ("key", "flag", "variable", "in_file", "default"),
    [
        ("sampler", "ddim", "dpm++2m", "x0", "ddpm"),
        ("steps", "1000", "10", "20", 1000),
        ("precision", "fp32", "bf16", "auto", "fp32"),
        ("device", "cpu", "cuda:1", "cuda", "auto"),
    ],
)
def test_a_flag_beats_its_variable_which_beats_the_config_file_which_beats_the_default(
    tmp_path, key, flag, variable, in_file, default
):
    """Every layer, each time with the one above it removed; the flag gives the default value itself so
    that 'given' is told from 'default'."""
    name = next(v for v, k in SETTING_VARIABLES.items() if k == key)
    path = config(tmp_path, f"{key}: {in_file}\n")
    environ = {name: variable}
    convert = MLCUBE_PARAMETERS[key]
    assert getattr(parse([f"--{key}", flag, "--config", str(path)], environ), key) == convert(flag)
    assert getattr(parse(["--config", str(path)], environ), key) == convert(variable)
    assert getattr(parse(["--config", str(path)]), key) == convert(in_file)
    assert getattr(parse([]), key) == default


def test_brasyn_config_is_read_and_the_config_flag_beats_it(tmp_path):
    by_variable = config(tmp_path, "sampler: ddim\nsteps: 20\nseed: 7\n", "a.yaml")
    by_flag = config(tmp_path, "sampler: x0\n", "b.yaml")
    args = parse([], {"BRASYN_CONFIG": str(by_variable)})
    assert (args.sampler, args.steps, args.seed) == ("ddim", 20, 7)
    args = parse(["--config", str(by_flag)], {"BRASYN_CONFIG": str(by_variable)})
    assert (args.sampler, args.steps, args.seed) == ("x0", 1000, 42)  # one file: the flag's


def test_the_config_file_takes_every_key_of_the_parameters_file(tmp_path):
    path = config(
        tmp_path,
        "sampler: ddim\nsteps: 20\nseed: 7\ndraws: 3\ndevice: CPU\neta: 0.5\nnaming: brats2023\n"
        "target: flair\nmethod: linear\nprecision: bf16\nbackend: torch\ngrid_of: t1ce\nmap:\n  t1c: '*post*'\n"
        "hotfix:\n  anything: 1\n",
    )
    args = parse(["--config", str(path)])
    got = {key: getattr(args, key) for key in MLCUBE_PARAMETERS if key != "map"}
    assert got == {
        "sampler": "ddim",
        "steps": 20,
        "seed": 7,
        "draws": 3,
        "device": "cpu",
        "eta": 0.5,
        "naming": "brats2023",
        "target": "t2f",
        "method": "linear",
        "precision": "bf16",
        "backend": "torch",
        "grid_of": "t1c",
    }
    assert isinstance(args.map, ContrastMap) and args.map.describe() == "t1c='*post*'"


def test_the_shipped_mlcube_parameters_file_is_a_config_file():
    path = Path(__file__).resolve().parents[2] / "mlcube" / "workspace" / "parameters.yaml"
    args = parse(["--config", str(path)])
    assert (args.sampler, args.steps, args.seed) == ("ddpm", 1000, 42)


def test_flags_whose_default_is_none_beat_the_config_file(tmp_path):
    path = config(tmp_path, "target: t1n\ngrid_of: t2w\nmap:\n  t1c: '*post*'\n")
    args = parse(["--config", str(path), "--target", "t2f", "--map", "t1c=*gado*"])
    assert args.target == "t2f" and args.grid_of == "t2w"
    assert ContrastMap.combine(args.map).describe() == "t1c='*gado*'"  # the flag's map only


def test_an_empty_variable_is_no_setting(tmp_path):
    assert parse([], {"BRASYN_STEPS": "", "BRASYN_SAMPLER": "  "}).steps == 1000
    assert variable_settings({"BRASYN_STEPS": "7"}) == {"steps": ("BRASYN_STEPS", 7)}


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("BRASYN_SAMPLER", "dpm", r"one of ddpm, ddim, dpm\+\+2m or x0"),
        ("BRASYN_STEPS", "2.7", "a whole number from 1 to 1000"),
        ("BRASYN_PRECISION", "fp16", "one of fp32, bf16 or auto"),
        ("BRASYN_BACKEND", "onnx", "one of auto, torch or openvino"),
        ("BRASYN_DEVICE", "gpu", "auto, cpu, cuda or cuda:N"),
    ],
)
def test_a_bad_variable_is_refused_naming_it_and_the_allowed_values(variable, value, allowed):
    with pytest.raises(UsageError, match=rf"{variable}='{value}' is not valid: expected {allowed}"):
        parse([], {variable: value})


def test_a_bad_variable_stops_the_run_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BRASYN_STEPS", "many")
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "BRASYN_STEPS='many' is not valid" in err and "whole number from 1 to 1000" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("step: 20\n", ["unknown key(s) 'step'", "did you mean steps", "the known keys are"]),
        ("sampler: dpm\n", ["sampler: 'dpm' is not valid", "one of ddpm, ddim, dpm++2m or x0"]),
        ("steps: 0\n", ["steps: 0 is not valid", "a whole number from 1 to 1000"]),
        ("- sampler\n", ["must hold a mapping"]),
    ],
)
def test_a_bad_config_file_stops_the_run_naming_the_file_and_the_key(
    tmp_path, monkeypatch, capsys, text, words
):
    path = config(tmp_path, text)
    for how in ("flag", "variable"):
        argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
        if how == "flag":
            argv += ["--config", str(path)]
        else:
            monkeypatch.setenv("BRASYN_CONFIG", str(path))
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, how
        assert str(path) in err and all(w in err for w in words), (how, err)
        assert "Traceback" not in err


def test_a_missing_config_file_is_named_with_where_it_was_named(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere.yaml"
    monkeypatch.setenv("BRASYN_CONFIG", str(missing))
    assert main(["--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"cannot read the config file ($BRASYN_CONFIG) {missing}" in err


def test_the_readme_documents_every_variable_and_the_plain_docker_override():
    readme = documentation_text()
    for variable in [*SETTING_VARIABLES, "BRASYN_CONFIG"]:
        assert f"| `{variable}` |" in readme, variable
    assert "IMAGE --sampler dpm++2m --steps 10" in readme
    assert "-e BRASYN_CONFIG=/config/brasyn.yaml" in readme
    assert "its flag, else its `BRASYN_*` variable, else the config file, else its default" in readme
