"""Reconciling unknown creates: the prediction a create made when its answer was lost, found and adopted.

A create whose intent is in the journal with no prediction id after it may or may not have made (and
billed) a prediction. Where the API lists the account's executions (`GET /v1/executions`, by model and
time), a rerun lists those created around the intent's time, reads each candidate the journal does not
already know with a get (the listing leaves inputs out, and it is the whole organisation's, so other
people's predictions are in it), and adopts the one whose inputs are the job's: the rerun then polls it as
if its answer had arrived. Without the listing (404), or when it fails, nothing is adopted and the job
stays CREATE_OUTCOME_UNKNOWN, never re-sent blindly. Every request goes through the run's budget.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from promptgrid.api.client import ApiClient
from promptgrid.api.executions import MAX_PAGE, Execution
from promptgrid.engine.engine import Engine
from promptgrid.errors import ApiError, PredictionNotFound, ServerFailure, Throttled, TransportFailure
from promptgrid.output.journal import Journal, JournalRecord
from promptgrid.output.recorder import OutcomeStore
from promptgrid.quota.base import Budget
from promptgrid.types import ErrorCode, Job, JobOutcome

WINDOW_S = 300.0  # either side of the intent: clocks differ, and the API stamps a create when it starts it
MAX_PAGES = 20  # per window: the listing is the whole organisation's, so it is bounded
_TRIES = 4
_RETRY_PAUSE_S = 0.2
_logger = logging.getLogger("promptgrid.reconcile")
T = TypeVar("T")


@dataclass
class UnknownCreates:
    """The creates an earlier run sent without getting their answer, for the jobs this run takes."""

    intents: dict[str, JournalRecord]  # job_id -> the intent of its unanswered create
    known_ids: set[str]  # every prediction the journal already ties to a job

    @classmethod
    def read(
        cls, journal: Journal, latest: Mapping[str, str], rerun: frozenset[str] | None
    ) -> UnknownCreates:
        """A generate takes jobs with no manifest row yet; a backfill the jobs it names (`rerun`)."""
        unanswered = journal.unanswered()
        taken = (lambda job_id: job_id not in latest) if rerun is None else rerun.__contains__
        intents = {job_id: intent for job_id, intent in unanswered.items() if taken(job_id)}
        known = {record.prediction_id for record in journal.records()} if intents else set()
        return cls(intents, known)

    @property
    def attempts(self) -> dict[str, int]:
        return {job_id: intent.attempt for job_id, intent in self.intents.items()}

    def reconciler(self, client: ApiClient, budget: Budget) -> Reconciler:
        sent_at = {job_id: intent.created_at for job_id, intent in self.intents.items()}
        return Reconciler(client, budget, sent_at, self.known_ids)


class Reconciler:
    """Finds the predictions of unknown creates; `find` is safe to call from many shards at once.

    `sent_at` holds the unanswered creates an earlier run left (from the journal); a create whose answer
    is lost during this run is looked for with its own time. Listings are kept per model and window, and
    fetched again when older than the create looked for.
    """

    def __init__(
        self,
        client: ApiClient,
        budget: Budget,
        sent_at: Mapping[str, datetime],
        known_ids: set[str],
        *,
        window_s: float = WINDOW_S,
        max_pages: int = MAX_PAGES,
    ):
        self.client, self.budget = client, budget
        self.sent_at = dict(sent_at)  # job_id -> when its unanswered create was about to leave
        self.known_ids = set(known_ids)  # every prediction the journal already ties to a job
        self.window = timedelta(seconds=window_s)
        self.max_pages = max_pages
        self.available = True
        self.requests = 0
        self._listings: dict[str, list[tuple[datetime, datetime, datetime]]] = {}  # model -> windows
        self._seen: dict[str, dict[str, Execution]] = {}  # model -> executions listed
        self._inputs: dict[str, Mapping[str, Any] | None] = {}
        self._lock = asyncio.Lock()

    async def find(self, job: Job, sent_at: datetime | None = None) -> str | None:
        """The prediction this job's unanswered create made, or None when it cannot be told.

        `sent_at`: when a create of this run whose answer was just lost left; else the journal's time.
        """
        fresh_after = datetime.now(UTC) if sent_at is not None else None
        moment = sent_at or self.sent_at.get(job.job_id)
        if moment is None:
            return None
        async with self._lock:  # listings shared between shards, and no candidate claimed twice
            if not await self._list(job.model, moment, fresh_after or moment):
                return None
            near = [e for e in self._seen[job.model].values() if abs(e.created_at - moment) <= self.window]
            for execution in sorted(near, key=lambda e: abs(e.created_at - moment)):
                if execution.id in self.known_ids:
                    continue
                inputs = await self._inputs_of(execution.id)
                if inputs is not None and same_inputs(job.inputs, inputs):
                    self.known_ids.add(execution.id)
                    _logger.info(
                        "job %s: its lost create made prediction %s; adopted", job.job_id, execution.id
                    )
                    return execution.id
        return None

    async def _list(self, model: str, moment: datetime, fresh_after: datetime) -> bool:
        """List what `moment`'s window needs unless a recent enough listing covers it; False when the
        listing is not available."""
        if not self.available:
            return False
        start, end = moment - self.window, moment + self.window
        done = self._listings.setdefault(model, [])
        if any(a <= start and end <= b and at >= fresh_after for a, b, at in done):
            return True
        # The first listing covers every create an earlier run left, so one pass serves them all.
        windows = [(start, end)] if done else _windows(sorted({*self.sent_at.values(), moment}), self.window)
        try:
            for since, until in windows:
                fetched_at = datetime.now(UTC)
                for execution in await self._pages(model, since, until):
                    self._seen.setdefault(model, {})[execution.id] = execution
                done.append((since, until, fetched_at))
        except ApiError as exc:
            self.available = False
            _logger.warning(
                "the API's executions listing is not available (%s): creates whose answer was lost stay "
                "CREATE_OUTCOME_UNKNOWN",
                exc.message,
            )
            return False
        self._seen.setdefault(model, {})
        return True

    async def _pages(self, model: str, since: datetime, until: datetime) -> list[Execution]:
        found: list[Execution] = []
        for page in range(self.max_pages):
            offset = page * MAX_PAGE
            listing = await self._request(
                functools.partial(
                    self.client.list_executions,
                    model=model,
                    since=since,
                    until=until,
                    limit=MAX_PAGE,
                    offset=offset,
                )
            )
            found += listing.executions
            total = listing.total_count
            if len(listing.executions) < MAX_PAGE or (total is not None and offset + MAX_PAGE >= total):
                break
        return found

    async def _inputs_of(self, prediction_id: str) -> Mapping[str, Any] | None:
        if prediction_id not in self._inputs:
            try:
                prediction = await self._request(functools.partial(self.client.get, prediction_id))
                self._inputs[prediction_id] = prediction.inputs
            except PredictionNotFound:  # another key's prediction: not ours to read
                self._inputs[prediction_id] = None
            except ApiError:  # unreadable now: not adopted on a guess
                return None
        return self._inputs[prediction_id]

    async def _request(self, call: Callable[[], Awaitable[T]]) -> T:
        """One request through the budget; 429s, 5xx and dropped connections are tried again a few times
        (these are reads: repeating one cannot bill)."""
        for attempt in range(_TRIES):
            receipt = await self.budget.take_request("poll")
            self.requests += 1
            try:
                return await call()
            except Throttled as exc:
                if attempt == _TRIES - 1:
                    raise
                await self.budget.on_throttled(exc.retry_after_s)
            except (ServerFailure, TransportFailure):
                if attempt == _TRIES - 1:
                    raise
                await asyncio.sleep(_RETRY_PAUSE_S * 2**attempt)
            finally:
                if receipt is not None:
                    receipt.settle()
        raise AssertionError("unreachable: the last try returns or raises")


def _windows(moments: list[datetime], margin: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted moments, each widened by `margin`, with overlapping windows merged."""
    merged: list[tuple[datetime, datetime]] = []
    for moment in moments:
        start, end = moment - margin, moment + margin
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def same_inputs(job_inputs: Mapping[str, Any], echoed: Mapping[str, Any]) -> bool:
    """Whether a prediction's echoed inputs are the job's. An image URL differs from create to create
    (presigned), so only its presence is compared; numbers compare by value, whatever their spelling."""
    for name, value in job_inputs.items():
        other = echoed.get(name)
        if name == "image":
            if bool(value) != bool(other):
                return False
        elif _plain(value) != _plain(other):
            return False
    return True


def _plain(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


async def settle_unknown_creates(
    jobs: list[Job],
    unanswered: Mapping[str, int],
    store: OutcomeStore,
    reconciler: Reconciler | None,
    *,
    resend: bool = False,
) -> None:
    """For each job whose last create went unanswered: adopt its prediction when the listing finds it (the
    run then polls it), else record it CREATE_OUTCOME_UNKNOWN without sending anything; with `resend` (a
    backfill that chose these jobs) leave it to be created anew instead."""
    for job in jobs:
        if job.job_id not in unanswered or job.job_id in store.created or job.job_id in store.saved:
            continue
        found = await reconciler.find(job) if reconciler is not None else None
        if found is not None:
            await store.on_created(job, found, unanswered[job.job_id])
        elif not resend:
            await store.save_unknown(job)  # never re-sent blindly: the first may have been billed


async def adopt_lost_create(
    job: Job, outcome: JobOutcome, store: OutcomeStore, reconciler: Reconciler | None
) -> str | None:
    """For a job this run ended CREATE_OUTCOME_UNKNOWN: the prediction its create made, found through the
    listing and recorded in the journal (the job is then polled instead of given up), else None."""
    sent_at = store.sent_at.get(job.job_id)
    if reconciler is None or sent_at is None or outcome.error_code != ErrorCode.CREATE_OUTCOME_UNKNOWN:
        return None
    found = await reconciler.find(job, sent_at=sent_at)
    if found is not None:
        await store.on_created(job, found, outcome.attempts)
    return found


async def run_and_store(
    engine: Engine,
    jobs: list[Job],
    resume: dict[str, str],
    store: OutcomeStore,
    reconciler: Reconciler | None = None,
) -> dict[str, str]:
    """Jobs through the engine into the store, except those whose create answer was lost and whose
    prediction the listing found: returned (job_id -> prediction id) for polling."""
    by_id = {job.job_id: job for job in jobs}
    adopted: dict[str, str] = {}
    async for outcome in engine.run(jobs, resume=resume):
        job = by_id[outcome.job_id]
        found = await adopt_lost_create(job, outcome, store, reconciler)
        if found is not None:
            adopted[job.job_id] = found
        else:
            await store.save(job, outcome)
    return adopted
