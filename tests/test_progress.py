"""Progress a person can read on long work: lines with rates, 429s, errors by code and ETA, and the first
failure of each kind printed when it happens."""

from __future__ import annotations

import io

import httpx

from promptgrid.api.client import ApiClient
from promptgrid.api.polling import PollPolicy
from promptgrid.engine.config import EngineConfig, EngineStats
from promptgrid.engine.engine import Engine
from promptgrid.engine.progress import RunProgress, StepProgress, TerminalProgress, format_eta
from promptgrid.models.check import check_input
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobOutcome, JobStatus, OutputImage

MODEL = "stable-diffusion-3-5-large"


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


class ScriptedClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_stuck_prediction_shows_its_age_and_deadline_while_the_engine_waits_on_it():
    # A prediction that never ends, its deadline 265 s; each poll moves the scripted clock on 30 s.
    clock = ScriptedClock()
    seen: dict[int, tuple[str, str]] = {}
    progress = RunProgress(total=1, clock=clock)

    def api(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/cancel"):
            return httpx.Response(200, json={"status": "cancelled", "predictionID": "p1"})
        if request.method == "POST":
            return httpx.Response(200, json={"status": "success", "predictionID": "p1"})
        clock.now += 30.0
        polls = len(seen) + 1
        seen[polls] = (progress.describe(), progress.live_line(80))
        return httpx.Response(200, json={"id": "p1", "status": "processing", "output": None})

    config = EngineConfig(
        limits=Limits(requests=10_000, window_s=1.0, max_in_flight=2),
        deadline_s=265.0,
        cancel_wait_s=60.0,
        retry_backoff_s=0.001,
        poll=PollPolicy(cold_start_s=0.001, min_interval_s=0.001, max_interval_s=0.01),
    )
    transport = httpx.MockTransport(api)
    async with ApiClient("http://127.0.0.1:9", ApiKey("sk-progress-test"), transport=transport) as client:
        engine = Engine(client, LocalBudget(config.limits), config, clock=clock)
        progress.engine = engine.stats
        inputs, errors = check_input(MODEL, {"prompt": "a slow river", "seed": 1})
        assert not errors
        outcome = await engine.run_job(Job(job_id="job-1", model=MODEL, inputs=inputs))

    assert outcome.error_code == "DEADLINE_EXCEEDED"
    log_line, live = seen[7]  # 210 s in
    assert "oldest=3m30s of 4m25s" in log_line, log_line
    assert "oldest 3m30s of 4m25s" in live, live
    assert "past 4m25s: cancelling" in seen[9][0]  # 270 s in: past its deadline, being cancelled
    assert engine.stats.waiting == {} and progress.oldest_waiting() is None  # gone once it ended


def test_the_eta_never_counts_down_while_nothing_finishes():
    clock = ScriptedClock()
    progress = RunProgress(total=120, clock=clock)
    for n in range(119):
        clock.now += 0.25
        progress.record(JobOutcome(f"job-{n}", JobStatus.SUCCESS, cost_usd=0.01))
    etas = []
    for _ in range(30):  # one prediction left, stuck: 30 refreshes, 7 s apart, and nothing finishes
        etas.append(progress.snapshot()["eta_s"])
        clock.now += 7.0
    assert etas == sorted(etas) and etas[-1] >= 200.0  # rising, and never "a few seconds" after 3 minutes


def test_the_live_line_fits_the_width_and_drops_the_least_important_parts_first():
    clock = ScriptedClock()
    stats = EngineStats()
    progress = RunProgress(total=1000, clock=clock, engine=stats)
    for n in range(400):
        clock.now += 0.5
        progress.record(JobOutcome(f"ok-{n}", JobStatus.SUCCESS, cost_usd=0.01))
    for n in range(3):
        progress.record(failure(n, "PROVIDER_SERVER_ERROR"))
    stats.waiting["p1"] = (clock.now - 95.0, clock.now + 170.0)
    progress.in_flight, progress.throttled = 10, 4
    full = progress.live_line(500)
    assert full.split(" · ")[:3] == ["403/1000", "eta 4m56s", "oldest 1m35s of 4m25s"]
    assert "PROVIDER_SERVER_ERROR 3" in full
    for width in range(8, 160):
        line = progress.live_line(width)
        assert len(line) <= width
        if width >= len("403/1000 · eta 4m56s"):
            assert "eta 4m56s" in line  # the ETA is never what gets cut
        if width >= len("403/1000 · eta 4m56s · oldest 1m35s of 4m25s"):
            assert "oldest 1m35s of 4m25s" in line
    assert "PROVIDER_SERVER_ERROR" not in progress.live_line(80)  # the error list goes first


def test_a_terminal_bar_shows_the_fitted_line(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("COLUMNS", "60")
    clock = ScriptedClock()
    stats = EngineStats()
    progress = RunProgress(total=10, clock=clock, engine=stats)
    progress.record(JobOutcome("job-ok", JobStatus.SUCCESS, cost_usd=0.01))
    stats.waiting["p1"] = (clock.now - 30.0, clock.now + 235.0)
    stream = Terminal()
    with TerminalProgress(progress, stream=stream) as display:
        display.refresh()
    assert "1/10 · eta" in stream.getvalue() and "oldest 30s of 4m25s" in stream.getvalue()


def test_a_slow_step_prints_its_progress_and_a_quick_one_stays_quiet():
    clock = ScriptedClock()
    quiet, slow = io.StringIO(), io.StringIO()
    with StepProgress("report", 3, "prompts", stream=quiet, clock=clock) as step:
        for _ in range(3):
            step.advance()
    with StepProgress("report", 4, "prompts", stream=slow, clock=clock, interval_s=5.0) as step:
        for _ in range(4):
            clock.now += 3.0
            step.advance()
    assert quiet.getvalue() == ""
    assert slow.getvalue().splitlines() == [
        "report: 2/4 prompts (6.0 s)",
        "report: 4/4 prompts (12.0 s)",
    ]


def test_without_the_api_s_cost_every_image_of_a_prediction_is_priced():
    progress = RunProgress(total=2, price_per_image=0.05)
    progress.record(JobOutcome("one", JobStatus.SUCCESS, sha256="a"))
    progress.record(
        JobOutcome("three", JobStatus.SUCCESS, sha256="b", more_images=[OutputImage(), OutputImage()])
    )
    assert abs(progress.cost_usd - 0.05 * 4) < 1e-12
