"""``--help`` of every command: a default is shown where it means something, once, and never as None,
False or a counter's 0; the training commands take their data folders one way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from brasyn.commands import baselines, bench, evaluate, prepare, quality, train, weights
from brasyn.commands.cli import main as cli_main

COMMANDS = {
    "brasyn": (cli_main, []),
    "brasyn doctor": (cli_main, ["doctor"]),
    "brasyn.train": (train.main, []),
    "brasyn.train prepare": (prepare.main, []),
    "brasyn.bench": (bench.main, []),
    "brasyn.weights init": (weights.main, ["init"]),
    "brasyn.weights fetch-official": (weights.main, ["fetch-official"]),
    "brasyn.evaluate": (evaluate.main, []),
    "brasyn.evaluate drop": (evaluate.main, ["drop"]),
    "brasyn.baselines fit": (baselines.main, ["fit"]),
    "brasyn.quality samplers": (quality.main, ["samplers"]),
}


def _help(name: str, capsys) -> str:
    main, words = COMMANDS[name]
    try:
        code = main([*words, "--help"])
    except SystemExit as done:  # a parser called outside the command's wrapper
        code = done.code
    assert code == 0
    return re.sub(r"\s+", " ", capsys.readouterr().out)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_no_empty_or_doubled_default(name, capsys):
    text = _help(name, capsys)
    for wrong in ("(default: None)", "(default: False)", "(default: [])", "debug log (default: 0)"):
        assert wrong not in text, f"{name} --help says {wrong}"
    assert not re.search(r"\(default:? [^()]*\) \(default: ", text), f"{name} --help gives a default twice"


def test_help_shows_the_defaults_that_were_missing(capsys):
    assert "--config CONFIG denoiser size (default: official)" in _help("brasyn.bench", capsys)
    assert "cases prepared at once (default: 1)" in _help("brasyn.train prepare", capsys)


@pytest.mark.parametrize("parser", [train.build_parser, prepare.build_parser])
def test_both_training_commands_take_data_folders_both_ways(parser):
    extra = ["--target", "t2f", "--out", "W"] if parser is train.build_parser else []
    together = parser().parse_args(["--data", "A", "B", "--cache", "C", *extra])
    repeated = parser().parse_args(["--data", "A", "--data", "B", "--cache", "C", *extra])
    assert together.data == repeated.data == [Path("A"), Path("B")]
