"""Limits learned from the API's answers: a request-rate cap read off a 429, and in-flight room that adapts.

Nobody can say whether the API limits requests per window (the model page) or only executions in flight
across the organisation (the current documentation), so a run starts with no request-rate cap and learns:

- `infer_rate_limit` reads a cap off the first 429 that is about the request rate. Nothing held our requests
  back until then, so that 429 came in the first window that filled: every request the API answered since
  the first counts, and `Retry-After` says when that first one leaves the API's window, which gives the
  window's length. Without `Retry-After` the window is taken as the span of those requests, a little
  widened; too short a window shows as more 429s, and each one read after a cap was adopted lowers it.
  A 429 can come later than the first window, when our requests did not fill one at first (creates held
  back by their slots, polls timed sparingly); a window read longer than the longest one known (the model
  page's) is taken as that one, with the most requests the API admitted in one such window as the cap,
  since spreading the cap over the whole span would understate the rate.
  A 429 on a create says creates count; polls are read as counting once one of them meets such a 429
  (never, if the spec says `polls_count: false`), and the cap becomes the most requests the API admitted
  in one window.
- `SlotGate` holds how many predictions this process has in flight. A create refused for want of room (a
  429 about concurrency, or a 402: the executions in flight cost more than the balance) lowers the gate to
  what the API runs for us (several refusals at once lower it once, not once each); only executions
  finishing clear such a refusal, so the gate opens again as ours finish, and probes one slot higher after
  a while. A probe refused makes the next one wait twice as long,
  so slots held by other keys cost a few 429s per run, not one per image. When nothing of ours is in
  flight, no finish can be waited for: the gate closes for `Retry-After`, or for a doubling backoff.
  A slot frees at the API when a prediction ends, not when a poll sees it end. So while creates are free
  of any request cap (`room_probes`), the gate sends a waiting create ahead as a probe about
  `probes_per_finish` times per finish of ours (at that share of the recent time between them), one at a
  time: a refused probe is free and changes nothing, an accepted one shows one of ours ended unseen (or the
  organisation freed a slot), and it runs in that place (`unseen`) until a poll sees the end.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Sequence

from promptgrid.quota.base import Limits

# Without Retry-After the window is at least the span of the requests it held; widened by this much.
WINDOW_MARGIN = 1.25
# Each 429 about the rate met under an adopted cap lowers the cap by this share.
CAP_DECREASE = 0.1
# Our latest finishes whose mean spacing paces the room probes.
_FINISHES_KEPT = 16


def most_in_window(times: Sequence[float], window_s: float) -> int:
    """The most of the sorted `times` that fall in one interval of length `window_s`."""
    best = 0
    for end, t in enumerate(times):
        start = bisect.bisect_left(times, t - window_s, 0, end + 1)
        best = max(best, end - start + 1)
    return best


def infer_rate_limit(
    answered: Sequence[tuple[float, str]],
    refused_at: float,
    retry_after_s: float | None,
    *,
    polls_count: bool,
    max_in_flight: int,
    adopted: Limits | None = None,
    longest_window_s: float | None = None,
) -> Limits:
    """The request cap a 429 about the rate shows, given the (answer time, kind) of the requests before it.

    `polls_count` says whether polls are read as counted (a poll has met such a 429); `longest_window_s`
    bounds the window read (see the module docstring). With a cap `adopted`
    already, its window is kept: the cap becomes what the API admitted in one window when polls have just
    been found to count, else it is lowered by CAP_DECREASE (it was too high).
    """
    counted = sorted(t for t, kind in answered if kind != "poll" or polls_count)
    if adopted is not None:
        if polls_count and not adopted.polls_count:
            requests = max(1, most_in_window(counted, adopted.window_s))
        else:
            requests = max(1, int((adopted.requests or 1) * (1 - CAP_DECREASE)))
        return Limits(requests, adopted.window_s, max_in_flight, polls_count)
    if not counted:
        # Refused before anything was answered: one request per the pause the API asked for, to start with.
        return Limits(1, max(retry_after_s or 1.0, 1e-3), max_in_flight, polls_count)
    span = refused_at - counted[0]
    window = span + retry_after_s if retry_after_s is not None else span * WINDOW_MARGIN
    if longest_window_s is not None and window > longest_window_s:
        # Nothing was refused before: the API admitted the most that fell in any one window.
        return Limits(most_in_window(counted, longest_window_s), longest_window_s, max_in_flight, polls_count)
    return Limits(len(counted), max(window, 1e-3), max_in_flight, polls_count)


class SlotGate:
    """How many predictions this process may have in flight now: at most `limit`, fewer while refused.

    A job holds an entry from before its create until its prediction is seen terminal; `accepted` marks
    it running at the API (its create was taken, or it was resumed). `refused` is called by a job whose
    create met no room, while it still holds its entry; it then leaves and enters again with `first=True`.
    `finished` reports a prediction of ours ended.
    """

    def __init__(
        self,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_patience: int = 8,
        probes_per_finish: float = 6.0,
    ):
        if limit < 1:
            raise ValueError("SlotGate needs a limit of at least 1")
        self.limit = limit
        self.cap = limit
        self.active = 0  # entries held: jobs about to create, or running at the API
        self.running = 0  # entries whose prediction the API runs
        self.max_patience = max_patience
        self.idle_refusals = 0  # refusals in a row met with nothing else of ours in flight
        self._clock = clock
        self._patience = 1
        self._finished_since = 0  # predictions finished since the cap last moved
        self._probe: int | None = None  # a cap raised and not yet confirmed by an accepted create
        self._closed_until = float("-inf")
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        # Room probes (module docstring): on while creates are free of any request cap.
        self.room_probes = False
        self.probes_per_finish = probes_per_finish
        self.unseen = 0  # ours taken as ended at the API (a probe got in) that no poll has seen end yet
        self._probe_out = False
        self._last_probe = float("-inf")
        self._probe_timer: asyncio.TimerHandle | None = None
        # When our last finishes were seen: their mean spacing paces the probes (finishes come in bursts).
        self._finishes: deque[float] = deque(maxlen=_FINISHES_KEPT)

    @property
    def lowered(self) -> bool:
        return self.cap < self.limit

    async def enter(self, first: bool = False) -> bool:
        """Wait for room; `first` goes ahead of other waiters (a job refused once already). True: let in as
        a room probe, whose create's answer is then reported with `probe=True`."""
        if not self._waiters and self._has_room():
            self.active += 1
            return False
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(future)
        else:
            self._waiters.append(future)
        self._serve()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._probe_out = self._probe_out and not future.result()
                self.leave()  # let in just as the waiter was cancelled: pass the room on
            raise

    def leave(self, running: bool = False, probe: bool = False) -> None:
        """Give the entry back; `running` when its prediction had been accepted by the API, `probe` when it
        was let in as a room probe (not yet refused: one that failed otherwise is no longer out)."""
        self.active -= 1
        self._probe_out = self._probe_out and not (probe and not running)
        if running:
            self.running -= 1
            if self.unseen:
                self.unseen -= 1  # its place at the API was taken already, by a probe
            self._finishes.append(self._clock())
        self._serve()

    def accepted(self, probe: bool = False) -> None:
        """A create got through (or a prediction is resumed): it runs, and a raised cap held. A room probe
        got through: one of ours ended unseen (or the organisation freed a slot)."""
        self.running += 1
        self.idle_refusals = 0
        if probe:
            self._probe_out = False
            self.unseen = min(self.unseen + 1, max(0, self.running - 1))
        if self._probe is not None and self.at_api >= self._probe:
            self._probe = None
            self._patience = max(1, self._patience // 2)

    def refused(
        self, retry_after_s: float | None, backoff_s: float, max_backoff_s: float, probe: bool = False
    ) -> None:
        """A create holding an entry met no room: lower the cap to what the API took without it.

        With nothing else of ours in flight no finish will open the gate, so it closes for `retry_after_s`,
        else for `backoff_s` doubled per refusal in a row (at most `max_backoff_s`). Refusals met while it
        is closed answer creates sent together with the one that closed it: they count as one try. A room
        probe refused says only that nothing ended yet.
        """
        if probe:
            self._probe_out = False
            return
        if self._probe is not None and self.at_api + 1 >= self._probe:
            self._patience = min(self._patience * 2, self.max_patience)
        self._probe = None
        self.cap = max(1, min(self.cap, self.at_api))
        self._finished_since = 0
        now = self._clock()
        if self.running > 0 or now < self._closed_until:
            return
        self.idle_refusals += 1
        pause = retry_after_s if retry_after_s is not None else backoff_s * 2 ** (self.idle_refusals - 1)
        self._closed_until = now + min(pause, max_backoff_s)

    def finished(self) -> None:
        """One of ours ended at the API; after enough of them at a lowered cap, try one slot more.

        Only finishes while the cap holds someone back count: with room to spare, nothing would probe.
        """
        if not self.lowered or not self._waiters:
            return
        self._finished_since += 1
        if self._finished_since >= self.cap * self._patience:
            self.cap += 1
            self._probe = self.cap
            self._finished_since = 0
            self._serve()

    @property
    def at_api(self) -> int:
        """Ours the API still runs, as far as we know: those running less those a probe showed ended."""
        return self.running - self.unseen

    @property
    def _allowed(self) -> int:
        """Entries allowed now: the cap, and the places of ours that ended unseen, taken by probes."""
        return self.cap + self.unseen

    def _has_room(self) -> bool:
        return self.active < self._allowed and self._clock() >= self._closed_until

    def _serve(self) -> None:
        while self._waiters and self._has_room():
            self._let_in(probe=False)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiters and self.active < self._allowed:  # closed for a while: wake up when it opens
            delay = max(0.0, self._closed_until - self._clock())
            self._timer = asyncio.get_running_loop().call_later(delay + 1e-4, self._serve)
        self._plan_probe()

    def _let_in(self, *, probe: bool) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                self.active += 1
                future.set_result(probe)
                return

    def _probing(self) -> bool:
        """Whether a room probe may go now: creates wait, ours run and will end, a place is left below
        the limit, and none is out already."""
        return (
            self.room_probes
            and bool(self._waiters)
            and not self._probe_out
            and self.running > 0
            and self.active < self.limit
            and len(self._finishes) >= 2
            and self._clock() >= self._closed_until
        )

    def _plan_probe(self) -> None:
        if self._probe_timer is not None or not self._probing():
            return
        finishes = self._finishes
        every = (finishes[-1] - finishes[0]) / (len(finishes) - 1) / self.probes_per_finish
        wait = max(0.0, self._last_probe + every - self._clock())  # counted from when the last one left
        self._probe_timer = asyncio.get_running_loop().call_later(wait, self._send_probe)

    def _send_probe(self) -> None:
        self._probe_timer = None
        if self._probing():
            self._probe_out, self._last_probe = True, self._clock()
            self._let_in(probe=True)
        self._plan_probe()
