"""Seeing predictions end through the executions listing: one request for every prediction of ours in flight.

Where polls count toward a request cap, each poll takes a place a create could have had, and a prediction
polled once when it is likely done still costs a request per image, plus the polls that come too early. The
listing (`GET /v1/executions`) answers for all of ours at once: one listing every `listing_every` spacings
of the cap (a sixth of the cap's requests) sees each end about half an interval after it, and a finished row
carries what a get would (status, output, `execution_cost`, `run_time`), so a success seen there is
collected without its get. An error is polled at once, for its detail and whether it may be retried.

Where polls are free (no cap, once `auto`'s first window showed none; or the spec says polls never count),
the listing is the quicker eye, not the thriftier one: a poll sees one end, a listing all of ours, so the
listing goes `free_listings` times per end while every slot is busy (the median latency over the slots)
and each prediction's own poll comes late. Not under a creates-only cap read off a create's 429: polls
may yet count there, and a listing that often would fill the window before the next 429 could tell.

The listing is best effort by the API's own account (it was once pulled from the docs for failing in
production), so it only hastens what polls would see: every watched prediction keeps a poll of its own, late
(`PredictionWaits`), in case the listing misses it. The watch stops for the rest of the run, with one log
line, after `listing_failures` listings in a row failed or came back full without one of ours, or when
polls it made late found predictions the listing had not shown (`missed_share` of at least `min_checked`
polls): a best-effort endpoint that lags would otherwise hold every slot for its lag.

Rows are matched by prediction id, which our create returned: exact, whatever the organisation's other keys
run. The listing is asked from the oldest watched prediction's creation (less `clock_margin_s`, since the
API's clock is not ours), newest first, one page of at most 100. A page that comes back full covers only the
newest: a watched prediction sent before it and not on it (one that has run long, such as one that never
finishes, with a hundred created since) goes back to its own polls, which would otherwise come late and
read as ends the listing missed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from promptgrid.api.executions import MAX_PAGE, Execution
from promptgrid.api.gateway import Gateway, ReadRetry
from promptgrid.api.polling import LatencyKey
from promptgrid.api.prediction import TERMINAL
from promptgrid.engine.config import WatchPolicy
from promptgrid.engine.limits import ApiLimits
from promptgrid.errors import ApiError, PromptgridError, Throttled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sighting:
    """A watched prediction's finished row, and when the listing that showed it left (engine clock); it
    ended after the listing before, if that one saw it (`after`)."""

    row: Execution
    sent: float
    after: float | None


@dataclass
class _Watched:
    slug: str
    key: LatencyKey
    since: datetime  # our clock's creation time
    seen: asyncio.Future[Sighting]
    started: float  # engine clock: when its wait began
    answers_before: int  # listings answered before it was watched


class _Sent:
    """The gateway's tally of one listing: counted once it left (the budget admitted it), and dated then,
    so a listing the budget held back does not date the ends it shows early."""

    def __init__(self, clock: Callable[[], float]):
        self._clock = clock
        self.count = 0
        self.at = clock()

    @property
    def api_requests(self) -> int:
        return self.count

    @api_requests.setter
    def api_requests(self, value: int) -> None:
        self.count, self.at = value, self._clock()


class EndsWatch:
    """The listing task and the predictions it watches for; see the module docstring."""

    def __init__(self, gateway: Gateway, limits: ApiLimits, policy: WatchPolicy, clock: Callable[[], float]):
        self.gateway, self.limits, self.policy = gateway, limits, policy
        self._clock = clock
        self._watched: dict[str, _Watched] = {}
        self._task: asyncio.Task[None] | None = None
        self._failures = self._blind = 0  # listings in a row that failed, full pages without ours
        self._checked = self._missed = 0
        self.given_up: str | None = None  # why the watch stopped for the run
        self._last_look_s: float | None = None  # engine clock: when the last listing that answered left
        self._answers = 0  # listings answered

    @property
    def active(self) -> bool:
        """Whether ends are watched now: the listing has not failed, and polls count toward a known cap or
        are known to be free (`free`)."""
        return self.policy.enabled and self.given_up is None and (self.counted or self.free)

    @property
    def counted(self) -> bool:
        """Polls count toward a known cap: a listing stands in for the polls it saves."""
        limits = self.limits.limits
        return limits.capped and limits.polls_count

    @property
    def free(self) -> bool:
        """Polls are free, and shown to be: no cap known once more requests than the page's cap were
        answered in its window, or the spec says polls never count (a creates-only cap read off a create's
        429 may yet count them). A listing sees every end of ours within its interval, where each poll sees
        one."""
        limits = self.limits
        known = not limits.limits.capped or not limits.config.limits.polls_count  # not a cap read off a 429
        shown = limits.polls_free and not limits.latency.polls_unproven
        return self.policy.free_listings > 0 and shown and known

    def watch(
        self, prediction_id: str, slug: str, key: LatencyKey, started: float
    ) -> asyncio.Future[Sighting] | None:
        """Watch for `prediction_id` (sent as `slug`, its latency learned under `key`) to end; its wait began
        at `started`. None while the watch is off."""
        if not self.active:
            return None
        elapsed = self._clock() - started
        since = datetime.now(UTC) - timedelta(seconds=elapsed)
        seen: asyncio.Future[Sighting] = asyncio.get_running_loop().create_future()
        self._watched[prediction_id] = _Watched(slug, key, since, seen, started, self._answers)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="promptgrid-ends-watch")
        return seen

    def unwatch(self, prediction_id: str) -> None:
        watched = self._watched.pop(prediction_id, None)
        if watched is not None and not watched.seen.done():
            watched.seen.cancel()
        if not self._watched and self._task is not None:
            self._task.cancel()
            self._task = None

    def had_chance(self, prediction_id: str) -> bool:
        """Whether two listings answered since `prediction_id` was watched, or none will (the listing
        stopped): its late poll is only for an end they did not show (a 429's pause holds listings back)."""
        watched = self._watched.get(prediction_id)
        listing = self._task is not None and not self._task.done()
        return watched is None or not listing or self._answers - watched.answers_before >= 2

    def polled_late(self, found_done: bool) -> None:
        """A watched prediction's own poll came: finding it done means the listing had not shown it."""
        self._checked += 1
        self._missed += found_done
        policy = self.policy
        if self._checked >= policy.min_checked and self._missed > policy.missed_share * self._checked:
            self._give_up(f"{self._missed} of {self._checked} late polls found ends it had not shown")

    @property
    def interval_s(self) -> float:
        """Where polls are free, see `_free_interval_s`. Else `listing_every` spacings of the cap; and under
        a cap far above what the slots need, no closer than a `per_latency` share of the shortest first-poll
        delay watched (the cold start's first probe while none is known), so listings stay fewer than the
        polls they stand in for."""
        if not self.counted:
            return self._free_interval_s()
        poll = self.limits.config.poll
        typical = self._quickest(self.limits.latency.estimate) or poll.cold_start_s
        share_of_cap = self.policy.listing_every * self.limits.limits.floor_interval_s
        return max(share_of_cap, typical * self.policy.per_latency, poll.min_interval_s)

    def _free_interval_s(self) -> float:
        """Where polls are free: `free_listings` listings per end while every slot is ours and busy, from
        the median latency of the quickest kind watched; until something has ended, one per cold-start
        delay (the scouts' first probe)."""
        poll = self.limits.config.poll
        median = self._quickest(self.limits.latency.median_s)
        if median is None:  # nothing has ended yet (a spec saying polls never count is free from the start)
            return max(poll.cold_start_s, poll.min_interval_s)
        slots = self.limits.limits.max_in_flight
        return max(median / (slots * self.policy.free_listings), poll.min_interval_s)

    def _quickest(self, measure: Callable[[LatencyKey], float | None]) -> float | None:
        """The least of `measure` over the kinds watched, or None while it knows none."""
        known = [value for watched in self._watched.values() if (value := measure(watched.key)) is not None]
        return min(known, default=None)

    async def _run(self) -> None:
        try:
            while self._watched and self.active:
                await asyncio.sleep(self.interval_s)
                if self._watched and self.active:
                    await self._look()
        except PromptgridError as exc:  # the budget itself failed (a shared quota lost): each wait polls
            self._give_up(f"its request could not be sent ({exc})")  # and meets it, and the run halts
        # The regime changed under it (a creates-only cap read off a 429 where polls were shown free): the
        # predictions it watched go back to their own schedules, not to polls made late for a listing.
        self._release()

    def _release(self, prediction_ids: list[str] | None = None) -> None:
        """Watched predictions (all, by default: none is left to keep a later listing going) back to their
        own polls."""
        for prediction_id in list(self._watched) if prediction_ids is None else prediction_ids:
            watched = self._watched.pop(prediction_id)
            if not watched.seen.done():
                watched.seen.cancel()

    async def _look(self) -> None:
        slugs = {watched.slug for watched in self._watched.values()}
        since = min(watched.since for watched in self._watched.values())
        since -= timedelta(seconds=self.policy.clock_margin_s)
        until = datetime.now(UTC) + timedelta(seconds=self.policy.clock_margin_s)
        retry = ReadRetry(tries=1, throttled_tries=1)
        count = _Sent(self._clock)
        try:
            page = await self.gateway.list_executions(
                retry, model=next(iter(slugs)) if len(slugs) == 1 else "", since=since, until=until,
                offset=0, limit=MAX_PAGE, tally=count,
            )  # fmt: skip
        except Throttled:
            return  # the budget pauses for it; the listing did not fail
        except ApiError as exc:
            self._failures += 1
            if self._failures >= self.policy.listing_failures:
                self._give_up(f"{self._failures} listings in a row failed (last: {exc.message})")
            return
        finally:
            self.limits.stats.listings += count.count  # sent, not merely planned
        self._failures = 0
        self._answers += 1
        sent = count.at
        before, self._last_look_s = self._last_look_s, sent
        for row in page.executions:
            watched = self._watched.get(row.id)
            if watched is not None and row.status in TERMINAL and not watched.seen.done():
                after = before if before is not None and before >= watched.started else None
                watched.seen.set_result(Sighting(row, sent, after))
        if len(page.executions) >= MAX_PAGE:
            self._release_beyond(page.executions, sent)
        else:
            self._blind = 0

    def _release_beyond(self, rows: list[Execution], sent: float) -> None:
        """A full page covers the newest alone: those watched before the listing left and not on it go
        back to their own polls. Pages showing none of ours `listing_failures` times in a row (the
        organisation's other keys create faster than ours end) give the listing up."""
        listed = {row.id for row in rows}
        shown = not listed.isdisjoint(self._watched)
        beyond = [pid for pid, each in self._watched.items() if pid not in listed and each.started < sent]
        self._release(beyond)
        self._blind = 0 if shown or not beyond else self._blind + 1
        if self._blind >= self.policy.listing_failures:
            self._give_up(
                f"{self._blind} full pages in a row showed none of ours (newer executions fill them)"
            )
        elif beyond:
            log.debug(
                "%d watched prediction(s) older than a full listing page: to their own polls", len(beyond)
            )

    def _give_up(self, why: str) -> None:
        self.given_up = why
        log.warning("the executions listing is no longer used to see predictions end: %s", why)
        self._release()
