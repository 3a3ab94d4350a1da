"""The lost-create search: the prediction a create made when its answer was lost, found through the listing.

A create whose answer never came (a run killed with it on the wire, a dropped connection, a 5xx) may or may
not have made, and billed, a prediction. Where the API lists the organisation's executions
(`GET /v1/executions`, by model and time), the search lists those created around the create's time under the
slug the create was sent with, reads each candidate this run does not already know with a get (the listing
leaves inputs out, and other members' predictions are in it), and compares what each was made from with
what the create sent (promptgrid.engine.matching). It adopts a prediction only when exactly one candidate
matches and every candidate could be read; it says nothing was made only when every candidate was read and
none matches. Anything else (two matches, a candidate it could not read, no listing, a listing longer than
it reads) stays unknown, with the candidates named: never a guess.

Paging follows the API's docs: pages are read until one comes back shorter than the limit, never stopping at
`total_count` (which `total_capped` makes a lower bound). Every request goes through the run's gateway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from promptgrid.api.client import says_refused
from promptgrid.api.executions import MAX_PAGE, Execution
from promptgrid.api.gateway import Gateway, ReadRetry, Tally
from promptgrid.engine.config import EngineStats
from promptgrid.engine.matching import same_inputs
from promptgrid.engine.retry import unknown_create
from promptgrid.errors import ApiError, PredictionNotFound
from promptgrid.types import Job

WINDOW_S = 300.0  # either side of the create: clocks differ, and the API stamps a create when it starts it
MAX_PAGES = 20  # per window: the listing is the whole organisation's, so it is bounded
READ_RETRY = ReadRetry(tries=8, base_s=0.2, cap_s=5.0)
_NOT_OURS: Mapping[str, Any] = {}  # a candidate another key made: the API does not let us read it
_logger = logging.getLogger("promptgrid.lost_creates")


@dataclass(frozen=True)
class Search:
    """What the listing says of one lost create: the prediction it made, that it made none, or why it
    cannot tell."""

    found: str | None = None
    nothing_made: bool = False
    why: str = ""


class LostCreates:
    """Finds the predictions of lost creates; safe to use from many jobs and shards at once.

    Listings are kept per slug and window, and listed again when older than the answer looked for.
    """

    def __init__(
        self,
        gateway: Gateway,
        slug_for: Callable[[str], str],
        prepare: Callable[[Job], Awaitable[Mapping[str, Any]]] | None = None,
        *,
        window_s: float = WINDOW_S,
        max_pages: int = MAX_PAGES,
        retry: ReadRetry = READ_RETRY,
    ):
        self.gateway, self.slug_for, self.prepare = gateway, slug_for, prepare
        self.window = timedelta(seconds=window_s)
        self.max_pages, self.retry = max_pages, retry
        self.sent_at: dict[str, datetime] = {}  # job_id -> when an earlier run's unanswered create left
        self.known_ids: set[str] = set()  # every prediction already tied to a job
        self.available = True
        self.api_requests = 0  # requests charged to no job (for an earlier run's creates)
        self._listings: dict[str, list[tuple[datetime, datetime, datetime]]] = {}  # slug -> windows listed
        self._seen: dict[str, dict[str, Execution]] = {}  # slug -> executions listed
        self._inputs: dict[str, Mapping[str, Any]] = {}
        self._lock = asyncio.Lock()

    async def settle(
        self,
        job: Job,
        slug: str,
        inputs: Mapping[str, Any],
        sent_at: datetime,
        exc: ApiError,
        lag_s: float,
        stats: EngineStats,
    ) -> str | None:
        """A create whose outcome is unknown, settled through the listing before anything is re-sent: the
        prediction it made, or None where nothing was made; the job ends CREATE_OUTCOME_UNKNOWN otherwise.

        Where the API has no listing, only its own documented refusal is taken at its word, and said so.
        """
        await asyncio.sleep(lag_s)  # a create just made may take a moment to be listed
        fresh_after = datetime.now(UTC)
        search = await self.search(job, slug, inputs, sent_at, fresh_after=fresh_after)
        if search.found is not None:
            stats.adopted_creates += 1
            return search.found
        if search.nothing_made:
            return None
        if not self.available and says_refused(exc):
            stats.unverified_resends += 1
            _logger.warning(
                "job %s: the create was answered %s and the API has no executions listing to check it "
                "against: sent again on the API's word that it created nothing",
                job.job_id,
                exc.message,
            )
            return None
        raise unknown_create(exc, search.why)

    def expect(self, sent_at: Mapping[str, datetime], known_ids: set[str]) -> None:
        """The creates an earlier run left unanswered (job_id -> when each left), and the predictions its
        journal already ties to jobs."""
        self.sent_at.update(sent_at)
        self.known_ids |= known_ids

    def known(self, prediction_id: str) -> None:
        """A prediction this run knows the job of (a create's answer named it): never another's candidate."""
        self.known_ids.add(prediction_id)

    async def find(self, job: Job) -> Search:
        """What became of the unanswered create an earlier run left for `job` (sent as `prepare` sends)."""
        moment = self.sent_at.get(job.job_id)
        if moment is None:
            return Search(why="no unanswered create is known for this job")
        try:
            inputs = job.inputs if self.prepare is None else await self.prepare(job)
        except Exception as exc:  # the pipeline's hook: without the inputs sent, nothing can be compared
            return Search(why=f"its inputs could not be prepared to compare ({type(exc).__name__})")
        return await self.search(job, self.slug_for(job.model), inputs, moment, fresh_after=moment)

    async def search(
        self,
        job: Job,
        slug: str,
        inputs: Mapping[str, Any],
        sent_at: datetime,
        *,
        fresh_after: datetime,
        tally: Tally | None = None,
    ) -> Search:
        """The prediction a create of `inputs`, sent as `slug` at `sent_at`, made; the listing read must be
        from after `fresh_after` (when the create's answer was lost)."""
        async with self._lock:  # listings shared between jobs, and no candidate claimed twice
            why = await self._list(slug, sent_at, fresh_after, tally)
            if why:
                return Search(why=why)
            near = [
                execution.id
                for execution in self._seen[slug].values()
                if abs(execution.created_at - sent_at) <= self.window and execution.id not in self.known_ids
            ]
            matches, unread = [], []
            for candidate in near:
                echoed = await self._inputs_of(candidate, tally)
                if echoed is None:
                    unread.append(candidate)
                elif echoed is not _NOT_OURS and same_inputs(inputs, echoed):
                    matches.append(candidate)
            if len(matches) == 1 and not unread:
                self.known_ids.add(matches[0])
                _logger.info("job %s: its lost create made prediction %s; adopted", job.job_id, matches[0])
                return Search(found=matches[0])
            if not matches and not unread:
                return Search(nothing_made=True)
            return Search(why=_candidates(matches, unread))

    async def _list(self, slug: str, moment: datetime, fresh_after: datetime, tally: Tally | None) -> str:
        """List what `moment`'s window needs unless a recent enough listing covers it; why it cannot be
        told, or "" once listed."""
        if not self.available:
            return "the API's executions listing is not available"
        start, end = moment - self.window, moment + self.window
        done = self._listings.setdefault(slug, [])
        seen = self._seen.setdefault(slug, {})
        if any(a <= start and end <= b and at >= fresh_after for a, b, at in done):
            return ""
        # The first listing covers every create an earlier run left, so one pass serves them all.
        moments = sorted({*self.sent_at.values(), moment}) if not done else [moment]
        try:
            for since, until in _windows(moments, self.window):
                fetched_at = datetime.now(UTC)
                executions, complete = await self._pages(slug, since, until, tally)
                seen.update((execution.id, execution) for execution in executions)
                if not complete:
                    return f"the listing holds more than {self.max_pages * MAX_PAGE} executions around it"
                done.append((since, until, fetched_at))
        except ApiError as exc:
            self.available = False
            _logger.warning(
                "the API's executions listing is not available (%s): creates whose answer was lost stay "
                "CREATE_OUTCOME_UNKNOWN",
                exc.message,
            )
            return f"the API's executions listing is not available ({exc.message})"
        return ""

    async def _pages(
        self, slug: str, since: datetime, until: datetime, tally: Tally | None
    ) -> tuple[list[Execution], bool]:
        """Every execution of the window, and whether the listing ended (a short page) within the bound."""
        found: list[Execution] = []
        for page in range(self.max_pages):
            listing = await self.gateway.list_executions(
                self.retry,
                model=slug,
                since=since,
                until=until,
                offset=page * MAX_PAGE,
                tally=self._tally(tally),
            )
            found += listing.executions
            if len(listing.executions) < MAX_PAGE:
                return found, True
        return found, False

    async def _inputs_of(self, prediction_id: str, tally: Tally | None) -> Mapping[str, Any] | None:
        """What a candidate was made from; `_NOT_OURS` for another key's; None when it cannot be read now."""
        if prediction_id in self._inputs:
            return self._inputs[prediction_id]
        try:
            prediction = await self.gateway.get(prediction_id, self.retry, tally=self._tally(tally))
        except PredictionNotFound:  # another key's prediction: not ours to read
            self._inputs[prediction_id] = _NOT_OURS
            return _NOT_OURS
        except ApiError:  # unreadable now: never adopted, nor ruled out, on a guess
            return None
        if prediction.inputs is not None:  # without its inputs echoed, it cannot be told whose it is
            self._inputs[prediction_id] = prediction.inputs
        return prediction.inputs

    def _tally(self, tally: Tally | None) -> Tally:
        return tally if tally is not None else self


def _candidates(matches: list[str], unread: list[str]) -> str:
    """Why a search found no single prediction, naming the candidates."""
    parts = []
    if matches:
        parts.append(f"{len(matches)} predictions were made from these inputs ({', '.join(matches)})")
    if unread:
        parts.append(f"{len(unread)} candidates could not be read ({', '.join(unread)})")
    return "the listing cannot tell which: " + "; ".join(parts)


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
