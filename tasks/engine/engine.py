"""The prediction engine: jobs in, outcomes out — create, poll, fetch, within the budget, with safe retries.

What is retried and how each failure ends a job is the policy in `promptgrid.tasks.engine.retry`.

A run that is cancelled (Ctrl-C) leaves its predictions running: the ids already went to `on_created`, so a
resumed run polls them instead of paying for them twice. For the same reason an exception raised by
`on_created` (the id could not be recorded) stops the run rather than create predictions a resume cannot find.
`on_sending` is told of each create just before it leaves, so a run that dies before reading the answer
leaves a trace: its rerun knows that create's outcome is unknown and does not send it blindly again.
`on_unsent` withdraws that trace when the create provably created nothing (never left, or was refused).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from promptgrid.aio import as_async_iterator, wait_event
from promptgrid.errors import (
    ApiError,
    ApiUnreachable,
    AuthenticationFailed,
    ModelNotFound,
    PredictionNotFound,
    ServerFailure,
    Throttled,
    TransportFailure,
)
from promptgrid.tasks.api.client import ApiClient, created_nothing
from promptgrid.tasks.api.polling import LatencyModel, PollPlan
from promptgrid.tasks.api.prediction import Prediction, PredictionStatus
from promptgrid.tasks.api.routes import ModelRoutes
from promptgrid.tasks.engine.collect import collect
from promptgrid.tasks.engine.config import EngineConfig, EngineStats, OnCreated, OnSending, PrepareInputs
from promptgrid.tasks.engine.retry import (
    JobDeferred,
    JobEnded,
    Reachability,
    RetryAttempt,
    backoff_s,
    create_refused,
    ended_by_error,
    failed,
    halts_the_run,
    is_retryable,
    not_submitted,
    unknown_create,
)
from promptgrid.tasks.quota.base import Budget
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus

T = TypeVar("T")


class Engine:
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
        # Which slug each model is sent as (resolved before the run); without, the job's model as it is.
        self.routes = routes or ModelRoutes(client)
        self.budget = budget
        self.config = config or EngineConfig()
        self.on_created = on_created
        self.on_sending = on_sending
        self.on_unsent = on_unsent
        self.prepare_inputs = prepare_inputs
        self.latency = LatencyModel(self.config.poll, polls_count=self.config.limits.polls_count)
        self.stats = EngineStats()
        self.halted: ApiError | None = None
        self.reachability = Reachability(self.config.unreachable_after)
        self.deferred: set[str] = set()  # jobs stopped with no outcome: nothing of them was sent
        self._clock = clock

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
        token = await self.budget.take_slot()
        self.stats.in_flight += 1
        try:
            if known_id is None:
                self._refuse_if_halted()
                if (missing := self.routes.missing(job.model)) is not None:  # refused in every spelling
                    raise failed(ErrorCode.MODEL_NOT_FOUND, missing)
                inputs = await self._prepare(job)
                outcome.attempts = attempt  # counted once sent: an unknown create may have made a prediction
                prediction_id = await self._create(job, inputs, outcome)
                outcome.prediction_id = prediction_id
                if self.on_created is not None:
                    await self.on_created(job, prediction_id, attempt)
            else:
                prediction_id = known_id
                outcome.attempts = max(outcome.attempts, attempt)
                outcome.prediction_id = prediction_id
                outcome.submitted_at = outcome.submitted_at or _now()
            prediction = await self._wait_until_finished(job, prediction_id, outcome)
        finally:
            self.stats.in_flight -= 1
            await self.budget.release_slot(token)
        outcome.predict_time_s = prediction.predict_time_s
        if prediction.cost_usd is not None:
            outcome.cost_usd = (outcome.cost_usd or 0.0) + prediction.cost_usd
        if prediction.status is PredictionStatus.ERROR and is_retryable(
            prediction, self.config.retryable_codes
        ):
            raise RetryAttempt(prediction)
        return prediction

    async def _prepare(self, job: Job) -> Mapping[str, Any]:
        if self.prepare_inputs is None:
            return job.inputs
        try:
            return await self.prepare_inputs(job)
        except Exception as exc:  # the pipeline's hook: whatever it raised is this job's failure
            raise failed(ErrorCode.INPUT_PREPARATION_FAILED, f"{type(exc).__name__}: {exc}") from None

    async def _create(self, job: Job, inputs: Mapping[str, Any], outcome: JobOutcome) -> str:
        """Send the create, re-sending only when the API provably created nothing."""
        announce = None
        if self.on_sending is not None:
            on_sending, attempt = self.on_sending, outcome.attempts

            async def announce() -> None:
                await on_sending(job, attempt)

        reason: ApiError  # why the last create was refused
        slug = self.routes.slug_for(job.model)
        for resend in range(self.config.create_retries + 1):
            outcome.model_slug = slug
            try:
                prediction_id = await self._call(
                    "create", outcome, self.client.create, slug, job.version, inputs, before_send=announce
                )
            except ModelNotFound as exc:  # refused: nothing was created, so sending again is safe
                slug = await self._after_model_not_found(job, slug, exc)
                reason = exc
            except Throttled as exc:
                await self._throttled(exc)
                reason = exc
            except (ServerFailure, TransportFailure) as exc:
                if not created_nothing(exc):
                    raise unknown_create(exc) from None
                if self.on_unsent is not None:
                    await self.on_unsent(job, outcome.attempts)
                self._halt_if_unreachable(exc)
                self.stats.transient_errors += 1
                await asyncio.sleep(self._backoff(resend))
                self._halt_if_unreachable(None)
                reason = exc
            except ApiError as exc:
                if halts_the_run(exc):
                    self.halted = self.halted or exc
                raise create_refused(exc) from None
            else:
                self.stats.creates += 1
                outcome.submitted_at = _now()
                return prediction_id
            self.stats.create_resends += 1
        raise failed(ErrorCode.CREATE_FAILED, f"the API kept refusing the create: {reason.message}")

    async def _after_model_not_found(self, job: Job, refused: str, exc: ModelNotFound) -> str:
        """The slug to send next, after resolving the model again; ends the job when there is none."""
        slug = await self.routes.after_not_found(job.model, refused)
        if slug is None:
            raise failed(ErrorCode.MODEL_NOT_FOUND, self.routes.missing(job.model) or exc.message)
        return slug

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

    async def _wait_until_finished(self, job: Job, prediction_id: str, outcome: JobOutcome) -> Prediction:
        """Poll on the learned schedule until the prediction is terminal; past the deadline, cancel it."""
        plan = self.latency.plan(_latency_key(job))
        start = self._clock()
        while True:
            limit_s = self._deadline_s(job)
            deadline = start + limit_s
            await self._sleep_until_poll(plan, start, deadline)
            prediction = await self._poll(prediction_id, outcome, deadline)
            now = self._clock()
            if prediction is not None:
                plan.record_poll(now - start, prediction.finished)
                if prediction.finished:
                    return prediction
            if prediction is None or now >= deadline:
                await self._cancel(prediction_id, outcome)
                seen = "never answered a poll" if prediction is None else f"still {prediction.raw_status!r}"
                message = f"{seen} after {limit_s:.3g} s (the deadline); cancelled"
                raise JobEnded(JobStatus.TIMED_OUT, ErrorCode.DEADLINE_EXCEEDED, message)

    def _deadline_s(self, job: Job) -> float:
        """The configured deadline, shortened once this kind of prediction's latency has been learned."""
        delay = self.latency.estimate(_latency_key(job))
        if delay is None:
            return self.config.deadline_s
        stuck_after = max(self.config.min_deadline_s, self.config.stuck_factor * delay)
        return min(self.config.deadline_s, stuck_after)

    async def _sleep_until_poll(self, plan: PollPlan, start: float, deadline: float) -> None:
        """Sleep until the next poll; a cold schedule is cut short once another prediction sets the delay."""
        while True:
            wake = min(start + plan.next_poll_at(), deadline)
            delay = wake - self._clock()
            if delay <= 0:
                return
            learned = plan.learned
            if learned.is_set():
                await asyncio.sleep(delay)
                return
            if not await wait_event(learned, delay):
                return

    async def _poll(self, prediction_id: str, outcome: JobOutcome, deadline: float) -> Prediction | None:
        """One successful get, retrying transient failures; None when the deadline comes first."""
        failures = 0
        while True:
            try:
                return await self._call("poll", outcome, self.client.get, prediction_id)
            except Throttled as exc:
                await self._throttled(exc)
                if self._clock() >= deadline:
                    return None
                continue
            except PredictionNotFound as exc:
                raise failed(ErrorCode.PREDICTION_NOT_FOUND, exc.message) from None
            except AuthenticationFailed as exc:
                self.halted = self.halted or exc
                raise failed(ErrorCode.AUTHENTICATION_FAILED, exc.message) from None
            except ApiError as exc:
                self._halt_if_unreachable(exc)  # the prediction stays in the journal for a rerun to poll
                self.stats.transient_errors += 1
            pause = self._backoff(failures)
            failures += 1
            if self._clock() + pause >= deadline:
                return None
            await asyncio.sleep(pause)

    async def _cancel(self, prediction_id: str, outcome: JobOutcome) -> None:
        """Best effort: a cancel that fails leaves the prediction to the API's own timeout."""
        for _ in range(2):
            try:
                await self._call("cancel", outcome, self.client.cancel, prediction_id)
                return
            except Throttled as exc:
                await self._throttled(exc)
            except ApiError:
                return

    async def _call(
        self,
        kind: str,
        outcome: JobOutcome,
        method: Callable[..., Awaitable[T]],
        *args: Any,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """One API request through the budget; its receipt is settled once the answer (or failure) is in.

        `before_send` runs after the budget admits the request and right before it leaves: the moment
        from which a create's outcome is unknown until its answer is read.
        """
        receipt = await self.budget.take_request(kind)
        self.stats.requests[kind] += 1
        outcome.api_requests += 1
        try:
            if before_send is not None:
                await before_send()
            result = await method(*args)
        except ApiError as exc:
            self.reachability.heard(exc)
            raise
        finally:
            if receipt is not None:
                receipt.settle()
        self.reachability.heard(None)
        return result

    async def _throttled(self, exc: Throttled) -> None:
        self.stats.throttled += 1
        await self.budget.on_throttled(exc.retry_after_s)

    def _backoff(self, failures: int) -> float:
        return backoff_s(failures, self.config.retry_backoff_s, self.config.max_backoff_s)


def _latency_key(job: Job) -> tuple[str, int]:
    try:
        steps = int(job.inputs.get("steps") or 0)
    except (TypeError, ValueError):
        steps = 0
    return job.model, steps


def _now() -> datetime:
    return datetime.now(UTC)
