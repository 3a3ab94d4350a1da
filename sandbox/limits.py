"""The quota in its strictest reading: requests in any trailing window, and predictions in flight, per key."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable


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
