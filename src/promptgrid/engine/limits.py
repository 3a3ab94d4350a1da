"""How the engine meets the API's limits without being told which description of them the API follows.

The model page says 60 requests a minute and 10 in flight per key; the current documentation says no
request-rate limit, and a cap on concurrent executions shared by every key of the organisation, whose 429s
"backoff alone does not clear": only executions finishing do. So every refusal is read for what it is about:

- about the request rate: a 429 on a poll or a cancel, or on a create that speaks of a request rate, or
  that does not speak of concurrency while fewer than our cap are in flight. The budget pauses (for
  `Retry-After`, else a backoff): every kind after a poll's or a cancel's 429, only creates after a create's
  while polls are not known to count, so the polls that go on through that pause tell whether they do (a
  poll refused: they count; polls answered: they are free). Under `rate_limit: auto` the first such 429
  that names a rate also sets a cap, inferred from what the API answered before it
  (promptgrid.quota.adaptive.infer_rate_limit), kept for the rest of the run, logged and counted in the
  run summary; a later one lowers it (or, met by a poll under a creates-only cap, counts polls). A 429 that
  names neither a rate nor slots is only a pause: a cap read off it could be anything. Nor is the
  transient "too many executions were started at once" (a burst, retried after a backoff) a rate or a
  lack of slots. An explicit `api.rate_limit` is a hard cap: nothing is adopted.
- about room: a 429 about concurrency, or an unexplained one on a create while our cap is full, or a 402
  (the executions in flight cost more than the balance). Nothing pauses: polls go on, since ours finishing
  is what makes room. The `SlotGate` lowers the in-flight cap to what the API took and opens again as ours
  finish; the refused job waits for room, up to `room_wait_s`, instead of failing. While creates are free
  of any cap, the gate also sends a waiting create ahead as a room probe, paced by our finishes (a refused
  one is free and moves nothing). A 402 met with nothing of ours in flight, `payment_tries` times in a row
  over spaced tries, halts the run (PAYMENT_REQUIRED).

Polls are timed for the regime (promptgrid.api.polling): finely while they are free (no cap known, or polls
not counted), sparingly once a cap counts them, and sparingly too under `rate_limit: auto` until one of ours
has finished: the cold start's fine schedule (scouts probing every few hundredths of a second) would spend
most of a counting API's first window on polls before its first 429 could tell. While polls count toward a
cap, ends are also seen through the executions listing, one request for all of ours in flight
(promptgrid.engine.ends_watch).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable

from promptgrid.api.polling import LatencyModel
from promptgrid.defaults import RATE_LIMIT_REQUESTS
from promptgrid.engine.config import EngineConfig, EngineStats
from promptgrid.engine.retry import NoRoom, Reachability
from promptgrid.errors import ApiError, PaymentRequired, Throttled
from promptgrid.quota.adaptive import SlotGate, infer_rate_limit
from promptgrid.quota.base import Budget

log = logging.getLogger(__name__)

# How a refusal speaks of concurrency, or of a request rate, in the API's words or a gateway's.
_ABOUT_CONCURRENCY = re.compile(r"concurren|in[ -]?flight|parallel|simultaneous", re.IGNORECASE)
_ABOUT_RATE = re.compile(r"\brequests?\s+(?:per|/|an?|each|every)\b|\brate\b", re.IGNORECASE)
# The errors page's transient 429 for a burst of creates; its exact wording is not published.
_ABOUT_BURST = re.compile(r"\bstarted at once\b|\bat once\b.*\bstarted\b|\bburst", re.IGNORECASE)
# Answers remembered for inferring a cap: enough for a window of a few thousand requests.
_ANSWERS_KEPT = 4096


class ApiLimits:
    """The engine's reading of the API's limits: the budget's cap, the in-flight gate, and their counters.

    It watches every request the engine's gateway sends (promptgrid.api.gateway.RequestWatcher).
    """

    def __init__(
        self,
        config: EngineConfig,
        budget: Budget,
        latency: LatencyModel,
        stats: EngineStats,
        clock: Callable[[], float],
        reachability: Reachability | None = None,
    ):
        self.config = config
        self.limits = config.limits
        self.auto = config.limits.requests is None
        self.budget = budget
        self.latency = latency
        self.stats = stats
        self.gate = SlotGate(config.limits.max_in_flight, clock=clock)
        self.reachability = reachability or Reachability(config.unreachable_after)
        self._clock = clock
        self._answered: deque[tuple[float, str]] = deque(maxlen=_ANSWERS_KEPT)
        self._adopted_at = float("-inf")
        self._warm = not config.limits.polls_count  # the spec says polls never count: nothing to spare
        # Under auto, until more requests than the model page's cap were answered in its window (no cap
        # met), polls may count: the free schedule is kept thrifty (PollPolicy.unproven_polls).
        self._recent: deque[float] | None = deque() if self.auto and config.limits.polls_count else None
        latency.set_polls_unproven(self._recent is not None)
        latency.set_polls_free(self.polls_free)
        self._note_room(room_scarce=False)

    @property
    def polls_free(self) -> bool:
        """Whether polls are timed finely: not while they count toward a cap, nor in the cold start."""
        return self._warm and not (self.limits.capped and self.limits.polls_count)

    def answered(self, kind: str, failure: ApiError | None = None) -> None:
        """A request of `kind` ended (anything but a 429): the API counted it, if it counts any, and may
        have answered (anything but a transport failure is an answer)."""
        self.reachability.heard(failure)
        now = self._clock()
        self._answered.append((now, kind))
        recent = self._recent
        if recent is not None:
            recent.append(now)
            while recent[0] < now - self.config.page_window_s:
                recent.popleft()
            if len(recent) > RATE_LIMIT_REQUESTS:
                self._proven_free()

    def _proven_free(self) -> None:
        self._recent = None
        self.latency.set_polls_unproven(False)

    async def throttled(self, kind: str, exc: Throttled, sent_at: float) -> None:
        """A 429: NoRoom when it is about room for one more prediction (nothing pauses: ours finishing makes
        room), else about the request rate (see `rate_limited`)."""
        self.reachability.heard(exc)
        if self.about_room(kind, exc):
            raise NoRoom(exc)
        await self.rate_limited(kind, exc, sent_at)

    def about_room(self, kind: str, exc: ApiError) -> bool:
        """Whether a refusal says there is no room for one more prediction (rather than too many requests)."""
        if isinstance(exc, PaymentRequired):
            return True
        if kind != "create" or not isinstance(exc, Throttled):
            return False
        if _ABOUT_CONCURRENCY.search(exc.message):
            return True
        if _ABOUT_RATE.search(exc.message) or _ABOUT_BURST.search(exc.message):
            return False
        # Unsaid: with our cap full (our own create holds an entry), a full organisation is the likelier.
        return self.gate.active >= self.gate.cap

    async def rate_limited(self, kind: str, exc: Throttled, sent_at: float) -> None:
        """A 429 not about room: pause every caller; one that names a rate also adopts or lowers a cap
        under `auto`. A burst of creates pauses nothing: the create that met it backs off alone (jittered,
        so the creates refused together do not come back together), and polls go on."""
        self.stats.throttled += 1
        if is_burst(exc):
            return
        if names_a_rate(exc):
            self.stats.rate_limited += 1
            if self.auto and (sent_at >= self._adopted_at or self._shows_polls_count(kind)):
                self._adopt(kind, exc)
        await self.budget.on_throttled(exc.retry_after_s, kind)

    def refused(self, exc: ApiError, probe: bool = False) -> bool:
        """A create met no room; the gate closes down to what the API took. True: halt the run (402).

        A room probe refused (promptgrid.quota.adaptive.SlotGate) is counted apart: its job was waiting
        already, and nothing moves."""
        idle = self.gate.running == 0
        retry_after = exc.retry_after_s if isinstance(exc, Throttled) else None
        self.gate.refused(retry_after, self.config.idle_retry_s, self.config.max_backoff_s, probe)
        if probe:
            self.stats.refused_probes += 1
            self.stats.throttled += isinstance(exc, Throttled)
            return False
        self._note_room(room_scarce=True)
        if isinstance(exc, PaymentRequired):
            self.stats.payment_waits += 1
            return idle and self.gate.idle_refusals >= self.config.payment_tries
        self.stats.throttled += 1
        self.stats.room_waits += 1
        return False

    def finished(self) -> None:
        """One of ours ended at the API: the gate may open one slot more, and the cold start is over."""
        if not self._warm:
            self._warm = True
            self.latency.set_polls_free(self.polls_free)
        self.gate.finished()
        self._note_room(room_scarce=self.gate.lowered)

    def _note_room(self, *, room_scarce: bool) -> None:
        """Tell the gate whether room probes may go (creates free of any cap), and the poll timing how much
        room the API gives us and, under a cap counting polls, how long a prediction may wait for its poll
        before the slots rather than the cap set the pace: the slots over the images per second the cap
        allows at a create and a poll each."""
        latency, gate, limits = self.latency, self.gate, self.limits
        # Room probes find the slots that free at the API; polls need not hurry to see them.
        gate.room_probes = self.config.room_probes and not limits.counts("create")
        latency.room_scarce = room_scarce and not gate.room_probes
        latency.room_share = gate.cap / gate.limit
        counted = limits.requests is not None and limits.polls_count
        latency.hold_s = gate.cap * 2 * limits.floor_interval_s if counted else None

    def _polls_count(self, kind: str) -> bool:
        """Whether polls are read as counted: never if the spec says so, else once a poll met a 429."""
        if not self.config.limits.polls_count:
            return False
        return kind == "poll" or (self.limits.capped and self.limits.polls_count)

    def _shows_polls_count(self, kind: str) -> bool:
        """Whether a 429 on `kind` shows polls count toward a cap adopted as creates-only: a poll refused
        shows it whenever it was sent (a 429 sent before a cap says nothing only of the cap's height)."""
        creates_only = self.limits.capped and not self.limits.polls_count
        return kind == "poll" and creates_only and self._polls_count(kind)

    def _adopt(self, kind: str, exc: Throttled) -> None:
        adopted = self.limits if self.limits.capped else None
        limits = infer_rate_limit(
            self._answered,
            self._clock(),
            exc.retry_after_s,
            polls_count=self._polls_count(kind),
            max_in_flight=self.limits.max_in_flight,
            adopted=adopted,
            longest_window_s=self.config.page_window_s,
        )
        now = self._clock()
        answered = [t for t, k in self._answered if limits.counts(k) and t > now - limits.window_s]
        self.budget.adopt(limits, answered)
        self.limits, self._adopted_at = limits, now
        self._proven_free()  # a cap is known: polls are timed for it
        self.latency.set_polls_free(self.polls_free)
        self._note_room(room_scarce=self.gate.lowered)
        self.stats.adopted_limit = limits.describe()
        # Again under a cap: lower, or as high with polls counted in it (24 creates, then 60 with the polls).
        verb = "revised to" if adopted is not None else "adopted"
        log.warning(
            "the API limits requests (HTTP 429 on a %s): cap %s %s for the rest of the run",
            kind,
            verb,
            limits.describe(),
        )


def is_burst(exc: ApiError) -> bool:
    """Whether a 429 is the transient one for too many executions started at once."""
    return isinstance(exc, Throttled) and bool(_ABOUT_BURST.search(exc.message))


def names_a_rate(exc: Throttled) -> bool:
    """Whether a 429 speaks of a request rate (not of a burst of creates started at once)."""
    return bool(_ABOUT_RATE.search(exc.message)) and not _ABOUT_BURST.search(exc.message)
