"""Test-wide setup: an isolated Prefect home, no telemetry, no real API key, shared fixtures."""

from __future__ import annotations

import gc
import os
import tempfile

import pytest

# Before anything imports prefect: its settings are read once, at import.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="promptgrid-test-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# The user cache of model schemas (promptgrid.models.records), never the real one in the home folder.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="promptgrid-test-cache-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("EACHLABS_API_KEY", None)
os.environ.pop("EACHLABS_API_BASE", None)
# `datasets` (which the export tests load with) must never reach the Hub, and caches in a temp folder.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="promptgrid-test-hf-")

pytest_plugins = ["tests.support.sandbox", "tests.support.s3"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(*packages): system packages the test needs (chromium, redis-server, cjk-fonts); skipped "
        "with the install command where missing, failed under PROMPTGRID_REQUIRE_SYSTEM=1 "
        "(tests/support/system.py)",
    )
    config.addinivalue_line(
        "markers",
        "slow: drives a real server or process for many seconds; run by `make test-all` (CI), "
        "not by `make test`",
    )


# Prefect's result store opens a sync API client it never closes (prefect/results.py): its socket is
# Prefect's, not ours. Collected at the end of the test that used Prefect, its warning is ignored there and
# never lands, by the timing of the garbage collector, on some later test of the same worker.
PREFECT_SOCKET = "ignore:Exception ignored in.*socket:pytest.PytestUnraisableExceptionWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "prefect_harness" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.filterwarnings(PREFECT_SOCKET))


@pytest.fixture(autouse=True)
def _reclaim_prefect_sockets(request: pytest.FixtureRequest):
    yield
    if "prefect_harness" in request.fixturenames:
        gc.collect()


def pytest_runtest_setup(item: pytest.Item) -> None:
    from tests.support.system import check_needs

    check_needs(item)


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (starting one costs seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
