"""The image as Apptainer / Singularity runs it (docs/container.md): a read-only image tree, a uid with no
passwd entry and no writable home, read-only /tmp, /var/tmp and /dev/shm, TMPDIR the one writable scratch
place beside OUT, and a working directory other than the image's. Reproduced in a private mount namespace
with the checkout's files copied into the tree the image holds."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CONTAINER_UID, container_prefix, make_case, written_by_container_uid
from tests.promises.container_runtime import dockerfile_config

ROOT = Path(__file__).resolve().parents[2]
CASES = ("case-a", "case-b")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _image_tree(folder: Path) -> Path:
    """What the image holds under /opt/brasyn: the package, the entry point and the weights."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "training")
    shutil.copytree(ROOT / "brasyn", folder / "brasyn", ignore=ignore)
    shutil.copytree(ROOT / "weights", folder / "weights", ignore=ignore)
    shutil.copy(ROOT / "entrypoint.py", folder / "entrypoint.py")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # chmod -R a-w, as the SIF's files cannot be written
    return folder


def _can_make_mount_namespace() -> bool:
    probe = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "ro",
            "tmpfs",
            "/mnt",
        ],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.parametrize("home", ["unset", "read-only"])
def test_entrypoint_writes_every_case_with_only_out_and_tmpdir_writable(open_tmp, home):
    prefix = container_prefix()
    if prefix is None or shutil.which("unshare") is None or not _can_make_mount_namespace():
        pytest.skip(
            "needs root with unshare, setpriv and mount namespaces (a uid switch and read-only mounts)"
        )
    _image_tree(open_tmp / "image")
    for i, case in enumerate(CASES):
        make_case(open_tmp / "in", case, ("t1n", "t1c", "t2w"), seed=3 * i)
    (open_tmp / "home").mkdir()
    (open_tmp / "venv").mkdir()
    for folder in ("out", "scratch"):
        (open_tmp / folder).mkdir()
        (open_tmp / folder).chmod(0o777)  # host folders bound writable for the run's uid
    before = _digest(open_tmp / "in")
    # the image's ENV as Apptainer keeps it (its caches under /tmp, read-only here); HOME is Apptainer's own
    image_env, _ = dockerfile_config()
    env = {k: v for k, v in image_env.items() if k not in ("HOME", "PATH", "VIRTUAL_ENV")}
    env |= {"PATH": "/usr/bin:/bin", "TMPDIR": "/mnt/scratch", "BRASYN_SAMPLER": "x0", "BRASYN_DEVICE": "cpu"}
    if home == "read-only":
        env["HOME"] = "/mnt/home"
    # mounts in a namespace of this run alone: the scratch folder seen at /mnt, then read-only file systems
    # over /tmp, /var/tmp and /dev/shm, and read-only binds of the image tree, the input and the home
    setup = " && ".join(
        [
            f"mount --bind {open_tmp} /mnt",
            # this Python's environment, seen at /mnt/venv: it may lie under a folder masked below
            f"mount --bind {sys.prefix} /mnt/venv",
            *(
                f"mount --bind /mnt/{d} /mnt/{d} && mount -o remount,bind,ro /mnt/{d}"
                for d in ("image", "in", "home")
            ),
            *(f"mount -t tmpfs -o ro,size=1m tmpfs {d}" for d in ("/tmp", "/var/tmp", "/dev/shm")),
        ]
    )
    # the uid switch of the container prefix, without its own network namespace and HOME handling
    python = f"/mnt/venv/{Path(sys.executable).relative_to(sys.prefix)}"
    run = [*prefix[prefix.index("setpriv") : prefix.index("env")], python, "/mnt/image/entrypoint.py"]
    run += ["--input", "/mnt/in", "--output", "/mnt/out"]
    command = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--net",
        "sh",
        "-c",
        f'{setup} && exec "$@"',
        "sh",
        *run,
    ]
    proc = subprocess.run(command, env=env, cwd="/", capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (open_tmp / "out").iterdir()) == sorted(f"{c}-t2f.nii.gz" for c in CASES)
    assert _digest(open_tmp / "in") == before
    assert all(p.stat().st_uid == CONTAINER_UID for p in (open_tmp / "out").iterdir())
    assert written_by_container_uid() == []
