"""Progress a person can read on long work: lines with rates, 429s, errors by code and ETA, and the first
failure of each kind printed when it happens."""

from __future__ import annotations

import io

from promptgrid.engine.progress import RunProgress, TerminalProgress, format_eta
from promptgrid.types import JobOutcome, JobStatus, OutputImage


def failure(n: int, code: str) -> JobOutcome:
    return JobOutcome(f"job-{n:04d}", JobStatus.FAILED, error_code=code, error_message=f"{code} reason {n}")


def test_a_non_terminal_gets_lines_with_counts_rates_throttling_errors_and_eta():
    progress = RunProgress(total=10)
    stream = io.StringIO()
    with TerminalProgress(progress, interval_s=0.0, stream=stream) as display:
        progress.record(JobOutcome("job-ok", JobStatus.SUCCESS, cost_usd=0.01))
        progress.record(failure(1, "PROVIDER_REJECTED"))
        progress.record(failure(2, "PROVIDER_REJECTED"))
        progress.in_flight, progress.throttled = 4, 7
        display.refresh()

    lines = stream.getvalue().splitlines()
    line = [text for text in lines if text.startswith("progress:")][-1]
    assert "3/10 done=1 failed=2" in line and "img/min" in line and "in_flight=4" in line
    assert "429s=7" in line and "errors: PROVIDER_REJECTED 2" in line and "eta=" in line
    assert "eta=-" not in line  # three jobs finished: there is a rate to project


def test_the_first_failure_of_each_kind_is_printed_once_as_it_happens():
    progress = RunProgress(total=5)
    stream = io.StringIO()
    with TerminalProgress(progress, interval_s=3600.0, stream=stream) as display:
        display.refresh()  # the periodic line is due at once, then not for an hour
        for n, code in enumerate(["CREATE_FAILED", "CREATE_FAILED", "DEADLINE_EXCEEDED"]):
            progress.record(failure(n, code))
            display.refresh()
        firsts = [line for line in stream.getvalue().splitlines() if line.startswith("first ")]

    assert firsts == [
        "first CREATE_FAILED (job job-0000): CREATE_FAILED reason 0",
        "first DEADLINE_EXCEEDED (job job-0002): DEADLINE_EXCEEDED reason 2",
    ]


def test_eta_reads_as_time():
    assert format_eta(None, 3) == "-" and format_eta(100.0, 0) == "-"
    assert format_eta(35.2, 1) == "35s" and format_eta(250, 1) == "4m10s" and format_eta(3900, 1) == "1h05m"


def test_without_the_api_s_cost_every_image_of_a_prediction_is_priced():
    progress = RunProgress(total=2, price_per_image=0.05)
    progress.record(JobOutcome("one", JobStatus.SUCCESS, sha256="a"))
    progress.record(
        JobOutcome("three", JobStatus.SUCCESS, sha256="b", more_images=[OutputImage(), OutputImage()])
    )
    assert abs(progress.cost_usd - 0.05 * 4) < 1e-12
