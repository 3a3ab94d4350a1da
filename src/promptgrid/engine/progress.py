"""A run's progress as people watch it: live counts, a terminal bar, and the end-of-run summary."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.config import EngineStats
from promptgrid.types import JobOutcome, JobStatus

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# Where a display that was given no stream writes: stderr for the command line; the Python API sets stdout
# for the run it starts, so a notebook shows the progress lines in the cell that ran it.
PROGRESS_STREAM: ContextVar[TextIO | None] = ContextVar("promptgrid_progress_stream", default=None)


@dataclass
class RunProgress:
    """Counts updated as outcomes arrive; `snapshot()` derives rates and the ETA from them."""

    total: int = 0
    skipped: int = 0
    price_per_image: float = PRICE_PER_IMAGE_USD
    started: float = field(default_factory=time.monotonic)
    by_status: Counter[JobStatus] = field(default_factory=Counter)
    by_error: Counter[str] = field(default_factory=Counter)
    api_requests: int = 0
    in_flight: int = 0
    throttled: int = 0  # 429 answers so far
    cost_usd: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    # The first failure of each kind, as a line to show as soon as it happens; a display takes them.
    news: list[str] = field(default_factory=list)
    engine: EngineStats | None = None  # the engine's counters: how the API's limits were met

    @property
    def finished(self) -> int:
        return sum(self.by_status.values())

    @property
    def succeeded(self) -> int:
        return self.by_status[JobStatus.SUCCESS]

    @property
    def failed(self) -> int:
        return self.finished - self.succeeded

    def record(self, outcome: JobOutcome) -> None:
        self.by_status[outcome.status] += 1
        self.api_requests += outcome.api_requests
        if outcome.status != JobStatus.SUCCESS:
            code = outcome.error_code or outcome.status.value
            self.by_error[code] += 1
            if self.by_error[code] == 1:
                reason = outcome.error_message or outcome.status.value
                self.news.append(f"first {code} (job {outcome.job_id[:12]}): {reason}")
            return
        # Without the API's figure, every image of the prediction is priced (`num_images` bills each).
        estimate = self.price_per_image * outcome.output_count
        self.cost_usd += outcome.cost_usd if outcome.cost_usd is not None else estimate
        if outcome.predict_time_s is not None:
            self.latencies_s.append(outcome.predict_time_s)
        elif outcome.submitted_at and outcome.completed_at:
            self.latencies_s.append((outcome.completed_at - outcome.submitted_at).total_seconds())

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        per_min = self.finished / elapsed * 60
        remaining = self.total - self.finished
        eta = remaining / (per_min / 60) if per_min > 0 else None
        return {
            "total": self.total,
            "done": self.succeeded,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "throttled": self.throttled,
            "images_per_min": per_min,
            "api_requests": self.api_requests,
            "eta_s": eta,
            "elapsed_s": elapsed,
        }

    def fraction(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * self.finished / self.total

    def describe(self) -> str:
        s = self.snapshot()
        errors = ", ".join(f"{code} {n}" for code, n in self.by_error.most_common()) or "none"
        return (
            f"{self.finished}/{s['total']} done={s['done']} failed={s['failed']} "
            f"{s['images_per_min']:.1f} img/min in_flight={s['in_flight']} 429s={s['throttled']} "
            f"errors: {errors} eta={format_eta(s['eta_s'], self.finished)}"
        )


def format_eta(eta_s: float | None, finished: int) -> str:
    """The time left as people read it (`1h05m`, `4m10s`, `35s`); `-` until the first job has finished."""
    if eta_s is None or finished == 0:
        return "-"
    minutes, seconds = divmod(round(eta_s), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def nearest_rank(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile (`fraction` from 0 to 1) of the values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary_rows(progress: RunProgress) -> list[dict[str, Any]]:
    """The end-of-run summary as table rows (metric, value), for the terminal and a Prefect artifact."""
    p50, p95 = nearest_rank(progress.latencies_s, 0.5), nearest_rank(progress.latencies_s, 0.95)
    images = progress.succeeded
    rows: list[dict[str, Any]] = [
        {"metric": "jobs planned", "value": progress.total},
        {"metric": "skipped (already in the manifest)", "value": progress.skipped},
    ]
    rows += [{"metric": f"status {status}", "value": n} for status, n in sorted(progress.by_status.items())]
    rows += [{"metric": f"error {code}", "value": n} for code, n in sorted(progress.by_error.items())]
    rows += [
        {"metric": "latency p50 (s)", "value": None if p50 is None else round(p50, 3)},
        {"metric": "latency p95 (s)", "value": None if p95 is None else round(p95, 3)},
        {"metric": "API requests", "value": progress.api_requests},
        {
            "metric": "requests per image",
            "value": round(progress.api_requests / images, 3) if images else None,
        },
        {"metric": "cost (USD)", "value": round(progress.cost_usd, 4)},
        {"metric": "wall time (s)", "value": round(progress.snapshot()["elapsed_s"], 1)},
    ]
    return rows + limit_rows(progress.engine)


def limit_rows(stats: EngineStats | None) -> list[dict[str, Any]]:
    """How the API's limits were met: a request cap adopted from the API, 429s, and creates that waited."""
    if stats is None:
        return []
    rows: list[dict[str, Any]] = [
        {"metric": "request cap adopted from the API", "value": stats.adopted_limit or "none"},
        {"metric": "429s about the request rate", "value": stats.rate_limited},
        {"metric": "creates that waited for room (429, concurrency)", "value": stats.room_waits},
        {"metric": "creates that waited for the balance (402)", "value": stats.payment_waits},
    ]
    if stats.late_successes:
        rows.append({"metric": "cancelled as stuck, then succeeded", "value": stats.late_successes})
    if stats.adopted_creates:
        rows.append({"metric": "lost create answers found in the listing", "value": stats.adopted_creates})
    if stats.unverified_resends:
        rows.append(
            {"metric": "5xx creates re-sent with no listing to check", "value": stats.unverified_resends}
        )
    return rows


class TerminalProgress:
    """A live bar on an interactive terminal; elsewhere a plain line every `interval_s`. Either way the
    first failure of each kind is printed as it happens, not only counted."""

    def __init__(self, progress: RunProgress, *, interval_s: float = 5.0, stream: TextIO | None = None):
        self.progress = progress
        self.stream = stream or PROGRESS_STREAM.get() or sys.stderr
        self.interval_s = interval_s
        self._live: Progress | None = None
        self._bar: TaskID | None = None
        self._last_line = 0.0

    def __enter__(self) -> TerminalProgress:
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._live = Progress(
                TextColumn("[bold]promptgrid"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._live.__enter__()
            self._bar = self._live.add_task(self.progress.describe(), total=max(self.progress.total, 1))
        return self

    def refresh(self) -> None:
        self._print_news()
        if self._live is not None:
            assert self._bar is not None  # added along with the live display
            self._live.update(
                self._bar,
                completed=self.progress.finished,
                total=max(self.progress.total, 1),
                description=self.progress.describe(),
            )
        elif time.monotonic() - self._last_line >= self.interval_s:
            self._last_line = time.monotonic()
            print(f"progress: {self.progress.describe()}", file=self.stream, flush=True)

    def _print_news(self) -> None:
        news, self.progress.news[:] = list(self.progress.news), []
        for line in news:
            if self._live is not None:
                self._live.console.print(line, markup=False, highlight=False)
            else:
                print(line, file=self.stream, flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self.refresh()
            self._live.__exit__(exc_type, exc, tb)
        else:  # the last line says how it ended, however long since the previous one
            self._print_news()
            print(f"progress: {self.progress.describe()}", file=self.stream, flush=True)
