"""The prediction engine: jobs in, outcomes out — create, poll, fetch, within the budget, with safe retries.

What is retried and how each failure ends a job is the policy in `promptgrid.engine.retry`; how the
API's limits are read and met (a request cap adopted under `rate_limit: auto`, in-flight room, 402 waits) is
in `promptgrid.engine.limits`; polling, the deadline and best-effort cancel are in
`promptgrid.engine.waiting`.

A run that is cancelled (Ctrl-C) leaves its predictions running: the ids already went to `on_created`, so a
resumed run polls them instead of paying for them twice. For the same reason an exception raised by
`on_created` (the id could not be recorded) stops the run rather than create predictions a resume cannot find.
`on_sending` is told of each create as its first byte leaves (not before: one cancelled while it waited
for a connection was never sent), so a run that dies before reading the answer leaves a trace: its rerun
knows that create's outcome is unknown and does not send it blindly again.
`on_unsent` withdraws that trace when the create provably created nothing (never left, or was refused).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from promptgrid.aio import as_async_iterator
from promptgrid.api.client import ApiClient, created_nothing
from promptgrid.api.polling import LatencyModel
from promptgrid.api.prediction import Prediction, PredictionStatus
from promptgrid.api.routes import ModelRoutes
from promptgrid.engine.collect import collect
from promptgrid.engine.config import EngineConfig, EngineStats, OnCreated, OnSending, PrepareInputs
from promptgrid.engine.limits import ApiLimits
from promptgrid.engine.retry import (
    JobDeferred,
    JobEnded,
    NoRoom,
    Reachability,
    RetryAttempt,
    create_refused,
    ended_by_error,
    failed,
    halts_the_run,
    is_retryable,
    no_room,
    not_submitted,
    unknown_create,
)
from promptgrid.engine.waiting import PredictionWaits
from promptgrid.errors import (
    ApiError,
    ApiUnreachable,
    ModelNotFound,
    PaymentRequired,
    ServerFailure,
    Throttled,
    TransportFailure,
)
from promptgrid.quota.base import Budget
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus

T = TypeVar("T")


class Engine(PredictionWaits):
    """Turns jobs into outcomes through one ApiClient and one Budget, shared by all the jobs it runs."""

    def __init__(
        self,
        client: ApiClient,
        budget: Budget,
        config: EngineConfig | None = None,
        *,
        on_created: OnCreated | None = None,
        on_sending: OnSending | None = None,
        on_unsent: OnSending | None = None,
        prepare_inputs: PrepareInputs | None = None,
        routes: ModelRoutes | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.budget = budget
        self.config = config or EngineConfig()
        self.on_created = on_created
        self.on_sending = on_sending
        self.on_unsent = on_unsent
        self.prepare_inputs = prepare_inputs
        # Which slug each model is sent as (resolved before the run); without, the job's model as it is.
        self.routes = routes or ModelRoutes(client)
        self.latency = LatencyModel(self.config.poll)
        self.stats = EngineStats()
        self.halted: ApiError | None = None
        self.reachability = Reachability(self.config.unreachable_after)
        self.deferred: set[str] = set()  # jobs stopped with no outcome: nothing of them was sent
        self._clock = clock
        self.limits = ApiLimits(self.config, budget, self.latency, self.stats, clock)

    async def run(
        self, jobs: Iterable[Job] | AsyncIterable[Job], resume: Mapping[str, str] | None = None
    ) -> AsyncIterator[JobOutcome]:
        """Run jobs concurrently, yielding outcomes as they complete; memory stays bounded however many jobs.

        `resume` maps job ids to prediction ids created by an earlier run: those are polled, not created.
        After a 402 or 401, no further jobs are taken; the error is raised once in-flight work is collected.
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
        finally:
            for task in pending:
                task.cancel()
            # Collected, so a failure beside the one being raised is not reported again as never retrieved.
            await asyncio.gather(*pending, *done, return_exceptions=True)
        if self.halted is not None:
            raise self.halted

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
            await gate.enter(first=refused_since is not None)
            token = await self.budget.take_slot()
            self.stats.in_flight += 1
            running = False
            try:
                if known_id is None:
                    self._refuse_if_halted()
                    if (missing := self.routes.missing(job.model)) is not None:  # refused in every spelling
                        raise failed(ErrorCode.MODEL_NOT_FOUND, missing)
                    inputs = inputs if inputs is not None else await self._prepare(job)
                    outcome.attempts = attempt  # counted once sent: an unknown create may have made one
                    try:
                        prediction_id = await self._create(job, inputs, outcome)
                    except NoRoom as no:
                        refused_since = self._no_room(no.refusal, refused_since)
                        continue
                else:
                    prediction_id = known_id
                created_at = self._clock()  # polls are timed from here, not from after the journal
                gate.accepted()
                running = True
                await self._started(job, outcome, attempt, prediction_id, resumed=known_id is not None)
                try:
                    prediction = await self._wait_until_finished(job, prediction_id, outcome, created_at)
                finally:
                    self.stats.waiting.pop(prediction_id, None)
                self.limits.finished()
                return prediction
            finally:
                self.stats.in_flight -= 1
                await self.budget.release_slot(token)
                gate.leave(running)

    async def _started(
        self, job: Job, outcome: JobOutcome, attempt: int, prediction_id: str, *, resumed: bool
    ) -> None:
        """Note a prediction the API runs for this job: resumed, or new and reported to `on_created`."""
        outcome.prediction_id = prediction_id
        if resumed:
            outcome.attempts = max(outcome.attempts, attempt)
            outcome.submitted_at = outcome.submitted_at or _now()
        elif self.on_created is not None:
            await self.on_created(job, prediction_id, attempt)

    def _no_room(self, refusal: ApiError, since: float | None) -> float:
        """Note a create refused for want of room; end the job past `room_wait_s` or when the run halts."""
        if self.limits.refused(refusal):
            self.halted = self.halted or refusal
            raise create_refused(refusal)
        now = self._clock()
        since = now if since is None else since
        if now - since > self.config.room_wait_s:
            raise no_room(now - since, refusal)
        return since

    async def _prepare(self, job: Job) -> Mapping[str, Any]:
        if self.prepare_inputs is None:
            return job.inputs
        try:
            return await self.prepare_inputs(job)
        except Exception as exc:  # the pipeline's hook: whatever it raised is this job's failure
            raise failed(ErrorCode.INPUT_PREPARATION_FAILED, f"{type(exc).__name__}: {exc}") from None

    async def _create(self, job: Job, inputs: Mapping[str, Any], outcome: JobOutcome) -> str:
        """Send the create, re-sending only when the API provably created nothing.

        Raises NoRoom when the API has no room for it now (concurrency, balance): the caller waits for room.
        """
        announce = None
        if self.on_sending is not None:
            on_sending, attempt = self.on_sending, outcome.attempts

            async def announce() -> None:
                await on_sending(job, attempt)

        throttled_since = None
        resends = 0
        slug = self.routes.slug_for(job.model)
        while True:
            outcome.model_slug = slug
            try:
                prediction_id = await self._call(
                    "create", outcome, self.client.create, slug, job.version, inputs, before_send=announce
                )
            except ModelNotFound as exc:  # refused: nothing was created, so sending again is safe
                slug = await self._after_model_not_found(job, slug, exc)
                if resends >= self.config.create_retries:
                    message = f"the API kept refusing the create: {exc.message}"
                    raise failed(ErrorCode.CREATE_FAILED, message) from None
                resends += 1
            except Throttled as exc:  # about the rate: the budget paused; sending again creates nothing twice
                await self._unsent(job, outcome)
                throttled_since = throttled_since or self._clock()
                if self._clock() - throttled_since > self.config.room_wait_s:
                    raise no_room(self._clock() - throttled_since, exc) from None
            except NoRoom:
                await self._unsent(job, outcome)
                raise
            except (ServerFailure, TransportFailure) as exc:
                if not created_nothing(exc):
                    raise unknown_create(exc) from None
                await self._unsent(job, outcome)
                self._halt_if_unreachable(exc)
                self.stats.transient_errors += 1
                if resends >= self.config.create_retries:
                    message = f"the API kept refusing the create: {exc.message}"
                    raise failed(ErrorCode.CREATE_FAILED, message) from None
                await asyncio.sleep(self._backoff(resends))
                self._halt_if_unreachable(None)
                resends += 1
            except PaymentRequired as exc:
                await self._unsent(job, outcome)
                raise NoRoom(exc) from None
            except ApiError as exc:
                if halts_the_run(exc):
                    self.halted = self.halted or exc
                raise create_refused(exc) from None
            else:
                self.stats.creates += 1
                outcome.submitted_at = _now()
                return prediction_id
            self.stats.create_resends += 1

    async def _after_model_not_found(self, job: Job, refused: str, exc: ModelNotFound) -> str:
        """The slug to send next, after resolving the model again; ends the job when there is none."""
        slug = await self.routes.after_not_found(job.model, refused)
        if slug is None:
            raise failed(ErrorCode.MODEL_NOT_FOUND, self.routes.missing(job.model) or exc.message)
        return slug

    async def _unsent(self, job: Job, outcome: JobOutcome) -> None:
        """The create provably created nothing: withdraw the trace `on_sending` left."""
        if self.on_unsent is not None:
            await self.on_unsent(job, outcome.attempts)

    def _refuse_if_halted(self) -> None:
        self._halt_if_unreachable(None)
        if self.halted is not None:
            raise not_submitted(self.halted)

    def _halt_if_unreachable(self, exc: ApiError | None) -> None:
        """Stop this job, with no outcome, once the API proves unreachable (this failure may prove it)."""
        if exc is not None and self.halted is None:
            self.halted = self.reachability.unreachable(exc, self.client.base_url)
        if isinstance(self.halted, ApiUnreachable):
            raise JobDeferred

    async def _call(
        self,
        kind: str,
        outcome: JobOutcome,
        method: Callable[..., Awaitable[T]],
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """One API request through the budget; its receipt is settled once the answer (or failure) is in.

        A create's `before_send` (in `kwargs`) is run by the client after the budget admitted the request,
        right before its first byte leaves: the moment from which its outcome is unknown until the answer.
        """
        receipt = await self.budget.take_request(kind)
        self.stats.requests[kind] += 1
        outcome.api_requests += 1
        sent_at = self._clock()
        try:
            answer = await method(*args, **kwargs)
        except Throttled as exc:
            self.reachability.heard(exc)
            if self.limits.about_room(kind, exc):
                raise NoRoom(exc) from None
            await self.limits.rate_limited(kind, exc, sent_at)
            raise
        except ApiError as exc:
            self.reachability.heard(exc)
            self.limits.answered(kind)  # anything the API answered, or may have, counts
            raise
        finally:
            if receipt is not None:
                receipt.settle()
        self.reachability.heard(None)
        self.limits.answered(kind)
        return answer


def _now() -> datetime:
    return datetime.now(UTC)
