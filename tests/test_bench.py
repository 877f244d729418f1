import json

from brasyn import bench


def test_bench_prints_timings_as_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(
        [
            "--config",
            "tiny",
            "--shape",
            "32",
            "32",
            "32",
            "--device",
            "cpu",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["denoiser_input_shape"] == [1, 32, 16, 16, 16]
    for key in ("forward_ms", "ddim_step_ms", "dwt3_ms", "idwt3_ms"):
        assert printed[key]["median"] > 0
    assert printed["peak_rss_mib"] > 0


def test_bench_refuses_a_shape_the_network_cannot_take(capsys):
    assert bench.main(["--config", "tiny", "--shape", "32", "32", "30"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
