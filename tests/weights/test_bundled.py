"""Where the bundled weights are found: the data package where it is importable (an installed wheel),
else the ``weights/`` folder beside the package (a checkout, the container image)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import brasyn.weights.bundled as bundled

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def data_package(tmp_path, monkeypatch) -> Path:
    """An importable stand-in for the data package, empty: the test puts files in it."""
    package = tmp_path / "brasyn_bundled_stand_in"
    package.mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(bundled, "BUNDLED_PACKAGE", package.name)
    yield package
    sys.modules.pop(package.name, None)


def test_in_a_checkout_the_bundled_weights_are_the_top_level_folder():
    assert (ROOT / "weights").resolve() == bundled.BUNDLED_WEIGHTS
    assert (bundled.BUNDLED_WEIGHTS / "manifest.json").is_file()
    assert (bundled.BUNDLED_WEIGHTS / "baselines.json").is_file()


def test_an_importable_data_package_with_a_manifest_is_preferred(data_package):
    (data_package / "manifest.json").write_text("{}")
    assert bundled.find_bundled_weights() == data_package.resolve()


def test_a_data_package_without_a_manifest_is_passed_over(data_package):
    assert bundled.find_bundled_weights() == bundled.CHECKOUT_WEIGHTS


def test_without_the_data_package_the_folder_beside_the_package_is_used(monkeypatch):
    monkeypatch.setattr(bundled, "BUNDLED_PACKAGE", "brasyn.weights.no_such_package")
    assert bundled.find_bundled_weights() == bundled.CHECKOUT_WEIGHTS == ROOT / "weights"
