from __future__ import annotations

import logging
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    """A shell without job control starts a background command (``bash .ci/run &``) with SIGINT
    ignored, and every process the tests start would inherit that: the tests of Ctrl-C would see a run
    that cannot be stopped. Ctrl-C gets its usual meaning back for this process and its children."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (20 s or more on a 2-core CPU); .ci/run does",
    )
    parser.addoption(
        "--reverse-order",
        action="store_true",
        help="run the tests in reversed file order (with -p no:randomly): a check for order dependence",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--run-slow"):
        skip = pytest.mark.skip(reason="slow: add --run-slow (.ci/run runs every test)")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
    if config.getoption("--reverse-order"):
        items.reverse()


def _order(config: pytest.Config) -> str:
    if config.getoption("--reverse-order"):
        return "test order: reversed (--reverse-order)"
    seed = getattr(config.option, "randomly_seed", None)
    if config.pluginmanager.has_plugin("randomly") and isinstance(seed, int):
        return f"test order: shuffled; replay it with -p randomly --randomly-seed={seed}"
    return "test order: file order"


def pytest_collection_finish(session: pytest.Session) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(_order(session.config))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(_order(config))


@pytest.fixture(scope="session")
def golden() -> dict[str, Any]:
    """Numbers produced by the official cWDM code (see tests/fixtures/README.md)."""
    return torch.load(FIXTURES / "cwdm_reference_small.pt", weights_only=True)


@pytest.fixture(scope="session")
def golden_model(golden: dict[str, Any]) -> torch.nn.Module:
    from brasyn.model.unet import Denoiser, DenoiserConfig

    model = Denoiser.from_config(DenoiserConfig.from_dict(golden["config"]))
    model.load_state_dict(golden["state_dict"], strict=True)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Random ``tiny`` weights for all four targets (seed 0), made once per test run; tests that change a
    weights folder copy it first."""
    from brasyn.weights.store import init_random

    folder = tmp_path_factory.mktemp("tiny-weights") / "weights"
    init_random(folder, "tiny", seed=0)
    return folder


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
def _signal_handlers_restored():
    """A run stopped by a signal leaves SIGTERM and SIGINT ignored for the rest of its process (so the
    stop that has begun ends with its report); in this test process the next test gets them back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def _brasyn_logger_restored():
    """Each command sends brasyn's log to its own stderr handler and stops propagation (so a user's root
    logger does not print every line twice); restore the logger after every test, so that a test using
    ``caplog`` sees the log whatever ran before it."""
    logger = logging.getLogger("brasyn")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
