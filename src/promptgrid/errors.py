"""Every exception promptgrid raises on purpose, under one root; foreign ones are translated where they arise.

    PromptgridError             the root: `except PromptgridError` catches everything below
    ├── InvalidInput            input a person must fix (spec, grid row, flag, output); the CLI exits 2
    │   ├── UnknownModel        a model slug no catalog knows
    │   └── OutputInUse         another run holds the output's lease (names the holder and since when)
    ├── ApiError                a call to the prediction API that did not give the answer asked for;
    │   │                       `.prediction_id`, `.status_code`, `.request_id` when known
    │   ├── TransportFailure    no HTTP answer. `.sent` is False when the request provably never left
    │   │                       (connect error or timeout, pool timeout): resending cannot duplicate it.
    │   │                       True means it may have reached the server (read/write error or timeout,
    │   │                       dropped connection): a create's outcome is unknown.
    │   ├── ApiUnreachable      the API never answered: its URL cannot be resolved or connected to;
    │   │                       `.url` and `.detail` say which and why
    │   ├── Throttled           429; `.retry_after_s` from `Retry-After` when present
    │   ├── ServerFailure       5xx; `.api_answered` when the body is the API's own JSON error
    │   ├── PaymentRequired     402: the balance cannot cover more work
    │   ├── AuthenticationFailed 401/403 from the API
    │   ├── InputRejected       400/422: the model refused the inputs
    │   ├── PredictionNotFound  404 on a prediction
    │   ├── ModelNotFound       404 from the API's own JSON for a model: on the model endpoint or a create
    │   │                       (such a create was refused, so it created and billed nothing)
    │   └── UnexpectedAnswer    any other status, or a body that does not parse
    ├── FetchFailed             a prediction's output could not be downloaded or verified; `.code` is the
    │                           outcome's error code, `.retryable` whether another download may work
    ├── StorageError            the output store did not confirm a write (size or checksum mismatch)
    ├── QuotaUnavailable        the shared quota's Redis could not be reached (the message names the
    │                           server, never a password)
    ├── OutputLeaseLost         the run could not renew its output lease in time, so another run may have
    │                           taken the output over: no further create is sent
    ├── BudgetExhausted         a spend cap (`max_cost`, `max_cost_per_day`) would be passed: no further
    │                           create is sent, the jobs left end BUDGET_EXHAUSTED
    ├── Stalled                 no create accepted and no prediction finished for `stall_timeout`: the
    │                           run halts (STALLED), naming the refusals it met
    ├── RunInterrupted          the run was stopped (Ctrl-C, SIGTERM) after saving what it had; the CLI
    │                           exits 130
    ├── RunFailed               a run that could not finish its work (shards failed after retries, or
    │                           the API stopped it); the CLI exits 1
    └── ExportFailed            an export that could not finish (its source changed under it); the
                                shards already written stay, and running it again resumes or restarts

Every message is scrubbed of the API key (`promptgrid.redact`), whatever text went into it.

httpx's exceptions become ApiError in `promptgrid.api.client`, botocore's and the file system's are
raised as they are by the sinks (a run stops on them), Redis's become QuotaUnavailable in the shared quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptgrid.redact import scrub, scrub_any


class PromptgridError(Exception):
    """The root of every exception promptgrid raises on purpose; its message never holds the API key."""

    def __init__(self, *args: Any):
        super().__init__(*(scrub_any(arg) for arg in args))


class InvalidInput(PromptgridError):
    """Input that cannot run: a bad spec, grid row, flag or output location.

    `problems` lists each problem as a full sentence naming the file, row and field; `total` counts all
    problems found when the list was capped.
    """

    def __init__(self, problems: Sequence[str], total: int | None = None):
        self.problems = [scrub(problem) for problem in problems]
        self.total = total if total is not None else len(self.problems)
        super().__init__(self.describe())

    def describe(self) -> str:
        lines = list(self.problems)
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more problems")
        return "\n".join(lines)


class UnknownModel(InvalidInput):
    """The slug names no model promptgrid knows."""

    def __init__(self, message: str):
        super().__init__([message])
        self.message = message


class ApiError(PromptgridError):
    """A call to the prediction API that did not give the answer asked for."""

    def __init__(
        self,
        message: str,
        *,
        prediction_id: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
    ):
        super().__init__(message)
        self.message = scrub(message)
        self.prediction_id = prediction_id
        self.status_code = status_code
        self.request_id = request_id


class TransportFailure(ApiError):
    def __init__(self, message: str, *, sent: bool, **context: Any):
        super().__init__(message, **context)
        self.sent = sent


class ApiUnreachable(ApiError):
    """The API at `url` cannot be reached at all (DNS, refused or timed-out connections): nothing was sent."""

    def __init__(self, url: str, detail: str):
        super().__init__(f"cannot reach the API at {url}: {detail}; nothing was sent")
        self.url, self.detail = url, detail

    def explain(self) -> str:
        """The error with where the URL came from and what to do, as a run reports it."""
        return (
            f"{self}. The base URL comes from --api-base, else EACHLABS_API_BASE, else the spec's "
            "api.base_url; rerun the same command once the API is reachable"
        )


class Throttled(ApiError):
    def __init__(self, message: str, *, retry_after_s: float | None, **context: Any):
        super().__init__(message, **context)
        self.retry_after_s = retry_after_s


class ServerFailure(ApiError):
    def __init__(self, message: str, *, api_answered: bool = False, **context: Any):
        super().__init__(message, **context)
        self.api_answered = api_answered  # a JSON error from the API itself, not a gateway's page


class PaymentRequired(ApiError):
    pass


class AuthenticationFailed(ApiError):
    pass


class InputRejected(ApiError):
    pass


class PredictionNotFound(ApiError):
    pass


class ModelNotFound(ApiError):
    pass


class UnexpectedAnswer(ApiError):
    pass


class FetchFailed(PromptgridError):
    """The output could not be turned into a verified image; `code` becomes the outcome's error code."""

    def __init__(self, code: str, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.code = code
        self.message = scrub(message)
        self.retryable = retryable


class StorageError(PromptgridError):
    """A write the store did not confirm as written (size or checksum mismatch)."""


class QuotaUnavailable(PromptgridError):
    """The shared quota's Redis could not be reached; the message names the server, never a password."""


class OutputInUse(InvalidInput):
    """Another run holds the output (or an overlapping shard of it); nothing was sent."""


class OutputLeaseLost(PromptgridError):
    """The output lease expired before it could be renewed: another run may now hold the output."""


class BudgetExhausted(PromptgridError):
    """A spend cap would be passed by one more create; the message says what was spent against which cap."""


class Stalled(PromptgridError):
    """Nothing moved for the run's `stall_timeout`; the message names the refusals met meanwhile."""


class RunInterrupted(PromptgridError):
    """The run was stopped on request (Ctrl-C) once the writes in progress were saved."""


class RunFailed(PromptgridError):
    """A run that could not finish its work; what was done is in the manifest, and a rerun continues."""


class ExportFailed(PromptgridError):
    """An export that could not finish; completed shards stay, and the same command resumes or restarts."""
