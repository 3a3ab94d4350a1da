"""The request budget every API call in a process goes through: a sliding log of sends, slots, pauses.

Why a sliding log and not a token bucket: a bucket holding a burst of N refills while it drains, so up to 2N
requests can land in one window. The log admits a request only while fewer than N sends are younger than the
window (plus a small `guard_s`, so that a server timestamping on receipt, a few milliseconds later and with
unequal delays, never counts N+1 in its own window). Sends are also spaced at least `spacing_s` apart (half
the average interval the limit allows): a burst of N at once would queue at the server, and the last of the
burst, stamped late, would share a window with requests sent a full window after the first.

Creates, polls and cancels all count, except polls when `Limits.polls_count` is False. Waiters are served by
priority — cancels, then polls, then creates, since a poll that finds a prediction done frees a slot — and
first come, first served within one kind.

A 429 anywhere pauses the whole budget: for `Retry-After` when the server sent one, else for a backoff that
starts at one request's share of the window and doubles while 429s keep coming. Uncounted polls wait out
pauses too.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

REQUEST_KINDS = ("create", "poll", "cancel")
_PRIORITY = {"cancel": 0, "poll": 1, "create": 2}


class Budget(Protocol):
    """What the engine needs from a budget; LocalBudget serves one process, RedisBudget many."""

    async def take_request(self, kind: str) -> None: ...

    async def on_throttled(self, retry_after_s: float | None) -> None: ...

    async def take_slot(self) -> str: ...

    async def release_slot(self, token: str) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """The quota of one key: `requests` per trailing `window_s`, `max_in_flight` predictions at once."""

    requests: int = 60
    window_s: float = 60.0
    max_in_flight: int = 10
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


class LocalBudget:
    """The Budget of a single process: exact, in memory, no background task."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        *,
        guard_s: float | None = None,
        spacing_s: float | None = None,
        max_pause_s: float | None = None,
    ):
        self.limits = limits
        self._clock = clock
        self.guard_s = guard_s if guard_s is not None else min(0.5, max(0.02, limits.window_s * 0.02))
        self.spacing_s = spacing_s if spacing_s is not None else limits.floor_interval_s / 8
        self.max_pause_s = max_pause_s if max_pause_s is not None else max(limits.window_s, 1.0)
        self._sent: deque[float] = deque()
        self._paused_until = float("-inf")
        self._last_throttle = float("-inf")
        self._backoff_s = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._pause_waiters: deque[asyncio.Future] = deque()  # uncounted polls: they wait out pauses only
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._free_slots = limits.max_in_flight
        self._held: set[str] = set()
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._tokens = itertools.count(1)
        self._counts: Counter[str] = Counter()
        self._throttled = 0

    async def take_request(self, kind: str) -> None:
        """Wait until one more request fits the window and no pause is on, then count it as sent now."""
        if kind not in _PRIORITY:
            raise ValueError(f"unknown request kind {kind!r}; expected one of {REQUEST_KINDS}")
        counted = kind != "poll" or self.limits.polls_count
        queue_empty = not self._waiters if counted else not self._pause_waiters
        if queue_empty and self._admit(counted):
            self._counts[kind] += 1
            return
        future = asyncio.get_running_loop().create_future()
        if counted:
            heapq.heappush(self._waiters, (_PRIORITY[kind], next(self._order), future))
        else:
            self._pause_waiters.append(future)
        self._serve()
        await future  # a cancelled waiter is skipped by _serve: its future is done
        self._counts[kind] += 1

    async def on_throttled(self, retry_after_s: float | None) -> None:
        """Hold every caller back: for `retry_after_s` if given, else for a doubling backoff."""
        now = self._clock()
        self._throttled += 1
        if retry_after_s is not None and retry_after_s >= 0:
            pause = retry_after_s
        else:
            recent = now - self._last_throttle < self.limits.window_s
            self._backoff_s = min(self._backoff_s * 2, self.max_pause_s) if recent else 0.0
            self._backoff_s = self._backoff_s or self.limits.floor_interval_s
            pause = self._backoff_s
        self._last_throttle = now
        self._paused_until = max(self._paused_until, now + min(pause, self.max_pause_s))
        self._serve()

    async def take_slot(self) -> str:
        """Wait for an in-flight slot (first come, first served); the token returned releases it."""
        if self._free_slots > 0 and not self._slot_waiters:
            self._free_slots -= 1
        else:
            future = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._hand_over_slot()  # granted just as the waiter was cancelled: pass it on
                raise
        token = f"slot-{next(self._tokens)}"
        self._held.add(token)
        return token

    async def release_slot(self, token: str) -> None:
        """Give a slot back; releasing a token twice is harmless."""
        if token not in self._held:
            return
        self._held.discard(token)
        self._hand_over_slot()

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stats(self) -> BudgetStats:
        return BudgetStats(
            requests=dict(self._counts),
            throttled=self._throttled,
            in_flight=len(self._held),
            waiting_requests=sum(1 for *_, f in self._waiters if not f.done()) + len(self._pause_waiters),
            waiting_slots=sum(1 for f in self._slot_waiters if not f.done()),
            paused_for_s=max(0.0, self._paused_until - self._clock()),
        )

    def _hand_over_slot(self) -> None:
        while self._slot_waiters:
            future = self._slot_waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free_slots += 1

    def _admit(self, counted: bool) -> bool:
        """Count one send now if the window and any pause allow it."""
        now = self._clock()
        if now < self._paused_until:
            return False
        if not counted:
            return True
        horizon = now - self.limits.window_s - self.guard_s
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()
        if len(self._sent) >= self.limits.requests or (self._sent and now < self._sent[-1] + self.spacing_s):
            return False
        self._sent.append(now)
        return True

    def _serve(self) -> None:
        """Grant waiting requests in priority order while they fit; else wake up when the next one would."""
        if self._clock() >= self._paused_until:
            while self._pause_waiters:
                future = self._pause_waiters.popleft()
                if not future.done():
                    future.set_result(None)
        while self._waiters:
            future = self._waiters[0][2]
            if future.done():
                heapq.heappop(self._waiters)
            elif self._admit(True):
                heapq.heappop(self._waiters)
                future.set_result(None)
            else:
                break
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiters or self._pause_waiters:
            self._timer = asyncio.get_running_loop().call_later(self._next_opening() + 1e-4, self._serve)

    def _next_opening(self) -> float:
        now = self._clock()
        opening = self._paused_until
        if len(self._sent) >= self.limits.requests:
            opening = max(opening, self._sent[0] + self.limits.window_s + self.guard_s)
        if self._sent:
            opening = max(opening, self._sent[-1] + self.spacing_s)
        return max(0.0, opening - now)
