"""The prediction engine: jobs in, outcomes out — create, poll, fetch, within the budget, with safe retries.

Retry policy (the API has no idempotency key and no list endpoint, so a create is only re-sent when it
provably created nothing):

- create: re-sent after 429 (the whole budget pauses first), after a 5xx carrying the API's own JSON error
  or 500/503 ("Failed to create prediction": refused before creating) and after a transport failure that
  happened before the request left (connect error or timeout). Any other failure after the request may have
  reached the server — read timeout, dropped connection, a gateway's 502/504 page, a 2xx without a
  predictionID — makes the outcome unknown: the job fails with CREATE_OUTCOME_UNKNOWN and is never re-sent.
  Re-sends are bounded by `create_retries` (see tasks.client.created_nothing).
- 402 stops new submissions for the rest of the run (PAYMENT_REQUIRED; 401/403 likewise stop it with
  AUTHENTICATION_FAILED); predictions already in flight are still collected, then `run` raises the error.
- poll: 429, 5xx, malformed answers and transport failures are retried with jittered exponential backoff
  until the prediction's deadline. 404 is final (PREDICTION_NOT_FOUND).
- deadline: `deadline_s` after creation (sooner once latency is learned: `stuck_factor` times the learned
  first-poll delay, at least `min_deadline_s`) the engine polls one last time, then cancels the prediction and
  records `timed_out`.
- a prediction ending in error is retried as a new attempt (a new create, reported through `on_created`)
  when its code is in `retryable_codes` or it says `retryable: true`, up to `max_attempts` creates per job.
- output: fetched right after success, outside the budget (hosted storage); 5xx and network failures are
  retried `fetch_retries` times; 403/404/410 is final (OUTPUT_EXPIRED), as are oversize or wrong images.

A run that is cancelled (Ctrl-C) leaves its predictions running: the ids already went to `on_created`, so a
resumed run polls them instead of paying for them twice. For the same reason an exception raised by
`on_created` (the id could not be recorded) stops the run rather than create predictions a resume cannot find.
`on_sending` is told of each create just before it leaves, so a run that dies before reading the answer
leaves a trace: its rerun knows that create's outcome is unknown and does not send it blindly again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from promptgrid.types import Job, JobOutcome, JobStatus
from tasks.budget import Budget, Limits
from tasks.client import (
    ApiClient,
    ApiError,
    AuthenticationFailed,
    InputRejected,
    PaymentRequired,
    Prediction,
    PredictionNotFound,
    PredictionStatus,
    ServerFailure,
    Throttled,
    TransportFailure,
    UnexpectedAnswer,
    created_nothing,
)
from tasks.fetch import DEFAULT_MAX_BYTES, FetchedImage, FetchFailed, expected_image, fetch_output
from tasks.polling import LatencyModel, PollPlan, PollPolicy

RETRYABLE_CODES = frozenset({"PROVIDER_RATE_LIMIT", "PROVIDER_SERVER_ERROR", "EXECUTION_TIMEOUT"})

T = TypeVar("T")
OnCreated = Callable[[Job, str, int], Awaitable[None]]
OnSending = Callable[[Job, int], Awaitable[None]]
PrepareInputs = Callable[[Job], Awaitable[Mapping[str, Any]]]


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs; every duration is in seconds of the API's clock (see `scaled`)."""

    limits: Limits = field(default_factory=Limits)
    deadline_s: float = 300.0  # the API's own timeout: a prediction still running past it is stuck
    # Once latency is known, a prediction still running at `stuck_factor` times the learned first-poll delay
    # (but never before `min_deadline_s`) is stuck, not slow: it is cancelled instead of holding a slot.
    stuck_factor: float = 20.0
    min_deadline_s: float = 30.0
    max_attempts: int = 3
    create_retries: int = 6
    retry_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    fetch_retries: int = 2
    output_max_bytes: int = DEFAULT_MAX_BYTES
    queue_size: int | None = None  # jobs started beyond the in-flight slots; default: as many as the slots
    retryable_codes: frozenset[str] = RETRYABLE_CODES
    poll: PollPolicy = field(default_factory=PollPolicy)

    def scaled(self, time_scale: float) -> EngineConfig:
        """The same config for an API whose clock runs `time_scale` times faster (the sandbox, tests)."""
        return replace(
            self,
            deadline_s=self.deadline_s / time_scale,
            min_deadline_s=self.min_deadline_s / time_scale,
            retry_backoff_s=self.retry_backoff_s / time_scale,
            max_backoff_s=self.max_backoff_s / time_scale,
            poll=self.poll.scaled(time_scale),
        )


@dataclass
class EngineStats:
    """Live counters for progress displays and benchmarks."""

    requests: Counter = field(default_factory=Counter)  # by kind: create, poll, cancel
    throttled: int = 0
    transient_errors: int = 0
    creates: int = 0
    create_resends: int = 0
    retried_attempts: int = 0
    in_flight: int = 0
    outcomes: Counter = field(default_factory=Counter)  # by JobStatus value


class JobEnded(Exception):
    """Raised inside the engine to end a job with a status and reason; never escapes `run_job`."""

    def __init__(self, status: JobStatus, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Retry(Exception):
    """A prediction ended in a retryable error: the job may try again with a new create."""

    def __init__(self, prediction: Prediction):
        self.prediction = prediction


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
        prepare_inputs: PrepareInputs | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.budget = budget
        self.config = config or EngineConfig()
        self.on_created = on_created
        self.on_sending = on_sending
        self.prepare_inputs = prepare_inputs
        self.latency = LatencyModel(self.config.poll, polls_count=self.config.limits.polls_count)
        self.stats = EngineStats()
        self.halted: ApiError | None = None
        self._clock = clock

    async def run(
        self, jobs: Iterable[Job] | AsyncIterable[Job], resume: Mapping[str, str] | None = None
    ) -> AsyncIterator[JobOutcome]:
        """Run jobs concurrently, yielding outcomes as they complete; memory stays bounded however many jobs.

        `resume` maps job ids to prediction ids created by an earlier run: those are polled, not created.
        After a 402 or 401, no further jobs are taken; the error is raised once in-flight work is collected.
        """
        resume = resume or {}
        source = _as_async_iterator(jobs)
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
                    yield task.result()
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
                except _Retry as retry:
                    if attempt == self.config.max_attempts:
                        raise _ended_by_error(retry.prediction) from None
                    self.stats.retried_attempts += 1
                    prediction_id = None
                    continue
                await self._collect(job, prediction, outcome)
                break
        except JobEnded as ended:
            outcome.status = ended.status
            outcome.error_code, outcome.error_message = ended.code, ended.message
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
        if prediction.status is PredictionStatus.ERROR and self._retryable(prediction):
            raise _Retry(prediction)
        return prediction

    async def _prepare(self, job: Job) -> Mapping[str, Any]:
        if self.prepare_inputs is None:
            return job.inputs
        try:
            return await self.prepare_inputs(job)
        except Exception as exc:  # the pipeline's hook: whatever it raised is this job's failure
            raise JobEnded(
                JobStatus.FAILED, "INPUT_PREPARATION_FAILED", f"{type(exc).__name__}: {exc}"
            ) from None

    async def _create(self, job: Job, inputs: Mapping[str, Any], outcome: JobOutcome) -> str:
        """Send the create, re-sending only when the API provably created nothing."""
        announce = None
        if self.on_sending is not None:
            on_sending, attempt = self.on_sending, outcome.attempts

            async def announce() -> None:
                await on_sending(job, attempt)

        for resend in range(self.config.create_retries + 1):
            try:
                prediction_id = await self._call(
                    "create",
                    outcome,
                    self.client.create,
                    job.model,
                    job.version,
                    inputs,
                    before_send=announce,
                )
            except Throttled as exc:
                await self._throttled(exc)
                reason = exc
            except (ServerFailure, TransportFailure) as exc:
                if not created_nothing(exc):
                    raise JobEnded(
                        JobStatus.FAILED, "CREATE_OUTCOME_UNKNOWN", _unknown_message(exc)
                    ) from None
                self.stats.transient_errors += 1
                await asyncio.sleep(self._backoff(resend))
                reason = exc
            except ApiError as exc:
                raise self._create_failure(exc) from None
            else:
                self.stats.creates += 1
                outcome.submitted_at = _now()
                return prediction_id
            self.stats.create_resends += 1
        raise JobEnded(
            JobStatus.FAILED, "CREATE_FAILED", f"the API kept refusing the create: {reason.message}"
        )

    def _create_failure(self, exc: ApiError) -> JobEnded:
        if isinstance(exc, PaymentRequired | AuthenticationFailed):
            self.halted = self.halted or exc
            code = "PAYMENT_REQUIRED" if isinstance(exc, PaymentRequired) else "AUTHENTICATION_FAILED"
            return JobEnded(
                JobStatus.FAILED, code, f"{exc.message}; no further jobs are submitted in this run"
            )
        if isinstance(exc, InputRejected):
            return JobEnded(JobStatus.FAILED, "INPUT_REJECTED", exc.message)
        if isinstance(exc, UnexpectedAnswer) and (exc.status_code or 0) < 300:
            return JobEnded(JobStatus.FAILED, "CREATE_OUTCOME_UNKNOWN", _unknown_message(exc))
        return JobEnded(JobStatus.FAILED, "CREATE_FAILED", exc.message)

    def _refuse_if_halted(self) -> None:
        if isinstance(self.halted, PaymentRequired):
            raise JobEnded(
                JobStatus.FAILED, "PAYMENT_REQUIRED", "not submitted: the API answered 402 earlier"
            )
        if self.halted is not None:
            raise JobEnded(
                JobStatus.FAILED, "AUTHENTICATION_FAILED", "not submitted: the API refused the key"
            )

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
                raise JobEnded(JobStatus.TIMED_OUT, "DEADLINE_EXCEEDED", message)

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
            try:
                await asyncio.wait_for(learned.wait(), delay)
            except TimeoutError:
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
                raise JobEnded(JobStatus.FAILED, "PREDICTION_NOT_FOUND", exc.message) from None
            except AuthenticationFailed as exc:
                self.halted = self.halted or exc
                raise JobEnded(JobStatus.FAILED, "AUTHENTICATION_FAILED", exc.message) from None
            except ApiError:
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

    async def _collect(self, job: Job, prediction: Prediction, outcome: JobOutcome) -> None:
        """Turn a finished prediction into the outcome: fetch and verify the image, or record why not."""
        if prediction.status is PredictionStatus.ERROR:
            raise _ended_by_error(prediction)
        if prediction.status is PredictionStatus.CANCELLED:
            raise JobEnded(JobStatus.CANCELLED, "PREDICTION_CANCELLED", "cancelled at the API")
        if prediction.output_url is None:
            raise JobEnded(
                JobStatus.FAILED, "OUTPUT_MISSING", "the prediction succeeded without an output URL"
            )
        image = await self._fetch(prediction.output_url, job.inputs)
        outcome.status = JobStatus.SUCCESS
        outcome.image, outcome.sha256, outcome.bytes = image.data, image.sha256, image.bytes
        outcome.image_format, outcome.width, outcome.height = image.format, image.width, image.height

    async def _fetch(self, url: str, inputs: Mapping[str, Any]) -> FetchedImage:
        output_format, size = expected_image(inputs)
        cap = self.config.output_max_bytes
        for attempt in range(self.config.fetch_retries + 1):
            try:
                return await fetch_output(
                    self.client.storage, url, output_format=output_format, size=size, max_bytes=cap
                )
            except FetchFailed as exc:
                if not exc.retryable or attempt == self.config.fetch_retries:
                    raise JobEnded(JobStatus.FAILED, exc.code, exc.message) from None
                await asyncio.sleep(self._backoff(attempt))
        raise AssertionError("unreachable: the last attempt returns or raises")

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
            return await method(*args)
        finally:
            if receipt is not None:
                receipt.settle()

    async def _throttled(self, exc: Throttled) -> None:
        self.stats.throttled += 1
        await self.budget.on_throttled(exc.retry_after_s)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.config.max_backoff_s, self.config.retry_backoff_s * 2**failures)
        return random.uniform(ceiling / 2, ceiling)

    def _retryable(self, prediction: Prediction) -> bool:
        return prediction.retryable is True or prediction.error_code in self.config.retryable_codes


def _unknown_message(exc: ApiError) -> str:
    return (
        f"the create may or may not have started a prediction ({exc.message}); it was not re-sent, since the "
        "API has no idempotency key and a second create could bill twice"
    )


def _ended_by_error(prediction: Prediction) -> JobEnded:
    message = prediction.error_message or f"the prediction ended with status {prediction.raw_status!r}"
    return JobEnded(JobStatus.FAILED, prediction.error_code or "PREDICTION_ERROR", message)


def _latency_key(job: Job) -> tuple[str, int]:
    try:
        steps = int(job.inputs.get("steps") or 0)
    except (TypeError, ValueError):
        steps = 0
    return job.model, steps


def _now() -> datetime:
    return datetime.now(UTC)


async def _as_async_iterator(jobs: Iterable[Job] | AsyncIterable[Job]) -> AsyncIterator[Job]:
    if isinstance(jobs, AsyncIterable):
        async for job in jobs:
            yield job
    else:
        for job in jobs:
            yield job
