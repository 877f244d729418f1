"""The installed package is complete: a wheel built from the project's files (through its sdist, so both
carry the same) holds the bundled weights and the baselines, and from a fresh virtual environment outside
the checkout, started in another folder, the demo, a run with the default weights, the linear baseline
and ``brasyn.infer_single`` without ``weights=`` all work."""

from __future__ import annotations

import hashlib
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from brasyn.commands.example import EXAMPLE_CASE
from tests.helpers import make_case

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ("manifest.json", "baselines.json", "README.md", "t1n.pt", "t1c.pt", "t2w.pt", "t2f.pt")
RUN = ["--sampler", "x0", "--device", "cpu", "--no-progress"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # nothing of the checkout may leak in: no PYTHONPATH, a working folder outside it
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BRASYN_WEIGHTS")}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _build_wheel(tmp_path: Path) -> Path:
    """The sdist of a clean copy of the project's files, then the wheel built from that sdist."""
    source, dist = tmp_path / "source", tmp_path / "dist"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "training")
    shutil.copytree(ROOT / "brasyn", source / "brasyn", ignore=ignore)
    shutil.copytree(ROOT / "weights", source / "weights", ignore=ignore)
    build = "from setuptools import build_meta; import sys; build_meta.build_sdist(sys.argv[1])"
    _run([sys.executable, "-c", build, str(dist)], cwd=source)
    (sdist,) = dist.glob("brasyn-*.tar.gz")
    wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    _run([*wheel, "--no-index", "-w", str(dist), str(sdist)], cwd=tmp_path)
    (built,) = dist.glob("brasyn-*.whl")
    return built


def _fresh_venv(tmp_path: Path) -> Path:
    """A venv without pip whose dependencies are this environment's site-packages, added by a .pth line
    (a plain path: the .pth files there, the editable install's among them, are not processed)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (purelib / "brasyn-test-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


@pytest.mark.slow
def test_the_installed_wheel_runs_the_demo_a_default_run_the_baseline_and_infer_single(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        carried = {n.rsplit("/", 1)[-1]: archive.read(n) for n in archive.namelist() if "/weights/demo/" in n}
    assert sorted(carried) == sorted(BUNDLED)
    assert all(hashlib.sha256(carried[n]).hexdigest() == _sha(ROOT / "weights" / n) for n in BUNDLED)

    venv = _fresh_venv(tmp_path)
    python, elsewhere = venv / "bin" / "python", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], cwd=elsewhere)
    where = "import brasyn, brasyn.weights.bundled as b; print(brasyn.__file__); print(b.BUNDLED_WEIGHTS)"
    package, weights = map(Path, _run([python, "-c", where], cwd=elsewhere).stdout.split())
    site_packages = venv.resolve() / "lib"
    assert package.is_relative_to(site_packages) and weights.is_relative_to(site_packages)
    assert weights.name == "demo" and (weights / "baselines.json").is_file()

    demo = _run([venv / "bin" / "brasyn", "demo", "--out", str(tmp_path / "demo"), *RUN], cwd=elsewhere)
    assert "writing a synthetic phantom instead" in demo.stderr and "not a brain" in demo.stderr
    assert "no real image to score against" in demo.stderr
    assert (tmp_path / "demo" / "output" / f"{EXAMPLE_CASE}-t2f.nii.gz").is_file()

    make_case(tmp_path / "in", "c1")
    brasyn = [venv / "bin" / "brasyn", "--input", str(tmp_path / "in")]
    default = _run([*brasyn, "--output", str(tmp_path / "out"), *RUN], cwd=elsewhere)
    assert f"weights {weights};" in default.stderr
    assert (tmp_path / "out" / "c1-t2f.nii.gz").is_file()
    _run([*brasyn, "--output", str(tmp_path / "linear"), "--method", "linear", *RUN], cwd=elsewhere)
    assert (tmp_path / "linear" / "c1-t2f.nii.gz").is_file()

    # the organiser's helpers are console scripts too
    listed = _run([venv / "bin" / "brasyn-weights", "list", str(weights)], cwd=elsewhere)
    assert listed.stdout.count("t1n.pt") == 1 and "t2f  t2f.pt" in listed.stdout
    assert "fit" in _run([venv / "bin" / "brasyn-baselines", "--help"], cwd=elsewhere).stdout

    case = tmp_path / "in" / "c1"
    single = (
        "import brasyn, sys; from pathlib import Path; c = Path(sys.argv[1]); "
        "print(brasyn.infer_single(t1n=c / 'c1-t1n.nii.gz', t1c=c / 'c1-t1c.nii.gz', "
        "t2w=c / 'c1-t2w.nii.gz', output_file=sys.argv[2], sampler='x0', device='cpu'))"
    )
    written = tmp_path / "single" / "c1-t2f.nii.gz"
    _run([python, "-c", single, str(case), str(written)], cwd=elsewhere)
    assert written.is_file()
