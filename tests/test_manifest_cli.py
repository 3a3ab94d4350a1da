"""`promptgrid manifest show|compact` through the real Typer app, on local and loopback S3 outputs."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from promptgrid.cli import app
from promptgrid.output.manifest.read import part_keys
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks import open_sink
from promptgrid.types import Job, JobOutcome, JobStatus


def fill(sink) -> None:
    statuses = [JobStatus.SUCCESS] * 3 + [JobStatus.FAILED] * 2 + [JobStatus.TIMED_OUT]
    with ManifestWriter(sink, run_id="run-9", spec_hash="hash-1", rows_per_part=2) as writer:
        for n, status in enumerate(statuses):
            job = Job(job_id=f"j{n}", model="m", inputs={"prompt": "p"})
            writer.add(job, JobOutcome(job_id=f"j{n}", status=status), None)
        writer.add(
            Job(job_id="j3", model="m", inputs={"prompt": "p"}), JobOutcome("j3", JobStatus.SUCCESS), None
        )


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_output")


def test_show_prints_counts_by_latest_status_and_provenance(output):
    fill(open_sink(output))
    result = CliRunner().invoke(app, ["manifest", "show", output])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.splitlines()]
    assert ["success", "4"] in lines and ["failed", "1"] in lines and ["timed_out", "1"] in lines
    assert ["total", "6"] in lines
    assert (
        "(4 parts)" in result.output
        and "spec_hash: hash-1" in result.output
        and "run_id: run-9" in result.output
    )


def test_compact_merges_parts_and_keeps_counts(output):
    sink = open_sink(output)
    fill(sink)
    result = CliRunner().invoke(app, ["manifest", "compact", output])
    assert result.exit_code == 0, result.output
    assert "compacted 4 parts into 1: 6 jobs" in result.output
    assert len(part_keys(sink)) == 1
    shown = CliRunner().invoke(app, ["manifest", "show", output]).output
    assert "total" in shown and "6" in shown and "(1 parts)" in shown


def test_show_on_a_folder_without_a_manifest_exits_2(tmp_path, monkeypatch, capsys):
    from promptgrid.cli import main

    monkeypatch.setattr(sys, "argv", ["promptgrid", "manifest", "show", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exited:
        main()

    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "no manifest here" in err and str(tmp_path / "missing") in err and "Traceback" not in err


@pytest.mark.integration  # the installed command, in a process of its own
def test_a_bucketless_output_exits_2_without_a_traceback():
    program = "from promptgrid.cli import main; main()"
    done = subprocess.run(
        [sys.executable, "-c", program, "manifest", "show", "s3://"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "error:" in done.stderr and "Traceback" not in done.stderr
