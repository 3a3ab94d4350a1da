"""Waiting for a prediction to end: polls on the learned schedule, the deadline, and a best-effort cancel.

Cancel is best effort at the API: a prediction cancelled as stuck may run on, hold its slot, complete (and be
billed) or fail. So it keeps its slot in our count until the API reports it ended, polled at widening
intervals for `cancel_wait_s` at most; one that succeeded after all is returned like any other, so its image
is fetched and stored: it was paid for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from promptgrid.aio import wait_event
from promptgrid.api.gateway import Gateway, ReadRetry
from promptgrid.api.polling import LatencyKey, PollPlan
from promptgrid.api.prediction import Prediction, PredictionStatus
from promptgrid.api.routes import ModelRoutes
from promptgrid.engine.ends_watch import EndsWatch, Sighting
from promptgrid.engine.limits import ApiLimits
from promptgrid.engine.retry import Halt, JobEnded, failed
from promptgrid.errors import ApiError, AuthenticationFailed, PredictionNotFound, Throttled
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus

# After a cancel, the first look comes this share of the learned delay later, then twice as late each time.
_CANCEL_FIRST_LOOK = 0.1


class PredictionWaits:
    """The waits on one prediction: polls on the learned schedule, the deadline, a best-effort cancel."""

    def __init__(
        self, gateway: Gateway, limits: ApiLimits, halt: Halt, routes: ModelRoutes, clock: Callable[[], float]
    ):
        self.gateway, self.halt, self.routes = gateway, halt, routes
        self.config, self.latency, self.stats = limits.config, limits.latency, limits.stats
        self._clock = clock
        self.ends = EndsWatch(gateway, limits, self.config.watch, clock)

    async def until_finished(
        self, job: Job, prediction_id: str, outcome: JobOutcome, start: float, resumed: str | None = None
    ) -> Prediction:
        """Poll on the learned schedule until the prediction is terminal; past the deadline, cancel it.

        `start` is when the create was answered, or when the wait began for a prediction an earlier run made
        (`resumed`: its id): the listing is not watched for that one, whose creation time is not known. One
        made before the watch began (a cap adopted since) is watched from then on.
        """
        key = latency_key(job)
        plan = self.latency.plan(key)
        listed: asyncio.Future[Sighting] | None = None
        watchable = not resumed
        try:
            while True:
                if watchable and listed is None and self.ends.active:
                    listed = self.ends.watch(prediction_id, self.routes.slug_for(job.model), key, start)
                limit_s = self._deadline_s(key)
                deadline = start + limit_s
                self.stats.waiting[prediction_id] = (start, deadline)  # removed by the engine once it ends
                await self._sleep_until_poll(plan, start, deadline, listed, prediction_id)
                if watchable and listed is None and self.ends.active:
                    continue  # the listing began meanwhile (polls shown to count, or free): it sees the end
                if listed is not None and listed.done():
                    sighting = None if listed.cancelled() else listed.result()
                    listed, watchable = None, False
                    if sighting is None:
                        continue  # the watch stopped: polls on the schedule alone
                    if (ended := self._listed_success(key, start, sighting)) is not None:
                        return ended
                    # An error (a get tells its detail and whether to retry), or a success without output.
                sent = self._clock()
                try:
                    prediction = await self._poll(
                        prediction_id, outcome, deadline, watchable and listed is None
                    )
                except _HandedOver:
                    continue
                now = self._clock()
                if prediction is not None:
                    if listed is not None:
                        self.ends.polled_late(prediction.finished)
                    plan.record_poll(now - start, prediction.finished, sent - start)
                    if prediction.finished:
                        return prediction
                if prediction is None or now >= deadline:
                    seen = (
                        "never answered a poll" if prediction is None else f"still {prediction.raw_status!r}"
                    )
                    seen = f"{seen} after {limit_s:.3g} s"
                    self.ends.unwatch(prediction_id)  # the cancel's watch polls on its own
                    return await self._cancel_and_watch(prediction_id, outcome, seen, key)
        finally:
            self.ends.unwatch(prediction_id)

    def _listed_success(self, key: LatencyKey, start: float, sighting: Sighting) -> Prediction | None:
        """A success the listing showed, with its output: collected without a get (an error is polled, for
        its detail)."""
        ended = sighting.row.ended
        if ended is None or ended.status is not PredictionStatus.SUCCESS or not ended.output_urls:
            return None
        after = None if sighting.after is None else sighting.after - start
        self.latency.record_done(key, sighting.sent - start, after_s=after)
        self.stats.listed_ends += 1
        return ended

    def _deadline_s(self, key: tuple[str, int]) -> float:
        """The configured deadline, shortened once this kind of prediction's latency has been learned."""
        delay = self.latency.estimate(key)
        if delay is None:
            return self.config.deadline_s
        stuck_after = max(self.config.min_deadline_s, self.config.stuck_factor * delay)
        return min(self.config.deadline_s, stuck_after)

    async def _sleep_until_poll(
        self,
        plan: PollPlan,
        start: float,
        deadline: float,
        listed: asyncio.Future[Sighting] | None,
        prediction_id: str,
    ) -> None:
        """Sleep until the next poll; a cold schedule is cut short once another prediction sets the delay.

        While the listing watches it (promptgrid.engine.ends_watch), the poll comes late: `late_poll` times
        the schedule's, a listing's interval or two after, and not before two listings answered since the
        watch began (a 429's pause holds them back); a sighting wakes it at once."""
        while True:
            at = plan.next_poll_at()
            if listed is not None:
                if listed.done():
                    return
                at = at * self.config.watch.late_poll + 2 * self.ends.interval_s
            wake = min(start + at, deadline)
            delay = wake - self._clock()
            if (
                delay <= 0
                and listed is not None
                and wake < deadline
                and not self.ends.had_chance(prediction_id)
            ):
                delay = self.ends.interval_s  # the listing has not yet had the chance to show it
            if delay <= 0:
                return
            if listed is not None:
                await self._listed_or_learned(listed, plan, delay)
                continue
            learned = plan.learned
            if learned.is_set():
                await asyncio.sleep(delay)
                return
            if not await wait_event(learned, delay):
                return

    @staticmethod
    async def _listed_or_learned(listed: asyncio.Future[Sighting], plan: PollPlan, timeout: float) -> None:
        """Wait for a sighting, for another prediction to set the delay (a cold schedule), or `timeout`."""
        learned = None if plan.learned.is_set() else asyncio.ensure_future(plan.learned.wait())
        try:
            waits: set[asyncio.Future[Any]] = {listed} if learned is None else {listed, learned}
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if learned is not None:
                learned.cancel()

    async def _poll(
        self, prediction_id: str, outcome: JobOutcome, deadline: float, watchable: bool = False
    ) -> Prediction | None:
        """One get, sent again after transient failures (the gateway's rule for reads); None when the
        deadline comes first. A `watchable` prediction's poll met by a 429 that showed polls count is not
        sent again after the pause (`_HandedOver`): the listing, one request for all in flight, sees it."""
        retry = ReadRetry(
            tries=None,
            throttled_tries=None,
            until=deadline,
            base_s=self.config.retry_backoff_s,
            cap_s=self.config.max_backoff_s,
            on_failure=self._transient,
            after_throttled=(lambda: self.ends.active) if watchable else None,
        )
        try:
            return await self.gateway.get(prediction_id, retry, tally=outcome)
        except Throttled:
            if watchable and self.ends.active:
                raise _HandedOver from None
            return None  # the deadline came first
        except PredictionNotFound as exc:
            raise failed(ErrorCode.PREDICTION_NOT_FOUND, exc.message) from None
        except AuthenticationFailed as exc:
            self.halt.stop(exc)
            raise failed(ErrorCode.AUTHENTICATION_FAILED, exc.message) from None
        except ApiError:  # the deadline came first
            return None

    def _transient(self, exc: ApiError) -> None:
        """A poll failed and will go again: the prediction stays in the journal for a rerun to poll."""
        self.halt.if_unreachable(exc)
        self.stats.transient_errors += 1

    async def _cancel_and_watch(
        self, prediction_id: str, outcome: JobOutcome, seen: str, key: tuple[str, int]
    ) -> Prediction:
        """Cancel a stuck prediction, then hold its slot until the API says it ended (or `cancel_wait_s`)."""
        await self._cancel(prediction_id, outcome)
        start = self._clock()
        until = start + self.config.cancel_wait_s
        learned = self.latency.estimate(key) or self.config.retry_backoff_s
        wait = max(self.config.poll.min_interval_s, _CANCEL_FIRST_LOOK * learned)
        last: Prediction | None = None
        while self._clock() + wait < until:
            await asyncio.sleep(wait)
            wait *= 2
            last = await self._poll(prediction_id, outcome, until) or last
            if last is None or not last.finished:
                continue
            if last.status is PredictionStatus.SUCCESS:
                self.stats.late_successes += 1
                return last  # paid for: fetched and stored like any other
            ended = "it then ended in error" if last.status is PredictionStatus.ERROR else "cancelled"
            raise JobEnded(
                JobStatus.TIMED_OUT, ErrorCode.DEADLINE_EXCEEDED, f"{seen} (the deadline); {ended}"
            )
        message = f"{seen} (the deadline); cancelled, still not ended {self.config.cancel_wait_s:.3g} s later"
        raise JobEnded(JobStatus.TIMED_OUT, ErrorCode.DEADLINE_EXCEEDED, message)

    async def _cancel(self, prediction_id: str, outcome: JobOutcome) -> None:
        """Best effort: a cancel that fails leaves the prediction to the API's own timeout."""
        for _ in range(2):
            try:
                await self.gateway.cancel(prediction_id, tally=outcome)
                return
            except Throttled:
                continue
            except ApiError:
                return


class _HandedOver(Exception):
    """A poll given up for the executions listing, which began watching for ends meanwhile."""


def latency_key(job: Job) -> tuple[str, int]:
    try:
        steps = int(job.inputs.get("steps") or 0)
    except (TypeError, ValueError):
        steps = 0
    return job.model, steps
