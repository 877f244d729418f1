"""The documentation's Python code runs as written: its blocks are taken from README.md and docs/*.md and
executed, with only the work folder moved under the test's own and, for speed, the one-case example's sampler
set to one step."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import brasyn
from brasyn.common.errors import BrasynError, CaseError, UsageError
from tests.helpers import documentation_pages

ROOT = Path(__file__).resolve().parents[2]
FAST = 'sampler="x0", steps=1, device="cpu"'


def _python_blocks() -> list[tuple[str, str]]:
    """(page name, code) of every python block of README.md and docs/*.md."""
    return [
        (page.name, block)
        for page in documentation_pages()
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    ]


def _block(needle: str) -> tuple[str, str]:
    found = [(page, b) for page, b in _python_blocks() if needle in b]
    assert len(found) == 1, f"the documentation has {len(found)} python blocks with {needle!r}"
    return found[0]


def _run(page: str, code: str, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(ROOT)  # the documentation's paths ("weights") are relative to the checkout
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, page, "exec"), namespace)
    return namespace


def test_readme_has_no_python_that_cannot_run():
    # the blocks this file runs are all there are: a new one must be added to the tests below
    blocks = [b for _, b in _python_blocks()]
    assert len(blocks) == 3  # the third, docs/orchestrator.md's, runs in tests/promises/test_orchestrator.py
    assert not any("torch.load(" in b for b in blocks)


@pytest.mark.slow
def test_readme_one_case_example_writes_the_missing_contrast(tmp_path, monkeypatch):
    page, code = _block("brasyn.infer_single(")
    assert 'sampler="dpm++2m", steps=10, device="auto"' in code
    code = code.replace('sampler="dpm++2m", steps=10, device="auto"', FAST)
    code = code.replace('Path("/tmp/brasyn-python")', f"Path({str(tmp_path / 'py')!r})")
    namespace = _run(page, code, monkeypatch)
    written = namespace["written"]
    assert written == tmp_path / "py" / "output" / "BraTS-GLI-00001-000-t2f.nii.gz"
    out = nib.load(written)
    reference = nib.load(tmp_path / "py" / "input" / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz")
    assert out.shape == reference.shape
    np.testing.assert_array_equal(out.affine, reference.affine)
    data = np.asarray(out.dataobj)
    assert data.dtype == np.float32 and np.count_nonzero(data) > 1000
    assert sorted(p.name for p in written.parent.iterdir()) == [written.name]  # nothing else, nothing partial


def test_readme_network_example_samples_a_volume(monkeypatch):
    namespace = _run(*_block("brasyn.load_denoiser("), monkeypatch)
    synthetic = namespace["synthetic"]
    assert synthetic.shape == (1, 1, 64, 64, 64)
    assert torch.isfinite(synthetic).all()
    assert not namespace["model"].training


def test_infer_single_refuses_two_inputs_and_a_missing_file(tmp_path):
    with pytest.raises(UsageError, match="takes three of"):
        brasyn.infer_single(
            t1n=tmp_path / "a.nii.gz", t2w=tmp_path / "b.nii.gz", output_file=tmp_path / "o.nii.gz"
        )
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UsageError, match=r"the t1c input .*missing.nii.gz does not exist"):
        brasyn.infer_single(
            t1n=tmp_path / "a.nii.gz",
            t1c=tmp_path / "missing.nii.gz",
            t2w=tmp_path / "b.nii.gz",
            output_file=tmp_path / "o-t2f.nii.gz",
        )


def test_infer_single_reports_a_broken_case_and_leaves_nothing(tmp_path):
    inputs = {}
    for m in ("t1n", "t1c", "t2w"):
        inputs[m] = tmp_path / f"x-{m}.nii.gz"
        inputs[m].write_bytes(b"not an image")
    out = tmp_path / "out" / "x-t2f.nii.gz"
    with pytest.raises(CaseError) as caught:
        brasyn.infer_single(**inputs, output_file=out, method="linear", device="cpu")
    assert "x-t1n.nii.gz" in str(caught.value) or "x-t1c.nii.gz" in str(caught.value)
    assert list(out.parent.iterdir()) == []


def test_load_denoiser_names_what_is_missing(tmp_path):
    model = brasyn.load_denoiser(ROOT / "weights" / "manifest.json", "flair")
    assert not model.training
    with pytest.raises(BrasynError, match="unknown contrast"):
        brasyn.load_denoiser(ROOT / "weights", "pd")
