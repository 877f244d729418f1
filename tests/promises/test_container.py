"""The container's situation, reproduced without Docker: MLCube's command line, an unknown uid with no
home and no network, a read-only input, and the container files themselves."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brasyn.commands.cli import main
from brasyn.commands.options import MLCUBE_PARAMETERS, read_parameters
from brasyn.weights.store import init_random
from tests.helpers import container_prefix, documentation_text, make_case

ROOT = Path(__file__).resolve().parents[2]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _mlcube_command(workspace: Path) -> tuple[list[str], dict[str, Path]]:
    """The task arguments MLCube generates for `infer` and the host folder behind each /mlcube_ioN, made
    by the mlcube package's own configuration and mount code (installed by .ci/run)."""
    pytest.importorskip("mlcube", reason="the mlcube package is not installed (.ci/run installs it)")
    from mlcube.config import MLCubeConfig
    from mlcube.shell import Shell
    from mlcube_docker.docker_run import DockerRun

    cfg = MLCubeConfig.create_mlcube_config(
        str(ROOT / "mlcube" / "mlcube.yaml"),
        runner_config=DockerRun.CONFIG.DEFAULT,
        runner_cls=DockerRun,
        workspace=str(workspace),
    )
    mounts, args, _ = Shell.generate_mounts_and_args(cfg, "infer", make_dirs=True)
    return args, {container: Path(host) for host, container in mounts.items()}


def test_mlcube_configuration_has_what_mlcube_and_medperf_need():
    config = yaml.safe_load((ROOT / "mlcube" / "mlcube.yaml").read_text())
    assert config["name"] and config["docker"]["image"]
    assert config["docker"]["gpu_args"] == "--gpus=all"
    assert (ROOT / "mlcube" / config["docker"]["build_context"] / config["docker"]["build_file"]).is_file()
    params = config["tasks"]["infer"]["parameters"]
    assert list(params["inputs"]) == ["data_path", "parameters_file", "weights"]
    assert list(params["outputs"]) == ["output_path"]
    # the shipped parameters file passes the same checks as a run's (known keys, valid values)
    shipped = ROOT / "mlcube" / "workspace" / "parameters.yaml"
    assert set(read_parameters(shipped, MLCUBE_PARAMETERS)) == set(yaml.safe_load(shipped.read_text()))


def test_the_exact_mlcube_command_line_runs_the_entrypoint(tmp_path):
    workspace = tmp_path / "workspace"
    shutil.copytree(ROOT / "mlcube" / "workspace", workspace)
    make_case(workspace / "data", "BraTS-GLI-00042-000", ("t1n", "t1c", "t2f"), seed=2)
    (workspace / "parameters.yaml").write_text("sampler: ddim\nsteps: 2\nseed: 42\ndevice: cpu\n")
    init_random(workspace / "weights", "tiny", seed=0)
    args, mounts = _mlcube_command(workspace)
    assert args == [
        "infer",
        "--data_path=/mlcube_io0",
        "--parameters_file=/mlcube_io1/parameters.yaml",
        "--weights=/mlcube_io2",
        "--output_path=/mlcube_io3",
    ]
    # inside the container each /mlcube_ioN is the host folder mounted there
    host_args = [args[0]]
    for arg in args[1:]:
        key, value = arg.split("=", 1)
        mount = value.split("/")[1]
        host_args.append(f"{key}={mounts['/' + mount]}{value[len(mount) + 1 :]}")
    assert main(host_args) == 0
    assert [p.name for p in (workspace / "predictions").iterdir()] == ["BraTS-GLI-00042-000-t2w.nii.gz"]


def test_dockerfile_starts_the_entrypoint_as_root_that_becomes_the_output_owner_with_caches_in_tmp():
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "/opt/brasyn/entrypoint.py"]' in text
    # no USER: root at the start, so the entrypoint can become the owner of /output (test_output_owner)
    assert not [line for line in text.splitlines() if line.split()[:1] == ["USER"]]
    for var in ("HOME=/tmp", "XDG_CACHE_HOME=/tmp", "TORCH_HOME=/tmp", "MPLCONFIGDIR=/tmp"):
        assert var in text, var
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"tests", ".git", ".venv", "weights/training"} <= set(ignored)


def test_dockerfile_bakes_the_weights_folder_its_documented_build_argument_names():
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    assert "ARG WEIGHTS=weights" in lines
    assert "COPY ${WEIGHTS} ./weights" in lines  # the folder the image's default weights are read from
    assert not any(line.startswith("COPY weights") for line in lines)  # no second, fixed copy
    documented = [line for line in lines if line.startswith("#") and "--build-arg WEIGHTS=" in line]
    assert documented and "import-official" in "\n".join(lines[: lines.index(documented[0])])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "official-weights" not in ignored  # the documented folder reaches the build
    assert "docker build --build-arg WEIGHTS=official-weights" in documentation_text()


def test_a_run_with_the_demo_weights_says_so_in_capitals_on_its_first_line(tmp_path, tiny_weights, capsys):
    empty = tmp_path / "in"
    empty.mkdir()
    # an image built without --build-arg WEIGHTS runs on the bundled demo model: the first line says so
    assert main(["--input", str(empty), "--output", str(tmp_path / "out")]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert "WARNING DEMO WEIGHTS: " in first and "NOT FIT FOR A CHALLENGE SUBMISSION" in first
    assert "fetch-official" in first and "--build-arg WEIGHTS=DIR" in first
    # real (here: random) weights, and the baselines, which use no denoiser: no such line
    for flags in (["--weights", str(tiny_weights)], ["--method", "linear"]):
        main(["--input", str(empty), "--output", str(tmp_path / "out"), *flags])
        assert "DEMO WEIGHTS" not in capsys.readouterr().err


@pytest.mark.slow
def test_entrypoint_on_a_real_case_as_the_container_runs_it(shared_dir, open_tmp):
    prefix = container_prefix()
    if prefix is None:
        pytest.skip("switching to another uid (root with unshare and setpriv) is not possible here")
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import os, pwd; pwd.getpwuid(os.getuid())"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode != 0 and "getpwuid" in probe.stderr  # no passwd entry, as in the container
    case = "BraTS-GLI-00001-000"
    inputs = open_tmp / "input"
    (inputs / case).mkdir(parents=True)
    for path in (shared_dir / "data" / "real" / case).iterdir():
        if not path.name.endswith("-t1c.nii.gz"):
            shutil.copy(path, inputs / case / path.name)
    for path in [inputs, *inputs.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    output = open_tmp / "output"
    output.mkdir()
    output.chmod(0o777)  # as a host folder mounted writable for the container's uid
    weights = open_tmp / "weights"
    init_random(weights, "tiny", seed=0)
    for path in [weights, *weights.iterdir()]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    before = _digest(inputs)
    env = {"PATH": "/usr/bin:/bin", "BRASYN_WEIGHTS": str(weights)}
    proc = subprocess.run(
        [
            *prefix,
            sys.executable,
            str(ROOT / "entrypoint.py"),
            "--input",
            str(inputs),
            "--output",
            str(output),
            "--sampler",
            "ddim",
            "--steps",
            "2",
        ],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in output.iterdir()] == [f"{case}-t1c.nii.gz"]
    assert _digest(inputs) == before
    import torch

    if not torch.cuda.is_available():
        assert "no usable GPU" in proc.stderr  # said, not crashed
