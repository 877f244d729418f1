"""The main job end to end: folders of cases in, one synthetic NIfTI per case out."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brasyn.commands.cli import main
from brasyn.data.modalities import conditions_for, modality_from_alias
from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.weights.store import WeightStore, init_random
from tests.helpers import (
    CONTAINER_UID,
    STACKS_ON_ABORT,
    communicate_or_show_stacks,
    container_prefix,
    make_case,
    save_nifti,
    written_by_container_uid,
)

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--sampler", "ddim", "--steps", "2", "--device", "cpu", "--no-progress"]


def run_fast(inputs: Path, output: Path, weights: Path, *extra: str) -> int:
    """The main job on CPU with a 2-step DDIM sampler."""
    return main(["--input", str(inputs), "--output", str(output), "--weights", str(weights), *FAST, *extra])


def _tree_digest(folder: Path) -> dict[str, tuple[str, float, int]]:
    out = {}
    for path in sorted(folder.rglob("*")):
        st = path.stat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        out[str(path.relative_to(folder))] = (digest, st.st_mtime, st.st_mode)
    return out


GOOD_OUTPUTS = {
    "BraTS-GLI-00001-000-t2f.nii.gz",
    "BraTS-GLI-00002-000-t1n.nii.gz",
    "BraTS2021_00003_t2.nii.gz",
}
"""What the main job writes for :func:`_good_cases`."""


def _good_cases(root: Path) -> dict[str, dict[str, Path]]:
    return {
        "BraTS-GLI-00001-000": make_case(root, "BraTS-GLI-00001-000", ("t1n", "t1c", "t2w"), seed=1),
        "BraTS-GLI-00002-000": make_case(root, "BraTS-GLI-00002-000", ("t1c", "t2w", "t2f"), seed=2),
        "BraTS2021_00003": make_case(
            root, "BraTS2021_00003", ("t1", "t1ce", "flair"), seed=3, pattern="{case}_{m}.nii.gz"
        ),
    }


def test_batch_writes_one_file_per_case_on_the_input_grid_and_scale(tmp_path, tiny_weights):
    inputs, output, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    cases = _good_cases(inputs)
    before = _tree_digest(inputs)
    code = run_fast(inputs, output, tiny_weights, "--report", str(report))
    assert code == 0
    expected = GOOD_OUTPUTS
    assert {p.name for p in output.iterdir()} == expected
    assert _tree_digest(inputs) == before

    store = WeightStore(tiny_weights)
    for name in expected:
        case = next(c for c in cases if name.startswith(c))
        reference = nib.load(next(iter(cases[case].values())))
        out = nib.load(output / name)
        assert out.shape == reference.shape
        np.testing.assert_array_equal(out.affine, reference.affine)
        assert out.get_data_dtype() == np.float32
        assert out.dataobj.slope == 1.0 and out.dataobj.inter == 0.0
        assert int(out.header["sform_code"]) == 1 and int(out.header["qform_code"]) == 1
        data = np.asanyarray(out.dataobj)
        inputs_data = [np.asanyarray(nib.load(p).dataobj) for p in cases[case].values()]
        background = np.all([d == 0 for d in inputs_data], axis=0)
        assert data.min() >= 0
        assert not data[background].any()
        assert data[~background].any()
        # on the scale the checkpoint's ratios predict from the three inputs, not in [0, 1]
        target = store_target(name)
        ratios = store.info(target).intensity_ratios
        estimates = [ratios[m] * np.percentile(d, 99.9) for m, d in _ordered(cases[case], target).items()]
        assert 1.5 < data.max() <= np.median(estimates) * (1 + 1e-5)

    saved = json.loads(report.read_text())
    _validate_report(saved)
    assert saved["summary"] == {"written": 3, "skipped": 0, "failed": 0}


def store_target(output_name: str) -> str:
    token = output_name.removesuffix(".nii.gz").replace("_", "-").rsplit("-", 1)[-1]
    return modality_from_alias(token).value


def _ordered(files: dict[str, Path], target: str) -> dict:
    """The three inputs' data by canonical contrast, in the model's condition order."""
    by_modality = {modality_from_alias(k): v for k, v in files.items()}
    return {m: np.asanyarray(nib.load(by_modality[m]).dataobj) for m in conditions_for(target)}


def _validate_report(report: dict) -> None:
    import jsonschema

    schema = json.loads((ROOT / "docs" / "report.schema.json").read_text())
    jsonschema.validate(report, schema)


def test_bad_cases_fail_with_their_reason_while_the_others_are_written(tmp_path, tiny_weights):
    inputs, output, report = tmp_path / "in", tmp_path / "out", tmp_path / "r" / "report.json"
    make_case(inputs, "good-1", ("t1n", "t1c", "t2w"), seed=1)
    nan = make_case(inputs, "nan-case", seed=2)
    data = np.asanyarray(nib.load(nan["t1c"]).dataobj).copy()
    data[10, 10, 10] = np.nan
    save_nifti(nan["t1c"], data)
    trunc = make_case(inputs, "truncated-case", seed=3)
    raw = trunc["t2w"].read_bytes()
    trunc["t2w"].write_bytes(raw[: len(raw) // 3])
    grid = make_case(inputs, "grid-case", seed=4)
    shifted = BRATS_AFFINE.copy()
    shifted[:3, 3] += 60.0  # a brain 60 mm away from the others: not co-registered
    save_nifti(grid["t2w"], phantom((48, 56, 40), seed=9), shifted)
    four_d = make_case(inputs, "fourd-case", seed=5)
    save_nifti(four_d["t1n"], np.stack([phantom(seed=5)] * 2, axis=-1))
    make_case(inputs, "two-contrasts", ("t1n", "t1c"), seed=6)
    dup = make_case(inputs, "dup-case", seed=7)
    shutil.copy(dup["t1n"], dup["t1n"].with_name("dup-case_t1.nii"))
    make_case(inputs, "good-2", ("t1n", "t2w", "t2f"), seed=8)
    before = _tree_digest(inputs)

    code = run_fast(inputs, output, tiny_weights, "--report", str(report))

    assert code == 1
    assert sorted(p.name for p in output.iterdir()) == ["good-1-t2f.nii.gz", "good-2-t1c.nii.gz"]
    assert _tree_digest(inputs) == before
    saved = json.loads(report.read_text())
    _validate_report(saved)
    by_case = {c["case"]: c for c in saved["cases"]}
    expectations = {
        "nan-case": ("NaN", "nan-case-t1c.nii.gz"),
        "truncated-case": ("truncated or corrupt", "truncated-case-t2w.nii.gz"),
        "grid-case": ("not co-registered", "grid-case-t2w.nii.gz"),
        "fourd-case": ("single 3-D volume", "fourd-case-t1n.nii.gz"),
        "two-contrasts": ("three of", "two-contrasts-t1n.nii.gz"),
        "dup-case": ("t1n", "dup-case_t1.nii"),
    }
    for case, (words, file_name) in expectations.items():
        entry = by_case[case]
        assert entry["status"] == "failed", case
        assert words in entry["message"], (case, entry["message"])
        assert file_name in entry["message"] or any(f.endswith(file_name) for f in entry["files"]), case
    assert saved["summary"] == {"written": 2, "skipped": 0, "failed": 6}


def test_second_run_skips_everything_and_overwrite_replaces(tmp_path, tiny_weights):
    inputs, output = tmp_path / "in", tmp_path / "out"
    _good_cases(inputs)
    args = ["--input", str(inputs), "--output", str(output), "--weights", str(tiny_weights), *FAST]
    assert main(args) == 0
    first = _tree_digest(output)
    report = tmp_path / "second.json"
    assert main([*args, "--report", str(report)]) == 0
    assert _tree_digest(output) == first
    statuses = [c["status"] for c in json.loads(report.read_text())["cases"]]
    assert statuses == ["skipped"] * 3
    # --overwrite writes every case again: a file damaged since is replaced, each output is a new file
    damaged = output / sorted(first)[0]
    damaged.write_bytes(b"not an image any more")
    inodes = {name: (output / name).stat().st_ino for name in first}
    report = tmp_path / "third.json"
    assert main([*args, "--overwrite", "--report", str(report)]) == 0
    statuses = [c["status"] for c in json.loads(report.read_text())["cases"]]
    assert statuses == ["written"] * 3
    after = _tree_digest(output)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in first.items()}  # same seed, same bytes
    assert all((output / name).stat().st_ino != inode for name, inode in inodes.items())


def test_complete_cases_are_skipped_unless_a_target_is_forced(tmp_path, tiny_weights):
    inputs, output = tmp_path / "in", tmp_path / "out"
    make_case(inputs, "full", ("t1n", "t1c", "t2w", "t2f"), seed=1)
    args = ["--input", str(inputs), "--output", str(output), "--weights", str(tiny_weights), *FAST]
    assert main(args) == 0
    assert list(output.iterdir()) == []
    assert main([*args, "--target", "t1c"]) == 0
    assert [p.name for p in output.iterdir()] == ["full-t1c.nii.gz"]


def test_unusable_setup_exits_2_with_a_sentence(tmp_path, tiny_weights, capsys):
    inputs = tmp_path / "in"
    make_case(inputs, "c1", seed=1)
    out = tmp_path / "o"
    attempts = [
        ((tmp_path / "nope", out, tiny_weights), "input folder"),
        ((inputs, inputs / "c1" / "out", tiny_weights), "inside the input folder"),
        ((inputs, out, tmp_path / "none"), "python -m brasyn.weights"),
        ((inputs, out, tiny_weights, "--report", str(out / "r.json")), "--report"),
        ((inputs, out, tiny_weights, "--steps", "0"), "--steps: expected a whole number from 1 to 1000"),
        ((inputs, out, tiny_weights, "--device", "tpu"), "--device: expected auto, cpu, cuda or cuda:N"),
    ]
    for args, words in attempts:
        code = run_fast(*args)
        err = capsys.readouterr().err
        assert code == 2, words
        assert words in err, (words, err)
        assert "Traceback" not in err
    assert not (inputs / "c1" / "out").exists()
    assert not out.exists() or list(out.iterdir()) == []


def test_missing_checkpoint_fails_only_the_cases_that_need_it(tmp_path):
    weights = tmp_path / "w"
    init_random(weights, "tiny", seed=1, targets=["t2f"])
    inputs, output = tmp_path / "in", tmp_path / "out"
    make_case(inputs, "needs-t2f", ("t1n", "t1c", "t2w"), seed=1)
    make_case(inputs, "needs-t1n", ("t1c", "t2w", "t2f"), seed=2)
    report = tmp_path / "r.json"
    assert run_fast(inputs, output, weights, "--report", str(report)) == 1
    assert [p.name for p in output.iterdir()] == ["needs-t2f-t2f.nii.gz"]
    failed = [c for c in json.loads(report.read_text())["cases"] if c["status"] == "failed"]
    assert [c["case"] for c in failed] == ["needs-t1n"] and "t1n" in failed[0]["message"]


def test_extras_previews_are_written_outside_the_output(tmp_path, tiny_weights):
    inputs, output, extras = tmp_path / "in", tmp_path / "out", tmp_path / "previews"
    make_case(inputs, "c1", seed=1)
    assert run_fast(inputs, output, tiny_weights, "--extras", str(extras)) == 0
    assert [p.name for p in extras.iterdir()] == ["c1-t2f.png"]
    png = (extras / "c1-t2f.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # the title in the file's text says what made it
    assert "c1 \u2014 target t2f \u2014 diffusion, ddim 2 steps, seed 42".encode() in png
    assert [p.name for p in output.iterdir()] == ["c1-t2f.nii.gz"]


@pytest.mark.slow
def test_mlcube_and_no_argument_forms_write_identical_files(tmp_path, tiny_weights, monkeypatch):
    # a checkpoint trained on a 25-step chain: the default (full-chain ddpm) sampler stays quick
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    manifest = json.loads((weights / "manifest.json").read_text())
    manifest["checkpoints"]["t2f"]["diffusion"]["steps"] = 25
    (weights / "manifest.json").write_text(json.dumps(manifest))
    inputs = tmp_path / "in"
    make_case(inputs, "BraTS-GLI-00009-000", shape=(30, 30, 30), seed=3)  # small: the defaults run 1000 steps
    assert main(["hotfix"]) == 0
    code = main(
        [
            "infer",
            f"--data_path={inputs}",
            f"--output_path={tmp_path / 'mlcube'}",
            f"--weights={weights / 'manifest.json'}",
        ]
    )
    assert code == 0
    monkeypatch.setenv("BRASYN_INPUT", str(inputs))
    monkeypatch.setenv("BRASYN_OUTPUT", str(tmp_path / "plain"))
    monkeypatch.setenv("BRASYN_WEIGHTS", str(weights))
    assert main([]) == 0
    a, b = _tree_digest(tmp_path / "mlcube"), _tree_digest(tmp_path / "plain")
    assert list(a) == ["BraTS-GLI-00009-000-t2f.nii.gz"]
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}


def test_mlcube_parameters_are_checked_like_the_flags(tmp_path, tiny_weights, capsys):
    """The YAML values pass the flags' converters: an alias works; a bad value, a bad type and an unknown
    key stop the run with exit 2, naming the file, the key, the value and what is allowed."""
    inputs = tmp_path / "in"
    make_case(inputs, "c1", ("t1n", "t1c", "t2w", "t2f"), seed=3)
    params = tmp_path / "params" / "parameters.yaml"
    params.parent.mkdir()

    def infer(text: str, output: str) -> tuple[int, str]:
        params.write_text(text)
        code = main(
            [
                "infer",
                f"--data_path={inputs}",
                f"--output_path={tmp_path / output}",
                f"--weights={tiny_weights}",
                f"--parameters_file={params}",
            ]
        )
        return code, capsys.readouterr().err

    code, _ = infer("target: flair\nsampler: ddim\nsteps: 2\ndevice: cpu\n", "alias")
    assert code == 0
    assert [p.name for p in (tmp_path / "alias").iterdir()] == ["c1-t2f.nii.gz"]
    for text, words in (
        ("steps: 2.7\n", ["steps: 2.7 is not valid", "whole number from 1 to 1000"]),
        ("steps: abc\n", ["steps: 'abc' is not valid", "whole number from 1 to 1000"]),
        ("target: flare\n", ["target: 'flare' is not valid", "t2f"]),
        ("sampler: [ddim]\n", ["sampler:", "is not valid", "dpm++2m"]),
        ("step: 20\n", ["unknown key(s) 'step'", "did you mean steps", "the known keys are"]),
    ):
        code, err = infer(text, "refused")
        assert code == 2, text
        assert str(params) in err and all(w in err for w in words), (text, err)
        assert "Traceback" not in err
        assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())


def test_mlcube_parameters_file_sets_the_sampler(tmp_path, tiny_weights):
    inputs = tmp_path / "in"
    make_case(inputs, "c1", seed=3)
    params = tmp_path / "params" / "parameters.yaml"
    params.parent.mkdir()
    params.write_text("sampler: ddim\nsteps: 2\nseed: 7\ndevice: cpu\n")
    assert (
        main(
            [
                "infer",
                f"--data_path={inputs}",
                f"--output_path={tmp_path / 'a'}",
                f"--weights={tiny_weights}",
                f"--parameters_file={params}",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--input",
                str(inputs),
                "--output",
                str(tmp_path / "b"),
                "--weights",
                str(tiny_weights),
                "--sampler",
                "ddim",
                "--steps",
                "2",
                "--seed",
                "7",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "--input",
                str(inputs),
                "--output",
                str(tmp_path / "c"),
                "--weights",
                str(tiny_weights),
                "--sampler",
                "ddim",
                "--steps",
                "2",
                "--seed",
                "8",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    a, b, c = (_tree_digest(tmp_path / x) for x in "abc")
    assert {k: v[0] for k, v in a.items()} == {k: v[0] for k, v in b.items()}
    assert {k: v[0] for k, v in a.items()} != {k: v[0] for k, v in c.items()}
    params.write_text("- not a mapping\n")
    assert (
        main(
            [
                "infer",
                f"--data_path={inputs}",
                f"--output_path={tmp_path / 'd'}",
                f"--parameters_file={params}",
            ]
        )
        == 2
    )


def _entrypoint_env(**extra: str) -> dict[str, str]:
    """A container-like environment: no HOME, nothing inherited but PATH."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1", **extra}


def test_entrypoint_runs_as_an_unknown_uid_without_home_and_read_only_input(open_tmp, tiny_weights):
    """As the container runs it: a uid with no passwd entry that owns nothing, no HOME, no network; the
    input and the weights read-only. It writes the outputs and nothing outside /tmp."""
    prefix = container_prefix()
    if prefix is None:
        pytest.skip("switching to another uid (root with unshare and setpriv) is not possible here")
    inputs, output = open_tmp / "in", open_tmp / "out"
    _good_cases(inputs)
    for path in [inputs, *inputs.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    output.mkdir()
    output.chmod(0o777)
    tiny_copy = open_tmp / "w"
    shutil.copytree(tiny_weights, tiny_copy)
    for path in [tiny_copy, *tiny_copy.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = _tree_digest(inputs)
    weights_before = _tree_digest(tiny_copy)
    elsewhere_before = written_by_container_uid()
    env = _entrypoint_env(BRASYN_INPUT=str(inputs), BRASYN_OUTPUT=str(output), BRASYN_WEIGHTS=str(tiny_copy))
    proc = subprocess.run(
        [*prefix, sys.executable, str(ROOT / "entrypoint.py"), *FAST],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in output.iterdir()} == GOOD_OUTPUTS
    assert all(p.stat().st_uid == CONTAINER_UID for p in output.iterdir())
    assert _tree_digest(inputs) == before and _tree_digest(tiny_copy) == weights_before
    assert written_by_container_uid() == elsewhere_before


def test_terminated_run_leaves_nothing_partial(tmp_path, tiny_weights):
    inputs, output = tmp_path / "in", tmp_path / "out"
    make_case(inputs, "slow", seed=1, shape=(96, 96, 64))
    env = _entrypoint_env(**STACKS_ON_ABORT)
    cmd = [
        sys.executable,
        str(ROOT / "entrypoint.py"),
        "--input",
        str(inputs),
        "--output",
        str(output),
        "--weights",
        str(tiny_weights),
        "--sampler",
        "ddpm",
        "--steps",
        "1000",
        "--device",
        "cpu",
    ]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        seen = ""
        # the model is loaded as sampling starts (a pipe gets no progress bar to wait for)
        while time.time() < deadline and "loaded t2f denoiser" not in seen:
            seen += proc.stderr.read(1)
        time.sleep(1.0)  # into the sampling steps, where a stop lands in a long run
        proc.send_signal(sig)
        communicate_or_show_stacks(proc, 60)
        assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
        assert list(output.iterdir()) == [], sig


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_reading_ahead_writes_the_same_bytes_as_reading_case_by_case(tmp_path, tiny_weights):
    inputs = tmp_path / "in"
    _good_cases(inputs)
    assert run_fast(inputs, tmp_path / "ahead", tiny_weights) == 0
    assert run_fast(inputs, tmp_path / "one-by-one", tiny_weights, "--no-prefetch") == 0
    ahead = _outputs(tmp_path / "ahead")
    assert len(ahead) == 3 and ahead == _outputs(tmp_path / "one-by-one")


def test_fast_samplers_and_bf16_run_through_the_pipeline(tmp_path):
    inputs = tmp_path / "in"
    make_case(inputs, "BraTS-GLI-00001-000", seed=1)
    name = "BraTS-GLI-00001-000-t2f.nii.gz"
    # the bundled (trained) weights: random ones amplify rounding far beyond what a real model does
    base = ["--input", str(inputs), "--weights", str(ROOT / "weights"), "--device", "cpu", "--no-progress"]
    results = {}
    for label, extra in {
        "fp32": ["--sampler", "dpm++2m", "--steps", "4", "--precision", "fp32"],
        "bf16": ["--sampler", "dpm++2m", "--steps", "4", "--precision", "bf16"],
        "x0": ["--sampler", "x0"],
        "contiguous": ["--sampler", "dpm++2m", "--steps", "4", "--no-channels-last"],
    }.items():
        report = tmp_path / f"{label}.json"
        assert main([*base, "--output", str(tmp_path / label), "--report", str(report), *extra]) == 0
        results[label] = nib.load(tmp_path / label / name).get_fdata()
        settings = json.loads(report.read_text())["settings"]
        assert settings["speed"]["precision"] == ("bf16" if label == "bf16" else "fp32")
    brain = results["fp32"] > 0
    assert brain.sum() > 1000 and results["x0"][brain].std() > 0
    scale = np.abs(results["fp32"][brain]).mean()
    # bf16 autocast with trained weights: within 1% on average (measured 0.09%); memory format: rounding
    assert np.abs(results["bf16"] - results["fp32"])[brain].mean() < 0.01 * scale
    assert np.abs(results["contiguous"] - results["fp32"]).max() < 1e-3 * scale


@pytest.mark.parametrize("flag", ["-v", "--verbose"])
def test_verbose_gives_the_debug_log_in_the_main_command_too(tmp_path, flag):
    import logging

    from brasyn.commands import bench, quality

    assert main([flag, "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert logging.getLogger("brasyn").level == logging.DEBUG
    assert main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    assert logging.getLogger("brasyn").level == logging.INFO
    for command in (bench.main, quality.main):
        assert command([flag, "--help"]) == 0


def test_the_summary_table_goes_to_stdout_and_case_lines_count_the_batch(tmp_path, tiny_weights, capsys):
    inputs, output = tmp_path / "in", tmp_path / "out"
    make_case(inputs, "c1", seed=1)
    make_case(inputs, "c2", seed=2)
    assert run_fast(inputs, output, tiny_weights) == 0
    captured = capsys.readouterr()
    assert "case  status   target" in captured.out and "case  status" not in captured.err
    assert "[written] c1 (case 1 of 2): t2f written" in captured.err
    assert "[written] c2 (case 2 of 2): t2f written" in captured.err
    assert run_fast(inputs, output, tiny_weights, "-q") == 0  # both skipped now
    captured = capsys.readouterr()
    assert "[skipped]" not in captured.err and "INFO" not in captured.err  # -q: warnings and errors only
    assert "skipped" in captured.out  # the table is a result, not a log line


def test_an_mlcube_parameters_file_with_hotfix_runs(tmp_path, tiny_weights, capsys):
    inputs = tmp_path / "in"
    make_case(inputs, "c1", seed=3)
    params = tmp_path / "params" / "parameters.yaml"
    params.parent.mkdir()
    params.write_text("hotfix: {}\nsampler: ddim\nsteps: 2\ndevice: cpu\n")
    argv = [f"--data_path={inputs}", f"--output_path={tmp_path / 'out'}", f"--weights={tiny_weights}"]
    assert main(["infer", *argv, f"--parameters_file={params}", "-v"]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["c1-t2f.nii.gz"]
    err = capsys.readouterr().err
    assert "'hotfix' is ignored" in err and "unknown key" not in err
    assert main(["hotfix", f"--parameters_file={params}"]) == 0
