"""The one budgeted gateway every request to the API goes through (engine, lost-create search, model lookups).

The rule is stated here once (replicate-python's RetryTransport is the model):

- one request at a time through the budget: a request is admitted by `Budget.take_request`, and its receipt
  is settled once its answer (or failure) is in, so the budget dates it where the server counted it;
- reads (a prediction's get, the executions listing, the model endpoints) may be sent again: a 429 pauses the
  budget (for `Retry-After` when the API said, else a backoff) and the read goes again once it admits it; a
  5xx, a malformed answer or a transport failure waits a jittered exponential backoff first;
- a create is sent exactly once per call and never retried here: the API has no idempotency key, so whether
  a failed create may go again is for the caller to settle (promptgrid.engine.retry, and the lost-create
  search of promptgrid.engine.lost_creates when its outcome is unknown);
- a cancel is sent once per call (best effort at the API).

How a 429 is read (about the request rate, or about room for one more prediction) belongs to whoever runs
the predictions: the `RequestWatcher` the gateway is given (the engine's limits). Without one, every 429
pauses the budget.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from promptgrid.api.client import ApiClient
from promptgrid.api.executions import MAX_PAGE, ExecutionsPage
from promptgrid.api.prediction import Prediction
from promptgrid.errors import (
    ApiError,
    AuthenticationFailed,
    ModelNotFound,
    PredictionNotFound,
    Throttled,
)

T = TypeVar("T")

# Failures a read is never sent again after: the answer is final (no such thing, or the key refused).
FINAL_READ_FAILURES: tuple[type[ApiError], ...] = (PredictionNotFound, ModelNotFound, AuthenticationFailed)


class Receipt(Protocol):
    def settle(self) -> None: ...


class RequestBudget(Protocol):
    """The part of a quota budget (promptgrid.quota.base.Budget) the gateway needs."""

    async def take_request(self, kind: str) -> Receipt | None: ...

    async def on_throttled(self, retry_after_s: float | None, kind: str) -> None: ...


class RequestWatcher(Protocol):
    """Reads every answer for what it says of the API's limits and reachability (the engine's limits).

    `throttled` is told of each 429 and decides what it is about: it pauses the budget for one about the
    request rate, and may raise its caller's own signal for one about room (nothing is paused then).
    """

    def answered(self, kind: str, failure: ApiError | None) -> None: ...

    async def throttled(self, kind: str, exc: Throttled, sent_at: float) -> None: ...


class Tally(Protocol):
    """Whatever a request is charged to besides the gateway's own count (a job's outcome)."""

    api_requests: int


class PausingWatcher:
    """The watcher of a gateway nobody else reads 429s for: every 429 pauses the budget."""

    def __init__(self, budget: RequestBudget):
        self.budget = budget

    def answered(self, kind: str, failure: ApiError | None) -> None:
        pass

    async def throttled(self, kind: str, exc: Throttled, sent_at: float) -> None:
        await self.budget.on_throttled(exc.retry_after_s, kind)


class Unmetered:
    """A budget for requests made outside a run (a model lookup from the command line): no cap, only the
    pause a 429 asks for, of every kind."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._paused_until = 0.0

    async def take_request(self, kind: str) -> Receipt | None:
        delay = self._paused_until - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)
        return None

    async def on_throttled(self, retry_after_s: float | None, kind: str) -> None:
        pause = retry_after_s if retry_after_s is not None else 1.0
        self._paused_until = max(self._paused_until, self._clock() + min(pause, 30.0))


@dataclass(frozen=True)
class ReadRetry:
    """How often a read goes: `tries` times at most while it fails, `throttled_tries` while 429s answer it
    (None: no count), never past `until` (the caller's clock).

    The pause after a failure that is not a 429 is jittered, between half and all of `base_s * 2**n`, at most
    `cap_s`. `on_failure` is told of each failure the read goes again after (the engine counts them and
    notices an API that cannot be reached). `after_throttled`, asked after each 429, says whether the read
    is no longer wanted (its 429 is then raised): another way to learn what it asked has opened meanwhile.
    """

    tries: int | None = 4
    throttled_tries: int | None = 4
    until: float | None = None
    base_s: float = 0.2
    cap_s: float = 30.0
    on_failure: Callable[[ApiError], None] | None = None
    after_throttled: Callable[[], bool] | None = None

    def pause_s(self, failures: int) -> float:
        ceiling = min(self.cap_s, self.base_s * 2**failures)
        return random.uniform(ceiling / 2, ceiling)


class Gateway:
    """Every request to the API, by name, through one budget; see the module docstring for the rule."""

    def __init__(
        self,
        client: ApiClient,
        budget: RequestBudget,
        watcher: RequestWatcher | None = None,
        *,
        requests: Counter[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.client = client
        self.budget = budget
        self.watcher: RequestWatcher = watcher or PausingWatcher(budget)
        # Requests sent, by the budget's kind: create, poll (every read), cancel.
        self.requests: Counter[str] = requests if requests is not None else Counter()
        self._clock = clock

    @property
    def base_url(self) -> str:
        return self.client.base_url

    # --- the requests, by name ----------------------------------------------------------------------

    async def create(
        self,
        slug: str,
        version: str,
        inputs: Mapping[str, Any],
        *,
        before_send: Callable[[], Awaitable[None]] | None = None,
        tally: Tally | None = None,
    ) -> str:
        """Send one create, once: never sent again here, whatever its failure (it may have billed)."""
        return await self._send(
            "create", lambda: self.client.create(slug, version, inputs, before_send=before_send), tally
        )

    async def get(self, prediction_id: str, retry: ReadRetry, *, tally: Tally | None = None) -> Prediction:
        """A prediction as the API reports it now (a read: sent again as `retry` allows)."""
        return await self._read("poll", lambda: self.client.get(prediction_id), retry, tally)

    async def cancel(self, prediction_id: str, *, tally: Tally | None = None) -> None:
        """Ask the API to stop a prediction: one request (best effort at the API)."""
        await self._send("cancel", lambda: self.client.cancel(prediction_id), tally)

    async def list_executions(
        self,
        retry: ReadRetry,
        *,
        model: str,
        since: datetime,
        until: datetime,
        offset: int,
        limit: int = MAX_PAGE,
        tally: Tally | None = None,
    ) -> ExecutionsPage:
        """One page of the organisation's executions of `model` (the slug the creates were sent as)."""

        def page() -> Awaitable[ExecutionsPage]:
            return self.client.list_executions(
                model=model, since=since, until=until, limit=limit, offset=offset
            )

        return await self._read("poll", page, retry, tally)

    async def model(self, slug: str, retry: ReadRetry) -> dict[str, Any]:
        """The model endpoint's details of `slug` (GET /v1/model?slug=...)."""
        return await self._read("poll", lambda: self.client.model(slug), retry, None)

    async def model_openapi(self, slug: str, retry: ReadRetry) -> dict[str, Any]:
        """The OpenAPI document the API publishes for one model."""
        return await self._read("poll", lambda: self.client.model_openapi(slug), retry, None)

    # --- the rule -----------------------------------------------------------------------------------

    async def _send(self, kind: str, call: Callable[[], Awaitable[T]], tally: Tally | None) -> T:
        """One request through the budget; its receipt is settled once the answer (or failure) is in."""
        receipt = await self.budget.take_request(kind)
        self.requests[kind] += 1
        if tally is not None:
            tally.api_requests += 1
        sent_at = self._clock()
        try:
            answer = await call()
        except Throttled as exc:
            await self.watcher.throttled(kind, exc, sent_at)
            raise
        except ApiError as exc:
            self.watcher.answered(kind, exc)
            raise
        finally:
            if receipt is not None:
                receipt.settle()
        self.watcher.answered(kind, None)
        return answer

    async def _read(
        self, kind: str, call: Callable[[], Awaitable[T]], retry: ReadRetry, tally: Tally | None
    ) -> T:
        """A read, sent again after a 429 (the budget paused) or a transient failure (after a backoff)."""
        failures = throttles = 0
        while True:
            try:
                return await self._send(kind, call, tally)
            except FINAL_READ_FAILURES:
                raise
            except Throttled:
                throttles += 1
                if retry.throttled_tries is not None and throttles >= retry.throttled_tries:
                    raise
                if retry.after_throttled is not None and retry.after_throttled():
                    raise
                pause = 0.0  # the budget itself holds the next request back
                if retry.until is not None and self._clock() >= retry.until:
                    raise
            except ApiError as exc:
                failures += 1
                if retry.tries is not None and failures >= retry.tries:
                    raise
                pause = retry.pause_s(failures - 1)
                if retry.on_failure is not None:
                    retry.on_failure(exc)
                if retry.until is not None and self._clock() + pause >= retry.until:
                    raise
            if pause:
                await asyncio.sleep(pause)
