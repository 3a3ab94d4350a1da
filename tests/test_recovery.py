"""Putting an output back in order: stored images whose row was lost, damaged manifest parts; local and S3.

The state a crash leaves is built with the real writers (journal, sink, manifest writer), stopped where a
`kill -9` would stop them; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.output import recovery
from promptgrid.output.journal import ImageRecord, Journal
from promptgrid.output.keys import image_key
from promptgrid.output.manifest.read import latest_status, part_keys, read_manifest
from promptgrid.output.manifest.rows import outcome_row
from promptgrid.output.manifest.writer import ManifestWriter, compact
from promptgrid.output.sinks import open_sink
from promptgrid.types import Job, JobOutcome, JobStatus

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_output")


def make_job(n: int) -> Job:
    inputs = {"prompt": f"a cat number {n}", "cfg": 3.5, "seed": n, "output_format": "png"}
    return Job(
        job_id=f"{n:064x}", model="stable-diffusion-3-5-large", inputs=inputs, carried={"split": "val"}
    )


def store_image(sink, journal: Journal, job: Job, data: bytes, *, run_id: str = "crashed") -> None:
    """What the store does for a success up to the image: journal record first, then the image itself."""
    key = image_key(job, "png")
    digest = hashlib.sha256(data).hexdigest()
    outcome = JobOutcome(
        job.job_id, JobStatus.SUCCESS, prediction_id=f"pred-{job.job_id[-4:]}", attempts=1, api_requests=2,
        submitted_at=NOW, completed_at=NOW, sha256=digest, bytes=len(data), width=8, height=8, cost_usd=0.07,
    )  # fmt: skip
    row = outcome_row(job, outcome, sink.uri(key), run_id)
    asyncio.run(journal.record_image(ImageRecord(job.job_id, key, digest, len(data), row=row)))
    sink.put_bytes(key, data, "image/png")


def test_stored_images_without_rows_get_their_rows_back_without_any_fetch(output):
    sink = open_sink(output)
    journal = Journal(sink, "crashed-s0")
    jobs = [make_job(n) for n in range(4)]
    with ManifestWriter(sink, run_id="crashed", spec_hash="h") as writer:  # one row reached the manifest
        store_image(sink, journal, jobs[0], b"image-0")
        writer.add(
            jobs[0], JobOutcome(jobs[0].job_id, JobStatus.SUCCESS), sink.uri(image_key(jobs[0], "png"))
        )
    for job in jobs[1:]:  # the rest were killed in the row buffer
        store_image(sink, journal, job, f"image-{job.inputs['seed']}".encode())
    journal.close()

    found, _ = recovery.inspect(open_sink(output), Journal(open_sink(output), "check"))
    assert found.recoverable == sorted(job.job_id for job in jobs[1:]) and not found.healthy

    with ManifestWriter(open_sink(output), run_id="rerun", spec_hash="h") as writer:
        done = recovery.repair(open_sink(output), Journal(open_sink(output), "rerun-s0"), writer)
    assert done.rebuilt == 3
    rows = {row["job_id"]: row for row in read_manifest(open_sink(output)).to_pylist()}
    assert set(rows) == {job.job_id for job in jobs}
    rebuilt = rows[jobs[2].job_id]
    assert rebuilt["status"] == "success" and rebuilt["run_id"] == "crashed"
    assert rebuilt["sha256"] == hashlib.sha256(b"image-2").hexdigest() and rebuilt["bytes"] == 7
    assert rebuilt["prompt"] == "a cat number 2" and rebuilt["split"] == "val" and rebuilt["cost_usd"] == 0.07
    assert rebuilt["image_uri"] == sink.uri(image_key(jobs[2], "png")) and rebuilt["completed_at"] == NOW
    # Repairing again finds nothing more to do.
    assert recovery.inspect(open_sink(output), Journal(open_sink(output), "again"))[0].healthy


def test_an_image_that_differs_from_its_journal_record_is_not_adopted(tmp_path):
    sink = open_sink(str(tmp_path))
    journal = Journal(sink, "w")
    good, altered, missing = make_job(1), make_job(2), make_job(3)
    store_image(sink, journal, good, b"fine")
    store_image(sink, journal, altered, b"original")
    sink.put_bytes(image_key(altered, "png"), b"tampered", "image/png")  # same size, other bytes
    store_image(sink, journal, missing, b"gone")
    sink.delete(image_key(missing, "png"))  # the put never happened
    with ManifestWriter(sink, run_id="r", spec_hash="h") as writer:
        done = recovery.repair(sink, Journal(sink, "r"), writer)
    assert done.rebuilt == 1 and sorted(done.unverified) == sorted([altered.job_id, missing.job_id])
    assert latest_status(sink) == {good.job_id: "success"}


def test_only_the_jobs_a_shard_owns_are_rebuilt(tmp_path):
    sink = open_sink(str(tmp_path))
    journal = Journal(sink, "w")
    for n in range(4):
        store_image(sink, journal, make_job(n), b"x")
    with ManifestWriter(sink, run_id="r", spec_hash="h") as writer:
        done = recovery.repair(sink, journal, writer, owns=lambda job_id: int(job_id, 16) % 2 == 0)
    assert done.rebuilt == 2 and set(latest_status(sink)) == {make_job(0).job_id, make_job(2).job_id}


def damage(sink, writer_rows: int = 3) -> tuple[list[str], list[Job]]:
    """Three parts: one whole, one zero bytes, one truncated; every job's image is stored and journaled."""
    journal = Journal(sink, "w")
    jobs = [make_job(n) for n in range(writer_rows * 3)]
    with ManifestWriter(sink, run_id="r", spec_hash="h", rows_per_part=writer_rows) as writer:
        for job in jobs:
            store_image(sink, journal, job, f"bytes of {job.inputs['seed']}".encode())
            outcome = JobOutcome(job.job_id, JobStatus.SUCCESS, sha256="x", completed_at=NOW)
            writer.add(job, outcome, sink.uri(image_key(job, "png")))
    journal.close()
    keys = part_keys(sink)
    assert len(keys) == 3
    sink.put_bytes(keys[1], b"", "application/octet-stream")
    sink.put_bytes(keys[2], sink.get_bytes(keys[2])[:-40], "application/octet-stream")
    return keys, jobs


def test_readers_skip_a_damaged_part_and_say_which(output, caplog):
    sink = open_sink(output)
    keys, jobs = damage(sink)
    with caplog.at_level(logging.WARNING, logger="promptgrid.manifest"):
        table = read_manifest(sink)
        latest_status(sink)
    assert table.num_rows == 3  # the whole part's jobs
    warned = [record.getMessage() for record in caplog.records if record.name == "promptgrid.manifest"]
    assert sum(keys[1] in text for text in warned) == 1 and sum(keys[2] in text for text in warned) == 1
    assert all("manifest check --repair" in text for text in warned)
    assert compact(sink) == 3  # compaction keeps going, and leaves the damaged parts where they are
    assert set(keys[1:]) <= set(part_keys(sink))


def test_repair_moves_damaged_parts_aside_and_recovers_their_jobs(output, caplog):
    sink = open_sink(output)
    keys, jobs = damage(sink)
    with caplog.at_level(logging.WARNING), ManifestWriter(sink, run_id="fix", spec_hash="h") as writer:
        done = recovery.repair(sink, Journal(sink, "fix"), writer)
    assert [part.key for part in done.damaged] == keys[1:]
    assert all(moved.startswith("manifest-quarantine/") for moved in done.quarantined)
    assert sorted(sink.list_keys("manifest-quarantine/")) == sorted(done.quarantined)
    assert keys[0] in part_keys(sink) and not set(keys[1:]) & set(part_keys(sink))
    assert done.rebuilt == 6 and set(latest_status(sink).values()) == {"success"}
    assert len(latest_status(sink)) == len(jobs)
    moved = [
        r.getMessage()
        for r in caplog.records
        if r.name == "promptgrid.recovery" and "moved aside" in r.getMessage()
    ]
    assert len(moved) == 2


def test_manifest_check_reports_then_repairs(output):
    keys, _ = damage(open_sink(output))
    runner = CliRunner()
    shown = runner.invoke(app, ["manifest", "show", output])
    assert shown.exit_code == 0 and "total" in shown.output

    checked = runner.invoke(app, ["manifest", "check", output])
    assert checked.exit_code == 1, checked.output
    assert f"damaged: {keys[1]}" in checked.output and f"damaged: {keys[2]}" in checked.output
    assert "without a success row: 6" in checked.output and "--repair" in checked.output

    repaired = runner.invoke(app, ["manifest", "check", "--repair", output])
    assert repaired.exit_code == 0, repaired.output
    assert "rebuilt 6 success rows" in repaired.output and repaired.output.count("moved aside:") == 2

    again = runner.invoke(app, ["manifest", "check", output])
    assert again.exit_code == 0 and "damaged" not in again.output
