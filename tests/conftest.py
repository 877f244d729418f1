from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    """Numbers produced by the official cWDM code (see tests/fixtures/README.md)."""
    return torch.load(FIXTURES / "cwdm_reference_small.pt", weights_only=True)


@pytest.fixture(scope="session")
def golden_model(golden: dict[str, Any]) -> torch.nn.Module:
    from brasyn.unet import Denoiser, DenoiserConfig

    model = Denoiser.from_config(DenoiserConfig.from_dict(golden["config"]))
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"the shared reference folder {SHARED} is absent (present beside the project in CI)")
    return SHARED
