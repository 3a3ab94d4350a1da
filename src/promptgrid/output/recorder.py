"""The store stage: prediction ids to the journal as they are created, outcomes to the sink and manifest.

`OutcomeStore` implements the engine's job events (promptgrid.engine.events.JobEvents) by their shape, so
storage imports nothing of the engine.
"""

from __future__ import annotations

import asyncio
from typing import Generic, Protocol, TypeVar

from promptgrid.aio import in_background
from promptgrid.models.catalog import content_type
from promptgrid.output.journal import ImageRecord, Journal
from promptgrid.output.keys import image_key
from promptgrid.output.lease import OutputLease
from promptgrid.output.manifest.rows import outcome_row
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks.base import Sink
from promptgrid.types import Job, JobOutcome, JobStatus


class Progress(Protocol):
    """Whatever counts the outcomes stored (the run's progress)."""

    def record(self, outcome: JobOutcome) -> None: ...


P = TypeVar("P", bound=Progress)


class OutcomeStore(Generic[P]):
    """Persists what the engine hands out, in the order that keeps a crash from losing or re-buying an image.

    A prediction id reaches the journal before the prediction is polled. An image's key, size, hash and
    row reach the journal before the image reaches the sink (each image of a `num_images` prediction in
    turn), and the image reaches the sink before its manifest row: a row marked success always points at
    a written object, and an image written without its row (the process died) is adopted by the next run
    instead of being fetched or paid for again.

    A save in progress always finishes, even when its caller is cancelled (Ctrl-C): `drain` waits for
    them, after which nothing more is saved.
    """

    def __init__(
        self,
        sink: Sink,
        journal: Journal,
        writer: ManifestWriter,
        progress: P,
        lease: OutputLease | None = None,
    ):
        self.sink, self.journal, self.writer, self.progress = sink, journal, writer, progress
        self.lease = lease
        # Predictions created during this run, so a retried shard polls them instead of creating again,
        # and jobs already saved, so it does not run them twice.
        self.created: dict[str, str] = {}
        self.saved: set[str] = set()
        self.stopped = False
        self._saving: set[asyncio.Task[None]] = set()

    async def on_sending(self, job: Job, attempt: int) -> None:
        if self.lease is not None:
            self.lease.check()  # a run that may have lost its output to another must not pay for more
        await self.journal.intend(job.job_id, attempt)

    async def on_unsent(self, job: Job, attempt: int) -> None:
        await self.journal.intend(job.job_id, attempt, withdrawn=True)

    async def on_created(self, job: Job, prediction_id: str, attempt: int) -> None:
        await self.journal.record(job.job_id, prediction_id, attempt)
        self.created[job.job_id] = prediction_id

    async def save(self, job: Job, outcome: JobOutcome) -> None:
        """Store the outcome (image, then row); shielded, so a cancelled caller never leaves half a save."""
        if self.stopped:
            return  # stopping: the journal lets the next run poll this prediction again, paying nothing
        await asyncio.shield(in_background(self._save(job, outcome), self._saving))

    async def drain(self) -> None:
        """Let the saves in progress finish; save nothing after."""
        self.stopped = True
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)

    async def _save(self, job: Job, outcome: JobOutcome) -> None:
        stored: list[tuple[str | None, str | None]] = [(None, None)]
        if outcome.status == JobStatus.SUCCESS and outcome.image is not None:
            stored = await asyncio.to_thread(self._store_images, job, outcome)
            outcome.image = None  # the bytes are stored; keep memory flat on long runs
            for image in outcome.more_images:
                image.image = None
        await asyncio.to_thread(self.writer.add_images, job, outcome, stored)
        self.created.pop(job.job_id, None)
        self.saved.add(job.job_id)
        self.progress.record(outcome)

    def _store_images(self, job: Job, outcome: JobOutcome) -> list[tuple[str | None, str | None]]:
        """In a worker thread, image by image (a `num_images` prediction has several): the journal record,
        then the image it announces. Returns each image's URI and key."""
        stored: list[tuple[str | None, str | None]] = []
        count = outcome.output_count
        for index in range(count):
            image = outcome.output_image(index)
            data = image.image or b""
            # The format the engine read from the bytes, maybe not the one asked for: a paid image is kept.
            fmt = image.image_format or str(job.inputs.get("output_format") or "webp")
            key = image_key(job, fmt, index)
            row = outcome_row(job, outcome, self.sink.uri(key), self.writer.run_id, key, index)
            record = ImageRecord(
                job.job_id,
                key,
                image.sha256 or "",
                len(data),
                outcome.attempts,
                row=row,
                output_index=index,
                output_count=count,
            )
            self.journal.record_image_sync(record)
            metadata = {"job-id": record.job_id, "sha256": record.sha256}
            stored.append((self.sink.put_bytes(key, data, content_type(fmt), metadata), key))
        return stored
