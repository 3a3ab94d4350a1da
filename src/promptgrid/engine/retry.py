"""The engine's retry policy: which failures are tried again, and how every other one ends a job.

The API has no idempotency key, so a create is only re-sent when it provably created nothing:

- create: re-sent after a 429 about the request rate (the whole budget pauses first) and after a transport
  failure that happened before the request left (connect error or timeout). Any failure after the request
  may have reached the server — a 5xx (nothing in the API's docs says a 5xx created nothing), a read
  timeout, a dropped connection, a 2xx without a predictionID — makes the outcome unknown, and it is
  settled through the executions listing before anything is re-sent (promptgrid.engine.lost_creates): the
  prediction it made is adopted and polled; where the listing shows nothing was made, the create is sent
  again; otherwise the job fails CREATE_OUTCOME_UNKNOWN with the candidates named. Where the API has no
  listing, only the API's own refusal (500/503 "Failed to create prediction") is sent again, and the run
  says so in its log and summary (`unverified_resends`). Re-sends are bounded by `create_retries`; waits on
  429s by `room_wait_s`.
- unreachable: when the run's first requests all fail before leaving (DNS, refused or timed-out connections)
  `unreachable_after` times with no HTTP answer yet, the API is unreachable (ApiUnreachable): the run stops
  within seconds, and the jobs it stops end with no outcome at all (nothing was sent; a rerun takes them up).
- no room: a create refused by a 429 about concurrency or by a 402 is not a failure: the job waits for room
  (one of ours finishing, see promptgrid.engine.limits) and sends it again, for `room_wait_s` at
  most (then CREATE_FAILED). A 402 met with nothing of ours in flight `payment_tries` times in a row stops
  new submissions for the rest of the run (PAYMENT_REQUIRED; 401/403 stop it at once with
  AUTHENTICATION_FAILED); predictions already in flight are still collected, then `run` raises the error.
- poll: 429, 5xx, malformed answers and transport failures are retried with jittered exponential backoff
  until the prediction's deadline. 404 is final (PREDICTION_NOT_FOUND).
- deadline: `deadline_s` after creation (sooner once latency is learned: `stuck_factor` times the learned
  first-poll delay, at least `min_deadline_s`) the engine polls one last time, then cancels the prediction.
  Cancel is best effort: the prediction keeps its slot, polled slowly, until the API reports it ended (for
  `cancel_wait_s` at most). If it succeeded after all, its image is fetched and the job succeeds (it was
  paid for); otherwise the job is `timed_out`.
- a prediction ending in error is retried as a new attempt (a new create, reported through `on_created`)
  when its code is in `retryable_codes` or it says `retryable: true`, up to `max_attempts` creates per job.
- output: fetched right after success, outside the budget (hosted storage); 5xx and network failures are
  retried `fetch_retries` times; 403/404/410 is final (OUTPUT_EXPIRED), as are oversize or wrong images.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from promptgrid.api.prediction import Prediction
from promptgrid.errors import (
    ApiError,
    ApiUnreachable,
    AuthenticationFailed,
    BudgetExhausted,
    InputRejected,
    PaymentRequired,
    PromptgridError,
    QuotaUnavailable,
    ServerFailure,
    Stalled,
    TransportFailure,
    UnexpectedAnswer,
)
from promptgrid.types import ErrorCode, JobStatus

RETRYABLE_CODES = frozenset(
    {ErrorCode.PROVIDER_RATE_LIMIT, ErrorCode.PROVIDER_SERVER_ERROR, ErrorCode.EXECUTION_TIMEOUT}
)


class JobEnded(Exception):
    """Raised inside the engine to end a job with a status and reason; never escapes `Engine.run_job`."""

    def __init__(self, status: JobStatus, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class NoRoom(Exception):
    """A create refused for want of room (a full organisation, the balance): the job waits and sends again."""

    def __init__(self, refusal: ApiError):
        self.refusal = refusal


class RetryAttempt(Exception):
    """A prediction ended in a retryable error: the job may try again with a new create."""

    def __init__(self, prediction: Prediction):
        self.prediction = prediction


class JobDeferred(Exception):
    """Raised inside the engine to stop a job with no outcome: nothing of it reached the API, so nothing is
    recorded and a rerun takes it up as if this run had never started it."""


@dataclass
class Reachability:
    """Whether the API has answered this run yet; `threshold` requests that never left, before any answer,
    mean it cannot be reached."""

    threshold: int = 3
    answered: bool = False
    unsent: int = 0

    def heard(self, exc: ApiError | None) -> None:
        """Note a request's end: anything but a transport failure is an answer from the API."""
        self.answered = self.answered or not isinstance(exc, TransportFailure)

    def unreachable(self, exc: ApiError, url: str) -> ApiUnreachable | None:
        """Note a failed request; the error that stops the run once the API proves unreachable."""
        if self.answered or not isinstance(exc, TransportFailure) or exc.sent:
            return None
        self.unsent += 1
        if self.unsent < self.threshold:
            return None
        return ApiUnreachable(url, exc.message.split(": ", 1)[-1])


class Halt:
    """Whether the run takes no further job, and why: a refused key, 402s with nothing in flight, or an API
    that cannot be reached (whose jobs then end with no outcome: nothing of them was sent)."""

    def __init__(self, base_url: str, unreachable_after: int):
        self.base_url = base_url
        self.reachability = Reachability(unreachable_after)
        self.halted: PromptgridError | None = None

    def stop(self, exc: PromptgridError) -> None:
        """No job is submitted after this one (the first reason is kept)."""
        self.halted = self.halted or exc

    def if_unreachable(self, exc: ApiError | None) -> None:
        """Stop this job, with no outcome, once the API proves unreachable (this failure may prove it)."""
        if exc is not None and self.halted is None:
            self.halted = self.reachability.unreachable(exc, self.base_url)
        if isinstance(self.halted, ApiUnreachable | QuotaUnavailable):
            raise JobDeferred

    def refuse_if_halted(self) -> None:
        """Before a create: end the job unsent when the run was halted."""
        self.if_unreachable(None)
        if self.halted is not None:
            raise not_submitted(self.halted)


def failed(code: str, message: str) -> JobEnded:
    return JobEnded(JobStatus.FAILED, code, message)


def unknown_create(exc: ApiError, why: str = "") -> JobEnded:
    """A create whose answer was lost after it may have reached the API: never sent again blindly."""
    settled = f"; {why}" if why else ""
    return failed(
        ErrorCode.CREATE_OUTCOME_UNKNOWN,
        f"the create may or may not have started a prediction ({exc.message}){settled}; it was not re-sent, "
        "since the API has no idempotency key and a second create could bill twice",
    )


def outcome_unknown(exc: ApiError) -> bool:
    """Whether a failed create may have made a prediction: it may have reached the API and no answer
    says it did not (a 5xx, a transport failure after it left, a 2xx without a predictionID)."""
    if isinstance(exc, TransportFailure):
        return exc.sent
    return isinstance(exc, ServerFailure) or (
        isinstance(exc, UnexpectedAnswer) and (exc.status_code or 0) < 300
    )


def create_refused(exc: ApiError) -> JobEnded:
    """How a create the API answered with a final refusal ends its job."""
    if isinstance(exc, PaymentRequired):
        return failed(ErrorCode.PAYMENT_REQUIRED, f"{exc.message}; no further jobs are submitted in this run")
    if isinstance(exc, AuthenticationFailed):
        return failed(
            ErrorCode.AUTHENTICATION_FAILED, f"{exc.message}; no further jobs are submitted in this run"
        )
    if isinstance(exc, InputRejected):
        return failed(ErrorCode.INPUT_REJECTED, exc.message)
    if isinstance(exc, UnexpectedAnswer) and (exc.status_code or 0) < 300:
        return unknown_create(exc)
    return failed(ErrorCode.CREATE_FAILED, exc.message)


def halts_the_run(exc: ApiError) -> bool:
    """Whether no further job may be submitted after this answer (the key is refused)."""
    return isinstance(exc, AuthenticationFailed)


def not_submitted(halted: PromptgridError) -> JobEnded:
    """How a job ends that was never sent because the run was halted earlier."""
    if isinstance(halted, BudgetExhausted):
        return failed(ErrorCode.BUDGET_EXHAUSTED, f"not submitted: {halted}")
    if isinstance(halted, Stalled):
        return failed(ErrorCode.STALLED, f"not submitted: {halted}")
    if isinstance(halted, PaymentRequired):
        return failed(ErrorCode.PAYMENT_REQUIRED, "not submitted: the API answered 402 earlier")
    return failed(ErrorCode.AUTHENTICATION_FAILED, "not submitted: the API refused the key")


def ended_by_error(prediction: Prediction) -> JobEnded:
    message = prediction.error_message or f"the prediction ended with status {prediction.raw_status!r}"
    return failed(prediction.error_code or ErrorCode.PREDICTION_ERROR, message)


def is_retryable(prediction: Prediction, retryable_codes: frozenset[str]) -> bool:
    return prediction.retryable is True or prediction.error_code in retryable_codes


def backoff_s(failures: int, base_s: float, cap_s: float) -> float:
    """A jittered exponential backoff: between half and all of `base_s * 2**failures`, at most `cap_s`."""
    ceiling = min(cap_s, base_s * 2**failures)
    return random.uniform(ceiling / 2, ceiling)


def no_room(waited_s: float, refusal: ApiError) -> JobEnded:
    """How a job ends that found no room at the API for `room_wait_s`."""
    return failed(
        ErrorCode.CREATE_FAILED,
        f"no room at the API for {waited_s:.3g} s (the last refusal: {refusal.message})",
    )
