"""The store stage: prediction ids to the journal as they are created, outcomes to the sink and manifest."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from promptgrid.tasks.engine.progress import RunProgress
from promptgrid.tasks.models.catalog import content_type
from promptgrid.tasks.output.journal import Journal
from promptgrid.tasks.output.keys import image_key
from promptgrid.tasks.output.manifest.writer import ManifestWriter
from promptgrid.tasks.output.sinks.base import Sink
from promptgrid.types import Job, JobOutcome, JobStatus

UNKNOWN_CREATE = "CREATE_OUTCOME_UNKNOWN"


class OutcomeStore:
    """Persists what the engine hands out, in the order that keeps a crash from losing or re-buying an image.

    A prediction id reaches the journal before the prediction is polled; an image reaches the sink before
    its manifest row, so a row marked success always points at a written object.
    """

    def __init__(self, sink: Sink, journal: Journal, writer: ManifestWriter, progress: RunProgress):
        self.sink, self.journal, self.writer, self.progress = sink, journal, writer, progress
        # Predictions created during this run, so a retried shard polls them instead of creating again,
        # and jobs already saved, so it does not run them twice.
        self.created: dict[str, str] = {}
        self.saved: set[str] = set()

    async def on_sending(self, job: Job, attempt: int) -> None:
        await self.journal.intend(job.job_id, attempt)

    async def on_unsent(self, job: Job, attempt: int) -> None:
        await self.journal.intend(job.job_id, attempt, withdrawn=True)

    async def on_created(self, job: Job, prediction_id: str, attempt: int) -> None:
        await self.journal.record(job.job_id, prediction_id, attempt)
        self.created[job.job_id] = prediction_id

    async def save_unknown(self, job: Job) -> None:
        """Record, without sending anything, a job whose last create went out but whose answer was lost."""
        outcome = JobOutcome(
            job_id=job.job_id,
            status=JobStatus.FAILED,
            error_code=UNKNOWN_CREATE,
            error_message=(
                "an earlier run stopped while this job's create was in flight: the prediction may exist and "
                "be billed, so it was not sent again; `promptgrid backfill OUTPUT --where "
                f"\"error_code = '{UNKNOWN_CREATE}'\"` creates it anew"
            ),
            completed_at=datetime.now(UTC),
        )
        await self.save(job, outcome)

    async def save(self, job: Job, outcome: JobOutcome) -> None:
        image_uri = key = None
        if outcome.status == JobStatus.SUCCESS and outcome.image is not None:
            # The format the engine read from the bytes, maybe not the one asked for: a paid image is kept.
            fmt = outcome.image_format or str(job.inputs.get("output_format") or "webp")
            key = image_key(job, fmt)
            image_uri = await asyncio.to_thread(
                self.sink.put_bytes,
                key,
                outcome.image,
                content_type(fmt),
                {"job-id": job.job_id, "sha256": outcome.sha256 or ""},
            )
            outcome.image = None  # the bytes are stored; keep memory flat on long runs
        await asyncio.to_thread(self.writer.add, job, outcome, image_uri, key)
        self.created.pop(job.job_id, None)
        self.saved.add(job.job_id)
        self.progress.record(outcome)
