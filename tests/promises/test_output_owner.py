"""The container writes as the owner of OUT, whoever starts it: simulated without Docker (an image started
as root, and one started with -u), with no HOME, no network and a read-only input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CONTAINER_UID, container_prefix, make_case, root_container_prefix

ROOT = Path(__file__).resolve().parents[2]
CASE = "BraTS-GLI-00001-000"
OUTPUT = f"{CASE}-t2f.nii.gz"
FAST = ["--sampler", "ddim", "--steps", "2", "--device", "cpu", "--no-progress"]
SWITCHED = "started as root: running as uid"


def _digest(folder: Path) -> dict[str, tuple[str, int, int]]:
    return {
        str(p.relative_to(folder)): (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
            p.stat().st_mode,
            p.stat().st_uid,
        )
        for p in sorted(folder.rglob("*"))
    }


def _read_only_input(open_tmp: Path) -> Path:
    inputs = open_tmp / "in"
    make_case(inputs, CASE, ("t1n", "t1c", "t2w"), seed=1)
    for path in [inputs, *inputs.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return inputs


def _run(
    prefix: list[str], form: str, inputs: Path, output: Path, weights: Path
) -> subprocess.CompletedProcess:
    """The entrypoint in one of the container forms, with nothing inherited but PATH (so no HOME)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    entry = [sys.executable, str(ROOT / "entrypoint.py")]
    if form == "no-argument":  # /input and /output, here through the variables that stand for them
        env |= {"BRASYN_INPUT": str(inputs), "BRASYN_OUTPUT": str(output), "BRASYN_WEIGHTS": str(weights)}
        env |= {"BRASYN_SAMPLER": "ddim", "BRASYN_STEPS": "2", "BRASYN_DEVICE": "cpu"}
        args: list[str] = []
    elif form == "flags":
        args = ["--input", str(inputs), "--output", str(output), "--weights", str(weights), *FAST]
    else:  # MLCube's infer, with its parameters file
        parameters = inputs.parent / "parameters.yaml"
        parameters.write_text("sampler: ddim\nsteps: 2\ndevice: cpu\n")
        parameters.chmod(0o444)
        args = ["infer", f"--data_path={inputs}", f"--output_path={output}", f"--weights={weights}"]
        args.append(f"--parameters_file={parameters}")
    return subprocess.run(
        [*prefix, *entry, *args], env=env, cwd="/", capture_output=True, text=True, timeout=300, check=False
    )


def _prefix(make) -> list[str]:
    prefix = make()
    if prefix is None:
        pytest.skip("switching to another uid (root with unshare and setpriv) is not possible here")
    return prefix


def _open_weights(open_tmp: Path, tiny_weights: Path) -> Path:
    import shutil

    weights = open_tmp / "w"
    shutil.copytree(tiny_weights, weights)
    for path in [weights, *weights.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    return weights


@pytest.mark.parametrize("form", ["no-argument", "flags", "mlcube"])
def test_a_root_start_writes_as_the_owner_of_the_output_folder(open_tmp, tiny_weights, form):
    prefix = _prefix(root_container_prefix)
    inputs, output = _read_only_input(open_tmp), open_tmp / "out"
    output.mkdir()
    os.chown(output, CONTAINER_UID, CONTAINER_UID + 1)  # OUT as the host's user made it (mode 755)
    weights = _open_weights(open_tmp, tiny_weights)
    before = _digest(inputs)
    proc = _run(prefix, form, inputs, output, weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{SWITCHED} {CONTAINER_UID}, gid {CONTAINER_UID + 1}" in proc.stderr
    written = list(output.iterdir())
    assert [p.name for p in written] == [OUTPUT]
    assert all((p.stat().st_uid, p.stat().st_gid) == (CONTAINER_UID, CONTAINER_UID + 1) for p in written)
    assert _digest(inputs) == before


def test_a_root_start_with_a_root_owned_output_folder_writes_as_root(open_tmp, tiny_weights):
    prefix = _prefix(root_container_prefix)
    inputs, output = _read_only_input(open_tmp), open_tmp / "out"
    output.mkdir()  # root's, as Docker makes a missing host path
    weights = _open_weights(open_tmp, tiny_weights)
    before = _digest(inputs)
    proc = _run(prefix, "flags", inputs, output, weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SWITCHED not in proc.stderr
    assert [(p.name, p.stat().st_uid) for p in output.iterdir()] == [(OUTPUT, 0)]
    assert _digest(inputs) == before


def test_a_start_with_u_runs_as_given_into_a_writable_folder(open_tmp, tiny_weights):
    prefix = _prefix(container_prefix)
    inputs, output = _read_only_input(open_tmp), open_tmp / "out"
    output.mkdir()
    os.chown(output, CONTAINER_UID, CONTAINER_UID)  # docker run -u 4242:4242 into OUT of that user
    weights = _open_weights(open_tmp, tiny_weights)
    before = _digest(inputs)
    proc = _run(prefix, "no-argument", inputs, output, weights)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SWITCHED not in proc.stderr
    assert [(p.name, p.stat().st_uid) for p in output.iterdir()] == [(OUTPUT, CONTAINER_UID)]
    assert _digest(inputs) == before


def test_a_start_with_u_into_a_folder_it_cannot_write_stops_before_any_case(open_tmp, tiny_weights):
    prefix = _prefix(container_prefix)
    inputs, output = _read_only_input(open_tmp), open_tmp / "out"
    output.mkdir()  # root's, mode 755: not this uid's to write
    weights = _open_weights(open_tmp, tiny_weights)
    proc = _run(prefix, "no-argument", inputs, output, weights)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"the output folder {output} is not writable by this user (uid {CONTAINER_UID})" in proc.stderr
    assert "mount it writable or choose another folder" in proc.stderr
    assert list(output.iterdir()) == []
