"""The weights that come with brasyn: the demo checkpoints and the baselines' numbers in the project's
``weights/`` folder (the image's ``/opt/brasyn/weights``), used where no other folder is named."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BUNDLED_WEIGHTS"]

BUNDLED_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
