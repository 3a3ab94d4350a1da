"""The request budget every API call in a process goes through: a sliding log of sends, slots, pauses.

Why a sliding log and not a token bucket: a bucket holding a burst of N refills while it drains, so up to 2N
requests can land in one window. The log admits a request only while fewer than N entries are in the window.

When polls count, sends are paced within the window: at most `burst` (the in-flight limit or N/12, whichever
is larger) in any `burst`/N of the window. The log alone would let N go at once and then starve for the rest
of the window, so finished predictions would wait most of a window to be seen — holding slots, and outliving
short-lived output URLs.

The server stamps a request when it arrives, some unknown time after we admitted it — under load, tens of
milliseconds, and unequally from one request to the next. So an entry is not dated by its admission: it
counts as "somewhere between admission and now" until the caller settles the `Receipt` that `take_request`
returns (the answer, or the failure, is in); from then on it is dated at the settle, which is never earlier
than the server's own stamp. The window can then never hold N+1 for the server, however delays vary; a small
`guard_s` covers rounding. A receipt nobody settles counts as settled `unsettled_s` after admission.

Creates, polls and cancels all count, except polls when `Limits.polls_count` is False. Waiters are served by
priority — cancels, then polls, then creates, since a poll that finds a prediction done frees a slot — and
first come, first served within one kind.

A 429 pauses the budget: for `Retry-After` when the server sent one, else for a backoff that starts at one
request's share of the window and doubles while 429s keep coming. A 429 on a poll or a cancel pauses every
kind; one on a create pauses only creates unless polls are known to count toward the cap (`pauses_polls`):
while nobody knows whether polls count, the polls that go on through a create's pause are what tells
(promptgrid.engine.limits). Uncounted polls wait out the pauses that hold them too.

Without a cap (`Limits.auto`) every request is admitted at once, pauses aside, and only the receipts not yet
settled are remembered; `adopt` then sets a cap, counting those receipts and the answer times it is given.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

from promptgrid.quota.base import REQUEST_KINDS, BudgetStats, Limits, pauses_polls

_PRIORITY = {"cancel": 0, "poll": 1, "create": 2}
_KINDS = {priority: kind for kind, priority in _PRIORITY.items()}
# A 429 without Retry-After while no cap is known: the first pause (the engine adopts a cap right after).
_UNCAPPED_BACKOFF_S = 1.0


class LocalReceipt:
    """A request LocalBudget admitted; `settle()` it when its answer or failure is in (twice is harmless)."""

    __slots__ = ("_budget", "admitted_at", "kind", "settled")

    def __init__(self, budget: LocalBudget | None, admitted_at: float, kind: str = "create"):
        self._budget = budget
        self.admitted_at = admitted_at
        self.kind = kind
        self.settled = budget is None

    def settle(self) -> None:
        if not self.settled:
            self.settled = True
            assert self._budget is not None  # a receipt without a budget starts settled
            self._budget._settle(self)


def _default_burst(limits: Limits) -> int:
    requests = limits.requests or 1
    if not limits.polls_count:
        return requests  # only creates count: a starved window delays no poll, so no pacing
    # A wave of finished predictions frees every slot at once: their creates may go together.
    return max(requests // 12, limits.max_in_flight)


class LocalBudget:
    """The Budget of a single process: exact, in memory, no background task."""

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        *,
        guard_s: float | None = None,
        unsettled_s: float | None = None,
        burst: int | None = None,
        max_pause_s: float | None = None,
    ):
        self._clock = clock
        self._given = (guard_s, unsettled_s, max_pause_s, burst)
        self._apply(limits)
        self._recent: deque[float] = deque()  # admission times within the last burst span
        self._settled: list[float] = []  # a heap of settle times
        self._pending: dict[LocalReceipt, None] = {}  # admitted, not settled; in admission order
        self._open: dict[LocalReceipt, None] = {}  # without a cap: admitted, not settled
        self._paused_until = float("-inf")  # every kind
        self._creates_paused_until = float("-inf")  # creates only
        self._last_throttle = float("-inf")
        self._backoff_s = 0.0
        self._waiters: list[tuple[int, int, asyncio.Future[LocalReceipt]]] = []
        # Uncounted requests (polls, or every kind without a cap): they wait out pauses only.
        self._pause_waiters: deque[tuple[str, asyncio.Future[LocalReceipt]]] = deque()
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._free_slots = limits.max_in_flight
        self._held: set[str] = set()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._tokens = itertools.count(1)
        self._counts: Counter[str] = Counter()
        self._throttled = 0

    def _apply(self, limits: Limits) -> None:
        guard_s, unsettled_s, max_pause_s, burst = self._given
        self.limits = limits
        self.guard_s = guard_s if guard_s is not None else min(0.1, max(0.005, limits.window_s * 0.005))
        self.unsettled_s = unsettled_s if unsettled_s is not None else limits.window_s
        self.max_pause_s = max_pause_s if max_pause_s is not None else max(limits.window_s, 1.0)
        self.burst = max(1, burst if burst is not None else _default_burst(limits))
        self._burst_span_s = limits.floor_interval_s * self.burst

    def adopt(self, limits: Limits, answered: Sequence[float] = ()) -> None:
        """Keep to `limits` from now on, counting the receipts still open and the requests `answered` then."""
        self._apply(limits)
        now = self._clock()
        horizon = now - limits.window_s - self.guard_s
        self._settled = [t for t in answered if t > horizon]
        heapq.heapify(self._settled)
        self._recent.clear()
        for receipt in [r for r in self._open if limits.counts(r.kind)]:
            self._pending[receipt] = None
        self._open.clear()
        waiting, self._pause_waiters = self._pause_waiters, deque()
        for kind, future in waiting:
            if limits.counts(kind):
                heapq.heappush(self._waiters, (_PRIORITY[kind], next(self._order), future))
            else:
                self._pause_waiters.append((kind, future))
        self._serve()

    async def take_request(self, kind: str) -> LocalReceipt:
        """Wait until a request fits the window and no pause is on; settle the receipt when answered."""
        if kind not in _PRIORITY:
            raise ValueError(f"unknown request kind {kind!r}; expected one of {REQUEST_KINDS}")
        counted = self.limits.counts(kind)
        queue_empty = not self._waiters if counted else not self._pause_waiters
        receipt = self._admit(kind, counted) if queue_empty else None
        if receipt is None:
            future = asyncio.get_running_loop().create_future()
            if counted:
                heapq.heappush(self._waiters, (_PRIORITY[kind], next(self._order), future))
            else:
                self._pause_waiters.append((kind, future))
            self._serve()
            try:
                receipt = await future  # a cancelled waiter is skipped by _serve: its future is done
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    future.result().settle()
                raise
        self._counts[kind] += 1
        return receipt

    async def on_throttled(self, retry_after_s: float | None, kind: str) -> None:
        """A 429 on a request of `kind`: hold callers back (creates only, or every kind: `pauses_polls`)
        for `retry_after_s` if given, else for a doubling backoff."""
        now = self._clock()
        self._throttled += 1
        if retry_after_s is not None and retry_after_s >= 0:
            pause = retry_after_s
        else:
            recent = now - self._last_throttle < self.limits.window_s
            self._backoff_s = min(self._backoff_s * 2, self.max_pause_s) if recent else 0.0
            self._backoff_s = self._backoff_s or self.limits.floor_interval_s or _UNCAPPED_BACKOFF_S
            pause = self._backoff_s
        self._last_throttle = now
        until = now + min(pause, self.max_pause_s)
        if pauses_polls(self.limits, kind):
            self._paused_until = max(self._paused_until, until)
        else:
            self._creates_paused_until = max(self._creates_paused_until, until)
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
            waiting_requests=sum(1 for *_, f in self._waiters if not f.done())
            + sum(1 for _, f in self._pause_waiters if not f.done()),
            waiting_slots=sum(1 for f in self._slot_waiters if not f.done()),
            paused_for_s=max(0.0, self._pause_end("create") - self._clock()),
        )

    def _hand_over_slot(self) -> None:
        while self._slot_waiters:
            future = self._slot_waiters.popleft()
            if not future.done():
                future.set_result(None)
                return
        self._free_slots += 1

    def _admit(self, kind: str, counted: bool) -> LocalReceipt | None:
        """A receipt for one send now if the window and any pause allow it, else None."""
        now = self._clock()
        if now < self._pause_end(kind):
            return None
        if self.limits.requests is None:
            receipt = LocalReceipt(self, now, kind)
            self._open[receipt] = None  # a cap adopted before it settles counts it
            return receipt
        if not counted:
            return LocalReceipt(None, now, kind)
        self._forget(now)
        if len(self._settled) + len(self._pending) >= self.limits.requests or len(self._recent) >= self.burst:
            return None
        self._recent.append(now)
        receipt = LocalReceipt(self, now, kind)
        self._pending[receipt] = None
        return receipt

    def _pause_end(self, kind: str) -> float:
        """When the pauses holding a request of `kind` end (creates wait out both)."""
        if kind == "create":
            return max(self._paused_until, self._creates_paused_until)
        return self._paused_until

    def _forget(self, now: float) -> None:
        """Drop entries the server has certainly left out of its window; date forgotten receipts."""
        while self._pending:
            oldest = next(iter(self._pending))
            if oldest.admitted_at + self.unsettled_s > now:
                break
            oldest.settled = True
            del self._pending[oldest]
            heapq.heappush(self._settled, oldest.admitted_at + self.unsettled_s)
        while self._recent and self._recent[0] <= now - self._burst_span_s:
            self._recent.popleft()
        horizon = now - self.limits.window_s - self.guard_s
        while self._settled and self._settled[0] <= horizon:
            heapq.heappop(self._settled)

    def _settle(self, receipt: LocalReceipt) -> None:
        self._open.pop(receipt, None)
        if self._pending.pop(receipt, 0) is None:
            heapq.heappush(self._settled, self._clock())
            if self._waiters:
                self._serve()  # the entry now has an expiry: the wake-up time may be known at last

    def _serve(self) -> None:
        """Grant waiting requests in priority order while they fit; else wake up when the next one would."""
        now = self._clock()
        held: deque[tuple[str, asyncio.Future[LocalReceipt]]] = deque()
        while self._pause_waiters:
            kind, future = self._pause_waiters.popleft()
            if future.done():
                continue
            if now < self._pause_end(kind):
                held.append((kind, future))  # a create under a creates-only pause: polls go on past it
            else:
                future.set_result(self._admit(kind, False) or LocalReceipt(None, now, kind))
        self._pause_waiters = held
        while self._waiters:
            priority, _, future = self._waiters[0]
            if future.done():
                heapq.heappop(self._waiters)
            elif (receipt := self._admit(_KINDS[priority], True)) is not None:
                heapq.heappop(self._waiters)
                future.set_result(receipt)
            else:
                break
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        opening = self._next_opening() if self._waiters or self._pause_waiters else None
        if opening is not None:
            self._timer = asyncio.get_running_loop().call_later(opening + 1e-4, self._serve)

    def _next_opening(self) -> float | None:
        """Seconds until a waiter could be served; None when only a settle can tell (it calls _serve)."""
        now = self._clock()
        openings = [self._pause_end(kind) for kind, _ in self._pause_waiters]
        if self._waiters:
            openings.append(self._window_opening(self._pause_end(_KINDS[self._waiters[0][0]])))
        return max(0.0, min(openings) - now) if openings else None

    def _window_opening(self, opening: float) -> float:
        """When the first counted waiter fits the window and the burst, no earlier than `opening`."""
        requests = self.limits.requests
        if requests is not None and len(self._settled) + len(self._pending) >= requests:
            expiries = [t + self.limits.window_s + self.guard_s for t in self._settled[:1]]
            if self._pending:
                oldest = next(iter(self._pending)).admitted_at
                expiries.append(oldest + self.unsettled_s + self.limits.window_s + self.guard_s)
            opening = max(opening, min(expiries))
        if len(self._recent) >= self.burst:
            opening = max(opening, self._recent[0] + self._burst_span_s)
        return opening
