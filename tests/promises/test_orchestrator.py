"""brasyn as an algorithm of the BraTS orchestrator (the ``brats`` package): the entry docs/orchestrator.md
gives, run by the orchestrator's own ``MissingMRI`` code on real cases, with only its Docker client
replaced by a stand-in runtime that starts the image's entry point from this checkout."""

from __future__ import annotations

import enum
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import pytest
import yaml

from brasyn.data.provenance import read_record
from tests.promises.container_runtime import FakeRuntime

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "orchestrator.md"

# The orchestrator hands a plain (2025-style) image no command and no environment, so it has no way to
# pass brasyn a setting: the fast sampler comes from the ENV of a test image built on brasyn's
# (the variables brasyn reads, see brasyn/commands/sources.py); the weights are the bundled demo ones.
TEST_IMAGE_ENV = {"BRASYN_SAMPLER": "x0", "BRASYN_DEVICE": "cpu"}


def documented_entry() -> tuple[str, dict]:
    """The ready ``missing_mri.yml`` entry of docs/orchestrator.md: its key and its value."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    entries = [yaml.safe_load(block) for block in blocks if "run_args:" in block]
    assert len(entries) == 1, "docs/orchestrator.md holds one missing_mri.yml entry"
    ((key, value),) = entries[0].items()
    return key, value


@pytest.fixture()
def orchestrator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any, FakeRuntime]]:
    """``(MissingMRI, algorithm member, runtime)``: the orchestrator's algorithms file with the documented
    entry added, and its Docker client answered by the stand-in runtime."""
    pytest.importorskip("brats", reason="the BraTS orchestrator (pip install brats==0.1.14) is absent")
    import brats.core.docker as brats_docker
    import brats.core.missing_mri_algorithms as brats_missing
    from brats.constants import MISSING_MRI_ALGORITHMS, Algorithms

    key, entry = documented_entry()
    algorithms = yaml.safe_load(Path(MISSING_MRI_ALGORITHMS).read_text())
    algorithms["algorithms"][key] = entry
    algorithms_file = tmp_path / "missing_mri.yml"
    algorithms_file.write_text(yaml.safe_dump(algorithms))
    monkeypatch.setattr(brats_missing, "MISSING_MRI_ALGORITHMS", algorithms_file)
    runtime = FakeRuntime(entry["run_args"]["docker_image"], tmp_path / "container-tmp", TEST_IMAGE_ENV)
    monkeypatch.setattr(brats_docker, "client", runtime)
    member = enum.Enum("Local", {"BRASYN": key}, type=Algorithms).BRASYN
    # the orchestrator's warnings (an all-zero output, an input of an unusual shape) and errors
    from loguru import logger

    logger.enable("brats")  # the package turns its own log off on import
    sink = logger.add(runtime.warnings.append, level="WARNING", format="{message}")
    yield brats_missing.MissingMRI, member, runtime
    logger.remove(sink)
    logger.disable("brats")


def _check_run(runtime: FakeRuntime, count: int) -> None:
    """What the orchestrator asked of the runtime, and what the container left in /output."""
    (run,) = runtime.runs
    assert runtime.warnings == []
    kwargs = run.kwargs
    assert {spec["bind"] for spec in kwargs["volumes"].values()} == {"/input", "/output"}
    assert all(spec["mode"] == "rw" for spec in kwargs["volumes"].values())
    assert not kwargs.get("command") and not kwargs.get("environment") and not kwargs.get("working_dir")
    assert kwargs["network_mode"] == "none" and kwargs["detach"] and kwargs["remove"]
    assert kwargs["user"] == f"{os.getuid()}:{os.getgid()}"  # no requires_root: the caller's own uid:gid
    assert kwargs["shm_size"] == "4gb"
    if shutil.which("nvidia-smi") is None:
        assert kwargs["device_requests"] == []  # cpu_compatible: run on the CPU rather than refused
    assert run.cwd == str(ROOT)  # the image's WORKDIR, /opt/brasyn
    assert run.returncode == 0
    # one NIfTI per case, nothing else: the orchestrator opens every file in /output with nib.load
    assert len(run.output_listing) == count
    assert all(name.endswith(".nii.gz") for name in run.output_listing), run.output_listing


def _case(shared_dir: Path, case: str) -> dict[str, Path]:
    folder = shared_dir / "data" / "real" / case
    return {p.name.split("-")[-1].split(".")[0]: p for p in folder.glob(f"{case}-*.nii.gz")}


def _assert_brasyn_output(path: Path, target: str, like: Path) -> None:
    record = read_record(path)
    assert record is not None, f"{path.name} carries no brasyn settings record"
    assert record["target"] == target and record["sampler"] == "x0"
    assert nib.load(path).shape == nib.load(like).shape


@pytest.mark.slow
def test_infer_single_through_the_orchestrator_returns_brasyns_synthesis(orchestrator, shared_dir, tmp_path):
    missing_mri, member, runtime = orchestrator
    files = _case(shared_dir, "BraTS-GLI-00001-000")
    out = tmp_path / "result" / "flair.nii.gz"
    missing_mri(algorithm=member).infer_single(
        output_file=out, t1c=files["t1c"], t1n=files["t1n"], t2w=files["t2w"]
    )
    _check_run(runtime, 1)
    (run,) = runtime.runs
    assert run.input_listing == [
        "BraTS-GLI-00000-000",
        *(f"BraTS-GLI-00000-000/BraTS-GLI-00000-000-{m}.nii.gz" for m in ("t1c", "t1n", "t2w")),
    ]
    assert run.output_listing == ["BraTS-GLI-00000-000-t2f.nii.gz"]
    _assert_brasyn_output(out, "t2f", files["t2f"])


@pytest.mark.slow
def test_infer_batch_through_the_orchestrator_names_each_output_after_its_case(
    orchestrator, shared_dir, tmp_path
):
    missing_mri, member, runtime = orchestrator
    data = tmp_path / "data"
    withheld = {"BraTS-GLI-00001-000": "t2f", "BraTS-MET-00110-000": "t1c"}
    names = {"BraTS-GLI-00001-000": "glioma", "BraTS-MET-00110-000": "metastasis"}
    for case, target in withheld.items():
        subject = data / names[case]
        subject.mkdir(parents=True)
        for contrast, path in _case(shared_dir, case).items():
            if contrast != target:
                shutil.copy(path, subject / f"{names[case]}-{contrast}.nii.gz")
    out = tmp_path / "out"
    missing_mri(algorithm=member).infer_batch(data_folder=data, output_folder=out)
    _check_run(runtime, 2)
    assert sorted(p.name for p in out.iterdir()) == ["glioma-t2f.nii.gz", "metastasis-t1c.nii.gz"]
    for case, target in withheld.items():
        _assert_brasyn_output(out / f"{names[case]}-{target}.nii.gz", target, _case(shared_dir, case)[target])


def test_the_documented_entry_is_a_plain_cpu_compatible_image_the_orchestrator_loads():
    pytest.importorskip("brats", reason="the BraTS orchestrator (pip install brats==0.1.14) is absent")
    from brats.utils.algorithm_config import AlgorithmList
    from dacite import from_dict

    key, entry = documented_entry()
    algorithm = from_dict(AlgorithmList, {"algorithms": {key: entry}}).algorithms[key]
    # the orchestrator runs entries up to 2024 as MLCubes with its own /mlcube_ioN order and command;
    # from 2025 on as a plain image that reads /input and writes /output, which is brasyn's entry point
    assert algorithm.meta.year >= 2025
    assert algorithm.run_args.cpu_compatible and not algorithm.run_args.requires_root
    assert algorithm.run_args.input_name_schema == "BraTS-GLI-{id:05d}-000"
    assert not algorithm.run_args.parameters_file and algorithm.additional_files is None
    image = algorithm.run_args.docker_image
    version = re.search(r'^version = "(.*)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert image == f"brasyn:{version}"


@pytest.mark.slow
def test_the_documented_python_runs_as_written(orchestrator, shared_dir, tmp_path, monkeypatch):
    from tests.promises.test_readme_python import _block

    _, code = _block("MissingMRI(algorithm=Brasyn.BRASYN)")
    files = _case(shared_dir, "BraTS-GLI-00001-000")
    for contrast in ("t1c", "t1n", "t2w"):  # the names the example uses, in the folder it runs in
        shutil.copy(files[contrast], tmp_path / f"{contrast}.nii.gz")
        (tmp_path / "cases" / "glioma").mkdir(parents=True, exist_ok=True)
        shutil.copy(files[contrast], tmp_path / "cases" / "glioma" / f"glioma-{contrast}.nii.gz")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/orchestrator.md", "exec"), {"__name__": "docs"})
    _assert_brasyn_output(tmp_path / "t2f.nii.gz", "t2f", files["t2f"])
    _assert_brasyn_output(tmp_path / "out" / "glioma-t2f.nii.gz", "t2f", files["t2f"])
