"""What every request budget offers the engine, and the quota it keeps: requests per window, slots in flight.

Two budgets implement it: `promptgrid.tasks.quota.local.LocalBudget` for one process and
`promptgrid.tasks.quota.shared.RedisBudget` for every worker sharing one key through Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from promptgrid.defaults import MAX_CONCURRENT, RATE_LIMIT_REQUESTS, RATE_LIMIT_WINDOW_S

REQUEST_KINDS = ("create", "poll", "cancel")


class Receipt(Protocol):
    """One admitted request; the engine settles it once the request's answer (or failure) is in."""

    def settle(self) -> None: ...


class Budget(Protocol):
    """What the engine needs from a budget; LocalBudget serves one process, RedisBudget many.

    `take_request` may return a receipt with a `settle()` method (LocalBudget does): the engine settles it
    when the request's answer is in. A budget returning None dates requests at admission.
    """

    async def take_request(self, kind: str) -> Receipt | None: ...

    async def on_throttled(self, retry_after_s: float | None) -> None: ...

    async def take_slot(self) -> str: ...

    async def release_slot(self, token: str) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """The quota of one key: `requests` per trailing `window_s`, `max_in_flight` predictions at once."""

    requests: int = RATE_LIMIT_REQUESTS
    window_s: float = RATE_LIMIT_WINDOW_S
    max_in_flight: int = MAX_CONCURRENT
    polls_count: bool = True

    def __post_init__(self) -> None:
        if self.requests < 1 or self.window_s <= 0 or self.max_in_flight < 1:
            raise ValueError("Limits need requests >= 1, window_s > 0 and max_in_flight >= 1")

    @property
    def floor_interval_s(self) -> float:
        """The average spacing of requests at the allowed rate."""
        return self.window_s / self.requests


@dataclass(frozen=True)
class BudgetStats:
    """A snapshot for progress displays and benchmarks."""

    requests: dict[str, int]
    throttled: int
    in_flight: int
    waiting_requests: int
    waiting_slots: int
    paused_for_s: float
