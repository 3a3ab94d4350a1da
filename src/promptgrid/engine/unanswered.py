"""Creates an earlier run left unanswered, settled before this run sends anything; and jobs run into a store.

A create whose intent is in the journal with no prediction id after it may or may not have made (and billed)
a prediction. Before its job runs again, the lost-create search (promptgrid.engine.lost_creates) is asked:
the prediction it made is adopted (the run then polls it as if its answer had arrived); where the listing
shows nothing was made the job is sent as any other; otherwise the job is recorded CREATE_OUTCOME_UNKNOWN,
with the reason and candidates, and nothing is sent (a backfill that chose these jobs sends them anew).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from promptgrid.engine.events import JobEvents
from promptgrid.engine.lost_creates import LostCreates
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus

if TYPE_CHECKING:
    from promptgrid.engine.engine import Engine


class Intent(Protocol):
    """A journal's note of a create about to leave."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def attempt(self) -> int: ...


class Record(Protocol):
    """A journal's record of a prediction created for a job."""

    @property
    def prediction_id(self) -> str: ...


class CreateJournal(Protocol):
    """What is read of a journal (promptgrid.output.journal.Journal) to settle unanswered creates."""

    def unanswered(self) -> Mapping[str, Intent]: ...

    def records(self) -> Iterable[Record]: ...


class OutcomeStore(JobEvents, Protocol):
    """The store the jobs' outcomes go to (promptgrid.output.recorder.OutcomeStore)."""

    created: dict[str, str]  # job_id -> prediction created during this run
    saved: set[str]  # jobs whose outcome is stored

    async def save(self, job: Job, outcome: JobOutcome) -> None: ...


@dataclass
class UnknownCreates:
    """The creates an earlier run sent without getting their answer, for the jobs this run takes."""

    intents: dict[str, Intent]  # job_id -> the intent of its unanswered create
    known_ids: set[str]  # every prediction the journal already ties to a job

    @classmethod
    def read(
        cls, journal: CreateJournal, latest: Mapping[str, str], rerun: frozenset[str] | None
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

    def search(self, engine: Engine) -> LostCreates:
        """The engine's lost-create search, told of these creates."""
        sent_at = {job_id: intent.created_at for job_id, intent in self.intents.items()}
        engine.lost_creates.expect(sent_at, self.known_ids)
        return engine.lost_creates


async def settle_unknown_creates(
    jobs: list[Job],
    unanswered: Mapping[str, int],
    store: OutcomeStore,
    search: LostCreates,
    *,
    resend: bool = False,
) -> None:
    """For each job whose last create went unanswered: adopt its prediction when the listing finds it (the
    run then polls it), else record it CREATE_OUTCOME_UNKNOWN without sending anything; with `resend` (a
    backfill that chose these jobs) leave it to be created anew instead."""
    for job in jobs:
        if job.job_id not in unanswered or job.job_id in store.created or job.job_id in store.saved:
            continue
        found = await search.find(job)
        if found.found is not None:
            await store.on_created(job, found.found, unanswered[job.job_id])
        elif not resend:  # never re-sent blindly: a create queued long may be stamped outside the window
            why = "the listing shows no prediction made from its inputs" if found.nothing_made else found.why
            await store.save(job, unknown_outcome(job, why))


def unknown_outcome(job: Job, why: str) -> JobOutcome:
    """The row of a job whose earlier create may have made a prediction the listing cannot name."""
    code = ErrorCode.CREATE_OUTCOME_UNKNOWN
    return JobOutcome(
        job_id=job.job_id,
        status=JobStatus.FAILED,
        error_code=code,
        error_message=(
            f"an earlier run stopped while this job's create was in flight and {why}: the prediction may "
            "exist and be billed, so it was not sent again; `promptgrid backfill OUTPUT --where "
            f"\"error_code = '{code.value}'\"` creates it anew"
        ),
        completed_at=datetime.now(UTC),
    )


async def run_and_store(
    engine: Engine, jobs: list[Job], resume: Mapping[str, str], store: OutcomeStore
) -> None:
    """Jobs through the engine into the store, each outcome as it comes."""
    by_id = {job.job_id: job for job in jobs}
    async for outcome in engine.run(jobs, resume=resume):
        await store.save(by_id[outcome.job_id], outcome)
