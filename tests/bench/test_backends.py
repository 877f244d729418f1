"""The CPU backends table: every backend on one input, errors against the reference, the winner's rule,
and the optional OpenVINO backend left out where it is not installed."""

from __future__ import annotations

import json

import pytest

from brasyn.bench import backends
from brasyn.bench.backends import ERROR_BOUND, compare_backends, pick_winner
from brasyn.commands.bench import main


def _row(seconds: float, error: float = 1e-4, startup: float = 0.0) -> dict:
    return {
        "batch_seconds_per_forward": seconds + startup / 100,
        "within_bound": error <= ERROR_BOUND,
    }


def test_the_winner_is_the_fastest_within_the_bound_and_adopted_only_at_the_win_ratio():
    table = {
        "official-fp32": _row(0.1),  # the reference is never a candidate
        "eager-fp32": _row(4.0),
        "eager-bf16": _row(2.0),
        "openvino-bf16": _row(0.5, error=2 * ERROR_BOUND),  # fast but wrong
        "openvino-fp32": _row(1.0, startup=30.0),  # 1.3 s per forward over the batch
    }
    winner = pick_winner(table)
    assert winner["name"] == "openvino-fp32" and winner["adopt"]
    assert winner["gain_over_baseline"] == pytest.approx(2.0 / 1.3, rel=1e-3)
    table["openvino-fp32"] = _row(1.0, startup=60.0)  # faster over the batch, but 1.25x: not worth it
    assert pick_winner(table)["name"] == "openvino-fp32" and not pick_winner(table)["adopt"]
    table["openvino-fp32"] = _row(2.5)
    assert pick_winner(table)["name"] == "eager-bf16" and not pick_winner(table)["adopt"]
    assert pick_winner({"eager-bf16": _row(1.0, error=1.0)})["name"] is None


def test_backends_side_by_side_on_a_tiny_network(capsys):
    args = ["backends", "--config", "tiny", "--shape", "32", "32", "32", "--rounds", "2"]
    assert main([*args, "--backend", "eager-fp32", "--backend", "eager-bf16", "--threads", "1"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["reference"] == "eager-fp32" and set(figures["backends"]) == {"eager-fp32", "eager-bf16"}
    fp32, bf16 = figures["backends"]["eager-fp32"], figures["backends"]["eager-bf16"]
    assert fp32["max_abs_difference"] == 0 and fp32["ratio_to_reference"] == 1
    assert len(bf16["runs"]) == 2 and 0 < bf16["relative_error"] <= ERROR_BOUND and bf16["within_bound"]
    assert figures["winner"]["name"] in {"eager-fp32", "eager-bf16"}


def test_openvino_is_left_out_where_it_is_not_installed(monkeypatch):
    monkeypatch.setattr(backends, "openvino_available", lambda: False)
    figures = compare_backends(
        "tiny", (32, 32, 32), ["eager-fp32", "openvino-fp32", "openvino-bf16"], rounds=1
    )
    assert set(figures["backends"]) == {"eager-fp32"}
    assert figures["not_available"] == ["openvino-fp32", "openvino-bf16"]
    # without the official code or eager fp32 among those asked, eager fp32 joins as the reference
    alone = compare_backends("tiny", (32, 32, 32), ["eager-bf16"], rounds=1)
    assert alone["reference"] == "eager-fp32" and set(alone["backends"]) == {"eager-fp32", "eager-bf16"}


@pytest.mark.slow
def test_openvino_matches_the_eager_network_where_it_is_installed():
    pytest.importorskip("openvino", reason="the optional OpenVINO backend (pip install 'brasyn[cpu]')")
    figures = compare_backends("tiny", (32, 32, 32), ["eager-fp32", "openvino-fp32"], rounds=1)
    row = figures["backends"]["openvino-fp32"]
    assert row["relative_error"] < 1e-5 and row["within_bound"]
