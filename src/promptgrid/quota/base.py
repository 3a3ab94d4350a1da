"""What every request budget offers the engine, and the quota it keeps: requests per window, slots in flight.

Two budgets implement it: `promptgrid.quota.local.LocalBudget` for one process and
`promptgrid.quota.shared.RedisBudget` for every worker sharing one key through Redis.

A quota without a request-rate cap (`Limits.auto`) admits every request at once, pauses aside; when the API
shows that it limits requests after all, the engine tells the budget the cap it inferred (`adopt`), and the
budget keeps to it from then on, counting the requests already answered (see promptgrid.quota.adaptive).
"""

from __future__ import annotations

from collections.abc import Sequence
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

    async def on_throttled(self, retry_after_s: float | None, kind: str) -> None:
        """A 429 about the request rate met a request of `kind`: pause for `retry_after_s` (else a backoff).

        One on a create pauses creates only, unless polls are known to count toward the cap; any other
        pauses every kind (`pauses_polls`).
        """
        ...

    async def take_slot(self) -> str: ...

    async def release_slot(self, token: str) -> None: ...

    def adopt(self, limits: Limits, answered: Sequence[float] = ()) -> None:
        """Keep to `limits` from now on; `answered` are when requests they count were answered so far."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """The quota of one key: `requests` per trailing `window_s`, `max_in_flight` predictions at once.

    `requests` None is no request-rate cap (the spec's `rate_limit: auto` until the API shows one); polls
    count toward a cap unless `polls_count` is False.
    """

    requests: int | None = RATE_LIMIT_REQUESTS
    window_s: float = RATE_LIMIT_WINDOW_S
    max_in_flight: int = MAX_CONCURRENT
    polls_count: bool = True

    def __post_init__(self) -> None:
        if (self.requests is not None and self.requests < 1) or self.window_s <= 0 or self.max_in_flight < 1:
            raise ValueError("Limits need requests >= 1 (or None), window_s > 0 and max_in_flight >= 1")

    @classmethod
    def auto(cls, max_in_flight: int = MAX_CONCURRENT) -> Limits:
        """No request-rate cap until the API shows one; `max_in_flight` always holds."""
        return cls(requests=None, max_in_flight=max_in_flight)

    @property
    def capped(self) -> bool:
        """Whether requests are capped per window."""
        return self.requests is not None

    @property
    def polls_free(self) -> bool:
        """Whether polls are free of any request cap (none is known, or polls do not count toward it)."""
        return self.requests is None or not self.polls_count

    def counts(self, kind: str) -> bool:
        """Whether a request of `kind` counts toward the cap (a cap nobody knows yet counts nothing)."""
        return self.requests is not None and (kind != "poll" or self.polls_count)

    @property
    def floor_interval_s(self) -> float:
        """The average spacing of requests at the allowed rate (0 without a cap)."""
        return 0.0 if self.requests is None else self.window_s / self.requests

    def describe(self) -> str:
        if self.requests is None:
            return f"no request-rate cap, {self.max_in_flight} in flight"
        polls = "polls count" if self.polls_count else "polls free"
        return f"{self.requests} requests per {self.window_s:.3g} s ({polls}), {self.max_in_flight} in flight"


def pauses_polls(limits: Limits, kind: str) -> bool:
    """Whether a 429 on a request of `kind` pauses polls too, not only creates: it does unless it met a
    create while polls are not known to count (no cap known, or polls free of it)."""
    return kind != "create" or limits.counts("poll")


@dataclass(frozen=True)
class BudgetStats:
    """A snapshot for progress displays and benchmarks."""

    requests: dict[str, int]
    throttled: int
    in_flight: int
    waiting_requests: int
    waiting_slots: int
    paused_for_s: float
