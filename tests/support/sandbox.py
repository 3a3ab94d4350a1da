"""Fixtures that start the sandbox API in-process: `sandbox` (time scale 100, default limits), a factory."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from promptgrid.sandbox.config import ManualClock
from promptgrid.sandbox.server import RunningSandbox, SandboxConfig, running_sandbox

# Fast enough that a prediction takes ~80 ms and a window 0.6 s, slow enough that a loopback round trip
# (~1 ms) stays small against both.
TEST_TIME_SCALE = 100.0


@pytest.fixture
def sandbox_factory() -> Iterator[Callable[..., RunningSandbox]]:
    """Start sandboxes with SandboxConfig overrides (and optionally `clock=`); all stop at teardown.

    `start(max_in_flight=2, error_rate=1.0)` -> RunningSandbox with `.url`, `.stats()`, `.reset()`.
    """
    with contextlib.ExitStack() as stack:

        def start(clock: Callable[[], float] | None = None, **overrides: Any) -> RunningSandbox:
            config = SandboxConfig(**{"time_scale": TEST_TIME_SCALE, **overrides})
            return stack.enter_context(running_sandbox(config, clock=clock))

        yield start


@pytest.fixture
def sandbox(sandbox_factory: Callable[..., RunningSandbox]) -> RunningSandbox:
    """A sandbox with the contract's limits (60 per 60 s, 10 in flight) at time scale 100."""
    return sandbox_factory()


@pytest.fixture
def manual_clock() -> ManualClock:
    """A clock to pass as `sandbox_factory(clock=...)`: time moves only when the test calls `advance`."""
    return ManualClock()
