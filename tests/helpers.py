"""Synthetic test folders and cases (their volumes: brasyn.data.phantom), made by the tests themselves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from brasyn.data.phantom import BRATS_AFFINE, phantom
from brasyn.model.unet import Denoiser, DenoiserConfig


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = BRATS_AFFINE, dtype=None) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    if dtype is not None:
        image.set_data_dtype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def make_case(
    folder: Path,
    case_id: str,
    contrasts=("t1n", "t1c", "t2w"),
    shape=(48, 56, 40),
    seed=0,
    affine: np.ndarray = BRATS_AFFINE,
    pattern="{case}-{m}.nii.gz",
) -> dict[str, Path]:
    """A case folder with the given contrasts as BraTS 2023-named phantoms (different scale each)."""
    paths = {}
    for i, m in enumerate(contrasts):
        data = phantom(shape, seed=seed + i, scale=200.0 * (i + 1))
        paths[m] = save_nifti(folder / case_id / pattern.format(case=case_id, m=m), data, affine)
    return paths


def tiny_training_cache(root: Path, seed_step: int, count: int = 2, shape=(32, 32, 32)) -> Path:
    """``count`` complete phantom cases (``case0`` ...) under ``root/cases``, prepared into ``root/cache``."""
    from brasyn.train.cache import prepare_cache
    from brasyn.train.training_data import find_training_cases

    for i in range(count):
        make_case(root / "cases", f"case{i}", ("t1n", "t1c", "t2w", "t2f"), seed=seed_step * i, shape=shape)
    folder = root / "cache"
    assert not prepare_cache(find_training_cases([root / "cases"]), folder, progress=False).errors
    return folder


def tiny_train_args(cache: Path, out: Path, steps: int, lr: str, *extra: str) -> list[str]:
    """``python -m brasyn.train`` arguments of a tiny t2f run on the CPU from ``cache``, 32³ patches, seed 3."""
    return [
        *("--cache", str(cache), "--target", "t2f", "--out", str(out), "--config", "tiny"),
        *("--steps", str(steps), "--lr", lr, "--device", "cpu", "--no-progress", "--workers", "0"),
        *("--patch", "32", "32", "32", "--seed", "3"),
        *extra,
    ]


TORCHRUN_TWO = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc_per_node",
    "2",
    "--standalone",  # a free port of its own: runs side by side never collide
]
"""Two processes on this machine under torchrun; the script or ``-m module`` and its arguments follow."""

CONTAINER_UID = 4242
"""The uid the container-like runs take: no passwd entry, and it owns no file here."""
CONTAINER_PREFIX = [
    "unshare",
    "--net",  # no network
    "setpriv",
    f"--reuid={CONTAINER_UID}",
    f"--regid={CONTAINER_UID}",
    "--clear-groups",
    # reading is let through everywhere (the interpreter here may live in root's private home); writing
    # is not: the process may write only where every user may
    "--inh-caps=+dac_read_search",
    "--ambient-caps=+dac_read_search",
    "env",
    "-u",
    "HOME",
]
WORLD_WRITABLE_OUTSIDE_TMP = ("/var/tmp", "/dev/shm")
"""Where a uid that owns nothing could still write, besides /tmp and the folders a test opens to it."""


def container_prefix() -> list[str] | None:
    """The command prefix that runs a process as the container does: a real uid with no passwd entry
    that owns nothing (so it may write only where every user may), with no network and no HOME; None where this process cannot switch uid (not root, or no
    unshare/setpriv)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return None
    probe = subprocess.run([*CONTAINER_PREFIX, "true"], capture_output=True, check=False)
    return CONTAINER_PREFIX if probe.returncode == 0 else None


ROOT_CONTAINER_PREFIX = [
    "unshare",
    "--net",  # no network
    "setpriv",
    # root as an image started without -u, less what would hide a mistake: it may read everywhere (the
    # interpreter here may live in root's private home) and change its uid, but not write where its uid
    # may not; and it keeps that reading after the switch (no_setuid_fixup), as the image's world-readable
    # files give it there
    "--bounding-set=-all,+setuid,+setgid,+dac_read_search",
    "--securebits=+no_setuid_fixup",
    "env",
    "-u",
    "HOME",
]


def root_container_prefix() -> list[str] | None:
    """The command prefix that runs a process as an image started as root (no ``-u``), with no network
    and no HOME; None where this process cannot (not root, or no unshare/setpriv)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None:
        return None
    probe = subprocess.run([*ROOT_CONTAINER_PREFIX, "true"], capture_output=True, check=False)
    return ROOT_CONTAINER_PREFIX if probe.returncode == 0 else None


def written_by_container_uid() -> list[str]:
    """Files the container uid owns in the world-writable places outside /tmp (there should be none)."""
    found = []
    for root in WORLD_WRITABLE_OUTSIDE_TMP:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                try:
                    if os.lstat(path).st_uid == CONTAINER_UID:
                        found.append(path)
                except OSError:
                    pass
    return found


class FirstCondition:
    """A predictor that returns its first condition as the 'synthetic' target: what comes out of the
    pipeline is then that input after the forward transform and its inverse, and can be checked voxel by
    voxel. Its intensity ratios are given (e.g. a weights folder's)."""

    def __init__(self, ratios) -> None:
        self.ratios = ratios
        self.device = torch.device("cpu")

    def predict(self, images, target, generator=None, progress=None):
        return images[:, :1].clone()

    def intensity_ratios(self, target):
        return self.ratios(target)

    def steps(self, target):
        return 0

    def describe(self):
        return "the first condition"

    def summary(self):
        return self.describe()

    def quality(self):
        return None

    def settings(self):
        return {"method": "first-condition"}

    def checkpoints(self):
        return None

    def output_settings(self, target, seed):
        return {"method": "first-condition"}


def linked_cache(source: Path, dest: Path, count: int) -> Path:
    """A cache of ``count`` entries made from the prepared entries in ``source``: each array a hard link to
    one of them (no disk space, no preparing), each JSON a copy naming its own case ``gen-NNNNN``."""
    import json
    import os

    metas = sorted(source.glob("*.json"))
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        meta = metas[i % len(metas)]
        record = json.loads(meta.read_text())
        record["id"] = name = f"gen-{i:05d}"
        os.link(meta.with_suffix(".npy"), dest / f"{name}.npy")
        (dest / f"{name}.json").write_text(json.dumps(record))
    return dest


DOCS_ROOT = Path(__file__).resolve().parents[1]


def documentation_pages() -> list[Path]:
    """README.md and every docs/*.md page: the documentation is split by reader, so what the README once
    held as one file is now spread over these pages, and a promise about the text may be on any of them."""
    return [DOCS_ROOT / "README.md", *sorted((DOCS_ROOT / "docs").glob("*.md"))]


def documentation_text() -> str:
    """The text of README.md and every docs/*.md page, joined."""
    return "\n".join(page.read_text() for page in documentation_pages())


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str = "1m", read_only: bool = False) -> Iterator[Path]:
    """A real small (or read-only) file system at ``folder`` for the test's duration: the disk-full and
    read-only faults as the kernel gives them, which root (the suite's usual user) meets too, where chmod
    stops no one. Skips the test where mounting is not permitted."""
    import subprocess

    import pytest

    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    if os.geteuid() != 0:
        pytest.skip("mounting a small or read-only file system needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Fill the file system of ``folder`` (a small tmpfs) to the last byte."""
    import errno

    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)


STACKS_ON_ABORT = {"PYTHONFAULTHANDLER": "1"}
"""In a child's environment: SIGABRT makes it print every thread's Python stack before it dies."""


def communicate_or_show_stacks(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """``proc.communicate(timeout)``; a child still running after ``timeout`` (started with
    :data:`STACKS_ON_ABORT`) is aborted and the test fails with where each of its threads was."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"still running {timeout:.0f} s after the stop; its stacks:\n{err}") from None


def random_denoiser(config: DenoiserConfig, seed: int = 0) -> Denoiser:
    """A denoiser of ``config`` with random weights: a fresh one outputs zeros, so every layer gets work."""
    model = Denoiser.from_config(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05, generator=gen)
    return model
