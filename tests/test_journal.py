"""The prediction-id journal through real sinks: a temp folder and moto's S3 server on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from promptgrid.output.journal import Journal, JournalRecord
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks import open_sink
from promptgrid.types import Job, JobOutcome, JobStatus

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


class SteppingClock:
    """A clock that moves one second per reading, so record order is explicit."""

    def __init__(self, start: datetime = T0):
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(params=["local", "s3"])
def sink(request, tmp_path):
    if request.param == "local":
        return open_sink(str(tmp_path / "out"))
    return open_sink(request.getfixturevalue("s3_output"))


async def test_records_are_durable_on_return_and_seen_by_a_fresh_reader(sink):
    journal = Journal(sink, "run1-w0")
    await journal.record("job-a", "pred-1", 1)
    # A new process (a fresh object over the same output) sees it: nothing lives only in memory.
    assert Journal(open_sink(sink.root), "other").load() == {"job-a": "pred-1"}


async def test_latest_prediction_per_job_across_writers(sink):
    clock = SteppingClock()
    first, second = Journal(sink, "w0", clock=clock), Journal(sink, "w1", clock=clock)
    await first.record("job-a", "pred-1", 1)
    await second.record("job-b", "pred-2", 1)
    await second.record("job-a", "pred-3", 2)
    await first.record("job-b", "pred-4", 2)
    assert first.load() == second.load() == {"job-a": "pred-3", "job-b": "pred-4"}
    records = sorted(first.records(), key=JournalRecord.sort_key)
    assert [(r.job_id, r.prediction_id, r.attempt, r.writer_id) for r in records] == [
        ("job-a", "pred-1", 1, "w0"),
        ("job-b", "pred-2", 1, "w1"),
        ("job-a", "pred-3", 2, "w1"),
        ("job-b", "pred-4", 2, "w0"),
    ]
    assert records[0].created_at == T0 + timedelta(seconds=1)


async def test_concurrent_records_all_land(sink):
    journal = Journal(sink, "w0")
    await asyncio.gather(*(journal.record(f"job-{n}", f"pred-{n}", 1) for n in range(30)))
    assert journal.load() == {f"job-{n}": f"pred-{n}" for n in range(30)}


def test_s3_writes_one_object_per_record_in_the_writers_folder(s3_output, s3_env, s3_client):
    sink = open_sink(s3_output)
    journal = Journal(sink, "run 7/w0", clock=SteppingClock())
    journal.record_sync("job-a", "0b9f-uuid", 1)
    journal.record_sync("job-a", "id with spaces/and slash", 2)
    journal.record_sync("job/odd", "pred-9", 1)
    keys = sorted(sink.list_keys("journal/"))
    assert len(keys) == 3 and all(key.startswith("journal/run-7-w0/") for key in keys)
    assert keys[0] == "journal/run-7-w0/job-a/20260304T050608123456Z-a1-0b9f-uuid.json"
    head = s3_client.head_object(Bucket=s3_env, Key=f"runs/demo/{keys[0]}")
    assert head["ContentType"] == "application/json"
    # Odd ids cannot ride in the key verbatim; they come back exactly from the body.
    assert journal.load() == {"job-a": "id with spaces/and slash", "job/odd": "pred-9"}


def test_local_journal_is_one_appended_file_per_writer_and_skips_a_torn_line(tmp_path):
    sink = open_sink(str(tmp_path))
    journal = Journal(sink, "w0")
    journal.record_sync("job-a", "pred-1", 1)
    path = tmp_path / "journal" / "w0" / "records.jsonl"
    with path.open("ab") as handle:
        handle.write(b'{"job_id":"job-b","prediction_id":"pr')  # the process died mid-append
    assert journal.load() == {"job-a": "pred-1"}
    assert sorted(p.name for p in (tmp_path / "journal").rglob("*") if p.is_file()) == ["records.jsonl"]


def test_load_skips_jobs_the_manifest_shows_finished(sink):
    journal = Journal(sink, "w0", clock=SteppingClock())
    recorded = [("ok", "p-ok"), ("bad", "p-bad"), ("slow", "p-slow"), ("gone", "p-gone"), ("retry", "p-new")]
    for job_id, prediction_id in recorded:
        journal.record_sync(job_id, prediction_id, 1)
    journal.record_sync("fresh", "p-fresh", 1)
    outcomes = [
        ("ok", JobStatus.SUCCESS, "p-ok"),
        ("bad", JobStatus.FAILED, "p-bad"),
        ("slow", JobStatus.TIMED_OUT, "p-slow"),  # cancelled at its deadline: a rerun creates anew
        ("gone", JobStatus.CANCELLED, "p-gone"),
        ("retry", JobStatus.FAILED, "p-old"),  # an earlier attempt failed; the new prediction is unresolved
    ]
    with ManifestWriter(sink, run_id="r", spec_hash="h") as writer:
        for job_id, status, prediction_id in outcomes:
            job = Job(job_id=job_id, model="m", inputs={"prompt": "p"})
            writer.add(job, JobOutcome(job_id=job_id, status=status, prediction_id=prediction_id), None)
    assert journal.load() == {"retry": "p-new", "fresh": "p-fresh"}
    assert len(journal.load(skip_finished=False)) == 6


async def test_async_load_and_empty_journal(sink):
    journal = Journal(sink, "w0")
    assert await journal.load_async() == {}
    with pytest.raises(ValueError):
        await journal.record("job-a", "", 1)


async def test_a_create_sent_but_never_recorded_is_uncertain(sink):
    clock = SteppingClock()
    journal = Journal(sink, "w0", clock=clock)
    await journal.intend("answered", 1)
    await journal.record("answered", "pred-1", 1)
    await journal.intend("lost", 1)  # the process died before the create's answer was recorded
    await journal.intend("retried", 1)
    await journal.record("retried", "pred-2", 1)
    await journal.intend("retried", 2)  # a second attempt whose answer never came back
    journal.close()

    fresh = Journal(open_sink(sink.root), "w1")
    assert fresh.uncertain() == {"lost", "retried"}
    # Intents never pose as records: the ids to poll are only the recorded ones.
    assert fresh.load() == {"answered": "pred-1", "retried": "pred-2"}
