"""The prediction engine: jobs in, outcomes out — create, poll, fetch, within the budget, with safe retries.

The engine is composed of parts that each own one thing: every request goes through one `Gateway` (the
budget, and the rule that reads may go again while a create never goes again blindly:
promptgrid.api.gateway); what is retried and how each failure ends a job is the policy in
`promptgrid.engine.retry`; how the API's limits are read and met (a request cap adopted under
`rate_limit: auto`, in-flight room, 402 waits) is `promptgrid.engine.limits`; polling, the deadline and
best-effort cancel are `promptgrid.engine.waiting`; a create whose outcome is unknown is settled by the
lost-create search (`promptgrid.engine.lost_creates`); what it tells the store is the `JobEvents` protocol
(`promptgrid.engine.events`).

Two places matter to whoever watches spending or progress: `Engine._create` is where every create is about
to be sent (and `JobEvents.on_sending` told as its first byte leaves), and `Engine._in_a_slot` is where each
prediction is known to have finished at the API (`ApiLimits.finished`).

A run that is cancelled (Ctrl-C) leaves its predictions running: the ids already went to `on_created`, so a
resumed run polls them instead of paying for them twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any

from promptgrid.aio import as_async_iterator
from promptgrid.api.client import ApiClient, created_nothing
from promptgrid.api.gateway import Gateway, ReadRetry
from promptgrid.api.polling import LatencyModel
from promptgrid.api.prediction import Prediction, PredictionStatus
from promptgrid.api.routes import ModelRoutes
from promptgrid.engine.collect import collect
from promptgrid.engine.config import EngineConfig, EngineStats, PrepareInputs
from promptgrid.engine.events import JobEvents, NoEvents
from promptgrid.engine.limits import ApiLimits, is_burst
from promptgrid.engine.lost_creates import LostCreates
from promptgrid.engine.retry import (
    Halt,
    JobDeferred,
    JobEnded,
    NoRoom,
    RetryAttempt,
    backoff_s,
    create_refused,
    ended_by_error,
    failed,
    halts_the_run,
    is_retryable,
    no_room,
    not_submitted,
    outcome_unknown,
)
from promptgrid.engine.spend import SpendGuard
from promptgrid.engine.stall import StallWatch
from promptgrid.engine.waiting import PredictionWaits
from promptgrid.errors import (
    ApiError,
    ApiUnreachable,
    BudgetExhausted,
    ModelNotFound,
    PaymentRequired,
    PromptgridError,
    QuotaUnavailable,
    Stalled,
    Throttled,
)
from promptgrid.quota.base import Budget
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus

log = logging.getLogger(__name__)


class Engine:
    """Turns jobs into outcomes through one gateway (an ApiClient and a Budget), shared by all its jobs."""

    def __init__(
        self,
        client: ApiClient,
        budget: Budget,
        config: EngineConfig | None = None,
        *,
        events: JobEvents | None = None,
        prepare_inputs: PrepareInputs | None = None,
        routes: ModelRoutes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.budget = budget
        self.config = config = config or EngineConfig()
        self.events: JobEvents = events or NoEvents()
        self.prepare_inputs = prepare_inputs
        # Which slug each model is sent as (resolved before the run); without, the job's model as it is.
        self.routes = routes or ModelRoutes()
        self.latency = LatencyModel(config.poll)
        self.stats = EngineStats()
        self.halt = Halt(client.base_url, config.unreachable_after)
        self.deferred: set[str] = set()  # jobs stopped with no outcome: nothing of them was sent
        self._clock = clock
        self.limits = ApiLimits(config, budget, self.latency, self.stats, clock, self.halt.reachability)
        self.gateway = Gateway(client, budget, self.limits, requests=self.stats.requests, clock=clock)
        self.waits = PredictionWaits(self.gateway, self.limits, self.halt, self.routes, clock)
        retry = ReadRetry(tries=8, base_s=config.retry_backoff_s, cap_s=config.max_backoff_s)
        self.lost_creates = LostCreates(self.gateway, self.routes.slug_for, prepare_inputs, retry=retry)
        self.spend = SpendGuard(config.spend)
        self.stall = StallWatch(config.stall_timeout_s, clock)

    @property
    def client(self) -> ApiClient:
        return self.gateway.client

    @property
    def halted(self) -> PromptgridError | None:
        """Why no further job is taken (a refused key, 402s, an unreachable API or quota, a spend cap, a
        stall), or None."""
        return self.halt.halted

    async def run(
        self, jobs: Iterable[Job] | AsyncIterable[Job], resume: Mapping[str, str] | None = None
    ) -> AsyncIterator[JobOutcome]:
        """Run jobs concurrently, yielding outcomes as they complete; memory stays bounded however many jobs.

        `resume` maps job ids to prediction ids created by an earlier run: those are polled, not created.
        After a 402 or 401, no further job is sent: in-flight work is collected, every job left (but one
        whose prediction exists) is handed back with an outcome saying why it was not sent, then the error
        is raised. (Jobs stopped because the
        API is unreachable get no outcome at all: nothing of them is recorded, so a rerun takes them up.)
        """
        resume = resume or {}
        source = as_async_iterator(jobs)
        width = self.config.limits.max_in_flight + (
            self.config.queue_size or self.config.limits.max_in_flight
        )
        pending: set[asyncio.Task[JobOutcome]] = set()
        done: set[asyncio.Task[JobOutcome]] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and self.halted is None and len(pending) < width:
                    job = await anext(source, None)
                    if job is None:
                        exhausted = True
                    else:
                        pending.add(asyncio.create_task(self.run_job(job, resume.get(job.job_id))))
                if not pending:
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if (outcome := task.result()).job_id not in self.deferred:
                        yield outcome
            unreachable = isinstance(self.halted, ApiUnreachable | QuotaUnavailable)
            if not exhausted and self.halted is not None and not unreachable:
                async for job in source:
                    if job.job_id not in resume:  # one already created is left for a rerun to poll
                        yield self._not_sent(job, self.halted)
        finally:
            for task in pending:
                task.cancel()
            # Collected, so a failure beside the one being raised is not reported again as never retrieved.
            await asyncio.gather(*pending, *done, return_exceptions=True)
            self.stats.spend = self.spend.describe()
        if self.halted is not None:
            raise self.halted

    def _not_sent(self, job: Job, halted: PromptgridError) -> JobOutcome:
        """The outcome of a job handed to a run that had halted: never sent, and why."""
        ended = not_submitted(halted)
        self.stats.outcomes[ended.status.value] += 1
        return JobOutcome(
            job_id=job.job_id,
            status=ended.status,
            error_code=ended.code,
            error_message=ended.message,
            queued_at=_now(),
            completed_at=_now(),
        )

    async def run_job(self, job: Job, resume_prediction_id: str | None = None) -> JobOutcome:
        """Run one job to a terminal outcome; failures are outcomes, not exceptions."""
        outcome = JobOutcome(job_id=job.job_id, status=JobStatus.FAILED, queued_at=_now())
        prediction_id = resume_prediction_id
        try:
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    prediction = await self._attempt(job, outcome, attempt, prediction_id)
                except RetryAttempt as retry:
                    if attempt == self.config.max_attempts:
                        raise ended_by_error(retry.prediction) from None
                    self.stats.retried_attempts += 1
                    prediction_id = None
                    continue
                await collect(self.client.storage, self.config, job, prediction, outcome)
                break
        except JobEnded as ended:
            outcome.status = ended.status
            outcome.error_code, outcome.error_message = ended.code, ended.message
        except JobDeferred:
            self.deferred.add(job.job_id)
            return outcome
        except QuotaUnavailable as exc:  # the shared limits are gone: nothing more may be sent
            self.halt.stop(exc)
            self.deferred.add(job.job_id)
            return outcome
        outcome.completed_at = _now()
        self.stats.outcomes[outcome.status.value] += 1
        return outcome

    async def _attempt(self, job: Job, outcome: JobOutcome, attempt: int, known_id: str | None) -> Prediction:
        """One prediction from slot to terminal state: create (or resume), report the id, poll."""
        prediction = await self._in_a_slot(job, outcome, attempt, known_id)
        outcome.predict_time_s = prediction.predict_time_s
        if prediction.cost_usd is not None:
            outcome.cost_usd = (outcome.cost_usd or 0.0) + prediction.cost_usd
        if prediction.status is PredictionStatus.ERROR and is_retryable(
            prediction, self.config.retryable_codes
        ):
            raise RetryAttempt(prediction)
        return prediction

    async def _in_a_slot(
        self, job: Job, outcome: JobOutcome, attempt: int, known_id: str | None
    ) -> Prediction:
        """Hold a slot from create to terminal state.

        A create refused for want of room gives the slot back and waits for one again, ahead of the queue.
        """
        gate = self.limits.gate
        inputs: Mapping[str, Any] | None = None
        refused_since: float | None = None
        while True:
            probe = await gate.enter(first=refused_since is not None)  # a room probe (SlotGate)
            token = await self.budget.take_slot()
            self.stats.in_flight += 1
            running = False
            try:
                if known_id is None:
                    self.halt.refuse_if_halted()
                    if (missing := self.routes.missing(job.model)) is not None:  # refused in every spelling
                        raise failed(ErrorCode.MODEL_NOT_FOUND, missing)
                    inputs = inputs if inputs is not None else await self._prepare(job)
                    self._halt_on(lambda: self.spend.reserve(job))
                    outcome.attempts = attempt  # counted once sent: an unknown create may have made one
                    try:
                        prediction_id = await self._create(job, inputs, outcome)
                    except NoRoom as no:
                        self.spend.unsent(job)
                        refused_since, probe = self._no_room(no.refusal, refused_since, probe), False
                        continue
                    except BaseException as exc:
                        self.spend.create_raised(job, exc)
                        raise
                else:
                    prediction_id = known_id
                began = self._clock()  # polls are timed from here, not from after the journal
                gate.accepted(probe)
                self.stall.progressed()
                running = True
                await self._started(job, outcome, attempt, prediction_id, resumed=known_id is not None)
                try:
                    prediction = await self.waits.until_finished(job, prediction_id, outcome, began, known_id)
                finally:
                    self.stats.waiting.pop(prediction_id, None)
                self.limits.finished()
                self.stall.progressed()
                self.spend.settle(job, prediction.cost_usd, prediction.status is PredictionStatus.SUCCESS)
                return prediction
            finally:
                self.stats.in_flight -= 1
                await self.budget.release_slot(token)
                gate.leave(running, probe)

    async def _started(
        self, job: Job, outcome: JobOutcome, attempt: int, prediction_id: str, *, resumed: bool
    ) -> None:
        """Note a prediction the API runs for this job: resumed, or new and reported to `on_created`."""
        outcome.prediction_id = prediction_id
        self.lost_creates.known(prediction_id)
        if resumed:
            outcome.attempts = max(outcome.attempts, attempt)
            outcome.submitted_at = outcome.submitted_at or _now()
        else:
            await self.events.on_created(job, prediction_id, attempt)

    def _no_room(self, refusal: ApiError, since: float | None, probe: bool = False) -> float:
        """Note a create refused for want of room; end the job past `room_wait_s` or when the run halts."""
        self._halt_on(lambda: self.stall.refused(refusal))
        if self.limits.refused(refusal, probe):
            self.halt.stop(refusal)
            raise create_refused(refusal)
        now = self._clock()
        since = now if since is None else since
        if now - since > self.config.room_wait_s:
            raise no_room(now - since, refusal)
        return since

    def _halt_on(self, check: Callable[[], None]) -> None:
        """Run a guard's check (spend caps, stalls); the halt it raises stops the run, and this job."""
        try:
            check()
        except (BudgetExhausted, Stalled) as exc:
            self.halt.stop(exc)
            raise not_submitted(exc) from None

    async def _prepare(self, job: Job) -> Mapping[str, Any]:
        if self.prepare_inputs is None:
            return job.inputs
        try:
            return await self.prepare_inputs(job)
        except Exception as exc:  # the pipeline's hook: whatever it raised is this job's failure
            raise failed(ErrorCode.INPUT_PREPARATION_FAILED, f"{type(exc).__name__}: {exc}") from None

    async def _create(self, job: Job, inputs: Mapping[str, Any], outcome: JobOutcome) -> str:
        """Send the create — the one place a create is about to be sent — and again only when it provably
        created nothing (or the listing shows so); a lost answer's prediction is adopted.

        Raises NoRoom when the API has no room for it now (concurrency, balance): the caller waits for room.
        """
        config, throttled_since, bursts = self.config, None, 0
        resends = 0
        slug = self.routes.slug_for(job.model)
        while True:
            outcome.model_slug = slug
            sent_at = datetime.now(UTC)
            try:
                prediction_id = await self.gateway.create(
                    slug, job.version, inputs, before_send=self._announcer(job, outcome), tally=outcome
                )
            except ModelNotFound as exc:  # refused: nothing was created, so sending again is safe
                slug = await self._after_model_not_found(job, slug, exc)
                resends = self._count_resend(resends, exc)
            except (
                Throttled
            ) as exc:  # the budget paused (a rate), or a burst: sending again makes nothing twice
                await self.events.on_unsent(job, outcome.attempts)
                self._halt_on(partial(self.stall.refused, exc))
                throttled_since = throttled_since or self._clock()
                if (waited := self._clock() - throttled_since) > config.room_wait_s:
                    raise no_room(waited, exc) from None
                if is_burst(exc):  # this create alone backs off, jittered, longer at each burst it meets
                    bursts += 1
                    await asyncio.sleep(backoff_s(bursts - 1, config.retry_backoff_s, config.max_backoff_s))
            except NoRoom:
                await self.events.on_unsent(job, outcome.attempts)
                raise
            except PaymentRequired as exc:
                await self.events.on_unsent(job, outcome.attempts)
                raise NoRoom(exc) from None
            except ApiError as exc:
                if not outcome_unknown(exc) and not created_nothing(exc):
                    if halts_the_run(exc):
                        self.halt.stop(exc)
                    raise create_refused(exc) from None
                found = None
                if not created_nothing(exc):
                    lag_s, stats = self.config.listing_lag_s, self.stats
                    found = await self.lost_creates.settle(job, slug, inputs, sent_at, exc, lag_s, stats)
                if found is not None:
                    return self._sent(outcome, found)
                await self.events.on_unsent(job, outcome.attempts)  # nothing was made: withdraw the trace
                self.halt.if_unreachable(exc)
                self.stats.transient_errors += 1
                resends = self._count_resend(resends, exc)
                await asyncio.sleep(backoff_s(resends - 1, config.retry_backoff_s, config.max_backoff_s))
                self.halt.if_unreachable(None)
            else:
                return self._sent(outcome, prediction_id)
            self.stats.create_resends += 1

    def _announcer(self, job: Job, outcome: JobOutcome) -> Callable[[], Awaitable[None]]:
        """What the client runs as the create's first byte leaves: the store is told (`on_sending`)."""
        attempt = outcome.attempts

        async def announce() -> None:
            await self.events.on_sending(job, attempt)

        return announce

    def _sent(self, outcome: JobOutcome, prediction_id: str) -> str:
        self.stats.creates += 1
        outcome.submitted_at = _now()
        return prediction_id

    def _count_resend(self, resends: int, exc: ApiError) -> int:
        """One more re-send of a create, or the job ends past `create_retries`."""
        if resends >= self.config.create_retries:
            raise failed(ErrorCode.CREATE_FAILED, f"the API kept refusing the create: {exc.message}")
        return resends + 1

    async def _after_model_not_found(self, job: Job, refused: str, exc: ModelNotFound) -> str:
        """The slug to send next, after resolving the model again; ends the job when there is none."""
        slug = await self.routes.after_not_found(self.gateway, job.model, refused)
        if slug is None:
            raise failed(ErrorCode.MODEL_NOT_FOUND, self.routes.missing(job.model) or exc.message)
        return slug


def _now() -> datetime:
    return datetime.now(UTC)
