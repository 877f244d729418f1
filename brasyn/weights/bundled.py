"""The weights that come with brasyn: the demo checkpoints and the baselines' numbers.

They live in the project's top-level ``weights/`` folder (the image's ``/opt/brasyn/weights``, where a
build may bake other weights in), and a wheel carries that folder as the data package
:data:`BUNDLED_PACKAGE` (``setup.py`` maps it), so one name finds them wherever brasyn runs:

* an installed wheel or sdist: the package data in site-packages;
* an editable install: setuptools maps the package onto the checkout's ``weights/``;
* a checkout or the container image, run without installing (``entrypoint.py``): there is no such
  package, and the folder beside the ``brasyn`` package is the one.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

__all__ = ["BUNDLED_PACKAGE", "BUNDLED_WEIGHTS", "find_bundled_weights", "holds_demo_weights"]

BUNDLED_PACKAGE = "brasyn.weights.demo"
CHECKOUT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"


def find_bundled_weights() -> Path:
    """The bundled weights folder: the package data of :data:`BUNDLED_PACKAGE` where it is importable and
    holds a manifest, else the ``weights/`` folder beside the ``brasyn`` package."""
    try:
        manifest = resources.files(BUNDLED_PACKAGE) / "manifest.json"
    except ModuleNotFoundError:
        return CHECKOUT_WEIGHTS
    # the weights are loaded by path (torch.load, sha256): only package data on disk will do, which is
    # what pip installs; a zipped brasyn falls back to the folder beside it
    if isinstance(manifest, Path) and manifest.is_file():
        return manifest.parent.resolve()
    return CHECKOUT_WEIGHTS


BUNDLED_WEIGHTS = find_bundled_weights()


def holds_demo_weights(folder: Path) -> bool:
    """Whether the manifest of ``folder`` (a weights folder, or its manifest) lists demo-quality
    checkpoints. Read as plain JSON and quietly False when unreadable: this only decides a warning, and the
    run itself reports a broken folder properly."""
    manifest = folder if folder.name == "manifest.json" else folder / "manifest.json"
    if folder.is_file() and folder.name != "manifest.json":
        manifest = folder.parent / "manifest.json"  # --weights naming one checkpoint
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["checkpoints"].values()
        return any(entry["provenance"].get("quality") == "demo" for entry in entries)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
