"""`promptgrid status`: an output's jobs, images, cost, runs, lease, errors and exports, local and on S3."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.cli.status import output_status
from promptgrid.export.exporter import ExportOptions, export_output
from promptgrid.output.lease import OutputLease, lease_name
from promptgrid.output.run_log import read_runs, recorded, run_ended, run_started
from promptgrid.output.sinks import open_sink
from promptgrid.types import JobStatus
from tests.support.report_run import FAILURES, T0, record_retry_success, record_run

PRICE = 0.05
JOBS = 36  # record_run: 3 prompts x 3 cfg x 2 steps x 2 seeds


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def recorded_output(root: str) -> tuple[object, list]:
    """A finished run with run records around it, as the flow writes them, plus one run that died."""
    sink = open_sink(root)
    clock = Clock(T0 - timedelta(seconds=5))
    started = run_started(sink, "run-1", "shard-0-of-1", clock=clock)
    jobs = record_run(sink)
    clock.now = T0 + timedelta(minutes=2)
    run_ended(sink, started, "Failed", "4 of 36 jobs did not succeed", {"planned": 36, "failed": 4}, clock)
    clock.now = T0 + timedelta(minutes=30)
    run_started(sink, "run-died", clock=clock)  # killed: a start and no end, and no lease left
    return sink, jobs


def cli_status(*args: str) -> dict:
    result = CliRunner().invoke(app, ["status", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_answers_jobs_images_cost_runs_errors_and_lease(tmp_path: Path):
    sink, jobs = recorded_output(str(tmp_path / "out"))
    status = output_status(sink, price_per_image=PRICE, now=T0 + timedelta(hours=3))

    failed = len(FAILURES)
    assert status["jobs"] == {
        "success": JOBS - failed,
        "failed": 2,
        "timed_out": 1,
        "cancelled": 1,
    }
    assert status["images"] == {"count": JOBS - failed, "bytes": 0}  # these rows record no sizes
    # No billed costs in these rows: every image counted at the given price, all of it on T0's day.
    assert status["cost"] == {
        "total_usd": round((JOBS - failed) * PRICE, 4),
        "today_usd": round((JOBS - failed) * PRICE, 4),
        "today": T0.date().isoformat(),
        "estimated_images": JOBS - failed,
        "sandbox": False,
    }
    first, died = status["runs"]
    assert (first["run_id"], first["outcome"], first["host"]) == ("run-1", "Failed", socket.gethostname())
    assert first["started_at"] == (T0 - timedelta(seconds=5)).isoformat()
    assert first["ended_at"] == (T0 + timedelta(minutes=2)).isoformat()
    assert first["rows"] == JOBS and first["statuses"]["success"] == JOBS - failed
    assert (died["run_id"], died["outcome"], died["ended_at"]) == (
        "run-died",
        "no end recorded (died?)",
        None,
    )
    codes = {error["code"]: error for error in status["errors"]}
    assert set(codes) == {"PROVIDER_REJECTED", "EXECUTION_TIMEOUT", "PROVIDER_SERVER_ERROR", "CANCELLED"}
    rejected = codes["PROVIDER_REJECTED"]
    assert rejected["jobs"] == 1 and rejected["example"] == FAILURES[3][2]
    assert rejected["example_job"] == jobs[3].job_id
    assert status["lease"] == [] and status["exports"] == []

    # Another day: nothing today. A live run holds the lease: it is named, and its run counts as running.
    later = output_status(sink, price_per_image=PRICE, now=T0 + timedelta(days=2))
    assert later["cost"]["today_usd"] == 0.0
    with OutputLease(sink, lease_name(), "run-live") as lease:
        lease.take()
        with recorded(sink, "run-live"):
            held = output_status(sink, price_per_image=PRICE)
    (holder,) = held["lease"]
    assert holder["live"] and holder["run_id"] == "run-live" and holder["pid"] == os.getpid()
    assert next(run for run in held["runs"] if run["run_id"] == "run-live")["outcome"] == "running"
    ended = next(record for record in read_runs(sink) if record.run_id == "run-live")
    assert ended.outcome == "ended" and ended.ended_at is not None


def test_status_of_an_export_says_complete_then_stale_once_the_manifest_changes(tmp_path: Path):
    sink, jobs = recorded_output(str(tmp_path / "out"))
    dest = str(tmp_path / "exports" / "hf")
    export_output(ExportOptions(output=sink.root, dest=dest, format="hf"))
    (export,) = cli_status(sink.root, "--export", dest)["exports"]
    assert export["state"] == "complete" and export["up_to_date"] and export["format"] == "hf"
    assert export["rows"] == JOBS - len(FAILURES)

    record_retry_success(sink, next(job for job in jobs if job.status != JobStatus.SUCCESS), (1, 2, 3))
    (export,) = cli_status(sink.root, "--export", dest)["exports"]
    assert export["state"] == "complete" and not export["up_to_date"]
    assert cli_status(sink.root, "--export", str(tmp_path / "nowhere"))["exports"][0]["state"] == "none"


def test_status_reads_an_s3_output_and_prints_it_for_a_person(s3_output: str):
    recorded_output(s3_output)
    status = cli_status(s3_output)
    assert status["output"] == s3_output and status["images"]["count"] == JOBS - len(FAILURES)
    assert [run["run_id"] for run in status["runs"]] == ["run-1", "run-died"]

    result = CliRunner().invoke(app, ["status", s3_output])
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert f"jobs: {JOBS} (success 32, failed 2, " in text
    assert "run-1" in text and "Failed on " in text and "no end recorded (died?)" in text
    assert "lease: free" in text
    assert "PROVIDER_REJECTED" in text and "e.g. job " in text


def test_status_of_a_folder_that_is_no_output_exits_2(tmp_path: Path):
    result = CliRunner().invoke(app, ["status", str(tmp_path / "empty")])
    assert result.exit_code != 0
    from promptgrid.errors import InvalidInput

    with pytest.raises(InvalidInput, match="no promptgrid output here"):
        output_status(open_sink(str(tmp_path / "empty")))


def test_a_run_record_says_interrupted_or_crashed_and_never_holds_the_key(tmp_path: Path):
    from prefect.states import Failed

    from promptgrid.errors import RunInterrupted
    from promptgrid.redact import add_secret

    sink = open_sink(str(tmp_path / "out"))
    add_secret("sk-status-secret-123456")
    with pytest.raises(RunInterrupted), recorded(sink, "run-a"):
        raise RunInterrupted("stopped by Ctrl-C")
    with pytest.raises(ValueError), recorded(sink, "run-b"):
        raise ValueError("the API said sk-status-secret-123456 is wrong")
    with recorded(sink, "run-c") as log:  # as the flow ends one: with the state it returns
        state = Failed(
            message="1 of 3 jobs did not succeed", data={"planned": 3, "failed": 1, "report": None}
        )
        assert log.ended(state) is state
    runs = {record.run_id: record for record in read_runs(sink)}
    assert runs["run-a"].outcome == "interrupted" and runs["run-b"].outcome == "crashed"
    assert (runs["run-c"].outcome, runs["run-c"].counts) == ("Failed", {"planned": 3, "failed": 1})
    assert runs["run-c"].message == "1 of 3 jobs did not succeed"
    assert "sk-status-secret" not in runs["run-b"].message and "***" in runs["run-b"].message
    assert all(record.started_at <= datetime.now(UTC) for record in runs.values())
