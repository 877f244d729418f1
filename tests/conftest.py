from __future__ import annotations

import logging
import shutil
import tempfile
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


@pytest.fixture()
def open_tmp() -> Path:
    """A scratch folder every uid may enter and read (pytest's own is root's alone), for runs that switch
    to the container's uid; removed afterwards, with what that uid wrote into it."""
    folder = Path(tempfile.mkdtemp(prefix="brasyn-open-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def _brasyn_logger_restored():
    """Each command sends brasyn's log to its own stderr handler and stops propagation (so a user's root
    logger does not print every line twice); restore the logger after every test, so that a test using
    ``caplog`` sees the log whatever ran before it."""
    logger = logging.getLogger("brasyn")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
