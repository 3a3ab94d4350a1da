"""The sandbox's limits in their strictest reading: requests in any trailing window, predictions in flight.

`Admission` applies them as the configured limit model says: the page's (per key, a request window and an
in-flight cap) or the docs' (no window; one in-flight cap for the whole organisation, part of it possibly held
by other keys), plus the balance's 402 when one is set.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping

from promptgrid.sandbox.config import SandboxConfig
from promptgrid.sandbox.predictions import TERMINAL, Counters, Prediction
from promptgrid.sandbox.replies import Reply, error, throttled


class RequestWindow:
    """At most `limit` admitted requests in any `window` seconds (a sliding log, not fixed buckets).

    A request is admitted only if, counting it, no interval of length `window` ending at it holds more
    than `limit` requests. Requests refused with 429 are never recorded, so they cost the client nothing.
    """

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()
        self.most_seen = 0

    def _forget_before(self, now: float) -> None:
        # A request exactly `window` ago still shares a closed window with `now`: keep it (strictest).
        horizon = now - self.window
        while self._times and self._times[0] < horizon:
            self._times.popleft()

    def retry_after(self, now: float) -> float:
        """Seconds until one more request would be admitted; 0 when it would be now."""
        self._forget_before(now)
        if len(self._times) < self.limit:
            return 0.0
        oldest_that_blocks = self._times[len(self._times) - self.limit]
        # Strictly after the blocking request leaves the closed window.
        return max(oldest_that_blocks + self.window - now, 0.0) + 1e-3

    def record(self, now: float) -> None:
        self._forget_before(now)
        self._times.append(now)
        self.most_seen = max(self.most_seen, len(self._times))

    def current(self, now: float) -> int:
        self._forget_before(now)
        return len(self._times)


class InFlight:
    """The predictions of one key that have not reached a terminal status yet.

    Predictions end on their own clock, not when someone polls them; a heap of expected end times keeps
    counting cheap when thousands are in flight (limits lifted for a benchmark).
    """

    def __init__(self, limit: int, is_done: Callable[[str, float], bool]):
        self.limit = limit
        self._is_done = is_done
        self._ids: set[str] = set()
        self._ends: list[tuple[float, str]] = []
        self.most_seen = 0

    def add(self, prediction_id: str, ends_at: float | None) -> None:
        """`ends_at` is when it should end by itself; None for one that will not (it must be discarded)."""
        self._ids.add(prediction_id)
        if ends_at is not None:
            heapq.heappush(self._ends, (ends_at, prediction_id))
        self.most_seen = max(self.most_seen, len(self._ids))

    def discard(self, prediction_id: str) -> None:
        self._ids.discard(prediction_id)

    def count(self, now: float) -> int:
        late = []
        while self._ends and self._ends[0][0] <= now:
            _, prediction_id = heapq.heappop(self._ends)
            if prediction_id not in self._ids:
                continue
            if self._is_done(prediction_id, now):
                self._ids.discard(prediction_id)
            else:
                late.append(prediction_id)  # still waiting on its input image: look again later
        for prediction_id in late:
            heapq.heappush(self._ends, (now + 1e-6, prediction_id))
        return len(self._ids)

    def ids(self, now: float) -> list[str]:
        self.count(now)
        return list(self._ids)

    def is_full(self, now: float) -> bool:
        return self.count(now) >= self.limit


class Admission:
    """Decides, for each request, whether the limits let it through; records the ones they do.

    Every method answers None to admit, else the refusal to send. `counters` is read through a callable
    because the service replaces its counters on reset.
    """

    def __init__(
        self, config: SandboxConfig, predictions: Mapping[str, Prediction], counters: Callable[[], Counters]
    ):
        self.config = config
        self._predictions = predictions
        self._counters = counters
        self._windows: dict[str, RequestWindow] = {}
        self._in_flight: dict[str, InFlight] = {}
        self._bursts: dict[str, RequestWindow] = {}
        self.held_by_others = config.held_by_others  # tests may change it while the sandbox runs

    def request(self, owner: str, counted: bool, now: float) -> Reply | None:
        """A get or a cancel: only the page model's window can refuse it."""
        if not counted or not self.config.rate_limited:
            return None
        window = self._window(owner)
        refusal = self._window_refusal(window, now)
        if refusal is None:
            self._record(window, now)
        return refusal

    def create(self, owner: str, valid: bool, now: float) -> Reply | None:
        """A create (`valid`: its body passed the checks): the window, then the slots, then the balance."""
        if refusal := self._unexplained_refusal(owner, now):
            return refusal
        window = self._window(owner) if self.config.rate_limited else None
        if window is not None and (refusal := self._window_refusal(window, now)):
            return refusal
        if valid and (refusal := self._in_flight_refusal(owner, now)):
            return refusal  # a 429 costs the client nothing
        if window is not None:
            self._record(window, now)  # anything else the server answered counts, a 400 or a 402 too
        return self._payment_refusal(owner, now) if valid else None

    def started(self, prediction: Prediction, now: float) -> int:
        """Count a new prediction against its owner's cap; returns how many are in flight under that cap."""
        flights = self._flights(prediction.owner)
        flights.add(prediction.id, None if prediction.fate.never_finishes else prediction.finished_at)
        return flights.count(now) + self.held_by_others

    def cancelled(self, prediction: Prediction) -> None:
        """A cancel took effect (now, or at `prediction.cancelled_at`): the slot frees when it does."""
        flights = self._flights(prediction.owner)
        if prediction.cancel_ignored:
            assert prediction.cancelled_at is not None  # a late cancel has its time
            flights.add(prediction.id, prediction.cancelled_at)
        else:
            flights.discard(prediction.id)

    def hold_slots(self, count: int) -> None:
        """Let other keys of the organisation occupy `count` in-flight slots from now on."""
        if not 0 <= count <= self.config.max_in_flight:
            raise ValueError("held slots must be between 0 and max_in_flight")
        self.held_by_others = count

    def _window(self, owner: str) -> RequestWindow:
        if owner not in self._windows:
            self._windows[owner] = RequestWindow(self.config.rate_limit, self.config.window)
        return self._windows[owner]

    def _flights(self, owner: str) -> InFlight:
        """The predictions counted against `owner`'s cap: its key's (page), or the organisation's (docs)."""
        scope = owner if self.config.rate_limited else "organisation"
        if scope not in self._in_flight:
            self._in_flight[scope] = InFlight(self.config.max_in_flight, self._is_done)
        return self._in_flight[scope]

    def _is_done(self, prediction_id: str, now: float) -> bool:
        return self._predictions[prediction_id].status(now) in TERMINAL

    def _record(self, window: RequestWindow, now: float) -> None:
        window.record(now)
        counters = self._counters()
        counters.max_window_requests = max(counters.max_window_requests, window.current(now))

    def _window_refusal(self, window: RequestWindow, now: float) -> Reply | None:
        wait = window.retry_after(now)
        if wait <= 0:
            return None
        self._refused("rate")
        cfg = self.config
        details = f"at most {cfg.rate_limit} requests per {cfg.window_s:g} s per API key"
        return throttled(wait, details, cfg.retry_after)

    def _in_flight_refusal(self, owner: str, now: float) -> Reply | None:
        cfg = self.config
        if self._flights(owner).count(now) + self.held_by_others < cfg.max_in_flight:
            return None
        self._refused("concurrency")
        if cfg.rate_limited:
            details = f"at most {cfg.max_in_flight} predictions in flight per API key"
        else:
            details = (
                f"too many concurrent executions: the organisation may run {cfg.max_in_flight} at once "
                "across all its API keys; wait for one to finish"
            )
        return throttled(self._next_end(owner, now), details, cfg.retry_after)

    def _unexplained_refusal(self, owner: str, now: float) -> Reply | None:
        """A bare 429 (`bare_429`), or a burst's transient one (`burst_limit` creates per second)."""
        cfg = self.config
        if cfg.bare_429:
            self._refused("bare")
            return Reply(429, {"status": 429, "error": "too many requests"})
        if cfg.burst_limit is None:
            return None
        burst = self._bursts.setdefault(owner, RequestWindow(cfg.burst_limit, cfg.scaled(1.0)))
        if burst.retry_after(now) <= 0:
            burst.record(now)
            return None
        self._refused("burst")
        details = "too many executions were started at once; retry with backoff"
        return Reply(429, {"status": 429, "error": "too many requests", "details": details})

    def _payment_refusal(self, owner: str, now: float) -> Reply | None:
        limit = self.config.payment_limit
        if limit is None or self._flights(owner).count(now) + self.held_by_others < limit:
            return None
        self._counters().payment_required += 1
        return error(
            402,
            "Insufficient balance",
            details="the executions in flight cost more than the balance: wait for one to finish, or top up",
        )

    def _refused(self, reason: str) -> None:
        counters = self._counters()
        counters.throttled += 1
        counters.throttled_by[reason] += 1

    def _next_end(self, owner: str, now: float) -> float:
        """Seconds until one of the counted predictions ends (a guess when none of them will by itself)."""
        unfinished = [self._predictions[pid] for pid in self._flights(owner).ids(now)]
        ends = [p.finished_at for p in unfinished if not p.fate.never_finishes]
        return min(ends) - now if ends else self.config.scaled(1.0)
