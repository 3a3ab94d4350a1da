"""A run's progress as people watch it: live counts, a terminal bar, and the end-of-run summary.

Honest about a stuck tail: the oldest prediction in flight is shown with its age and deadline, and the ETA
never shrinks while nothing finishes (it is at least the time since the last finish). The live line is fitted
to the terminal's width, dropping the least important parts first; the count and ETA go last.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Callable
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
BAR_WIDTH = 20  # columns of the live bar at most; the text beside it gets the rest of the terminal


@dataclass
class RunProgress:
    """Counts updated as outcomes arrive; `snapshot()` derives rates and the ETA from them."""

    total: int = 0
    skipped: int = 0
    price_per_image: float = PRICE_PER_IMAGE_USD
    # The engine's clock (monotonic seconds); a test scripts it to show a stuck prediction's age.
    clock: Callable[[], float] = time.monotonic
    started: float = -1.0  # when counting began, on `clock`; -1: at creation
    last_finish: float | None = None  # when the latest outcome arrived
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

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

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
        self.last_finish = self.clock()
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

    @property
    def requests_sent(self) -> int:
        """The requests charged to jobs, and the listings that watched for their ends (charged to none)."""
        return self.api_requests + (self.engine.listings if self.engine is not None else 0)

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        elapsed = max(now - self.started, 1e-9)
        per_min = self.finished / elapsed * 60
        return {
            "total": self.total,
            "done": self.succeeded,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "throttled": self.throttled,
            "images_per_min": per_min,
            "api_requests": self.requests_sent,
            "eta_s": self.eta_s(now),
            "elapsed_s": elapsed,
        }

    def eta_s(self, now: float) -> float | None:
        """The time left at the rate so far; None before the first finish.

        Between finishes it only grows: the rate falls as time passes, and the estimate is at least the time
        since the last finish (a tail that has waited three minutes is not "6 s" from done).
        """
        remaining = self.total - self.finished
        if self.finished == 0 or self.last_finish is None:
            return None
        if remaining <= 0:
            return 0.0
        projected = remaining * (now - self.started) / self.finished
        return max(projected, now - self.last_finish)

    def oldest_waiting(self) -> tuple[float, float] | None:
        """The oldest prediction being waited on: (its age, its deadline from the start), in seconds."""
        waiting = list(self.engine.waiting.values()) if self.engine is not None else []
        if not waiting:
            return None
        start, deadline = min(waiting)
        return self.clock() - start, deadline - start

    def fraction(self) -> float:
        return 100.0 if self.total == 0 else 100.0 * self.finished / self.total

    def describe(self) -> str:
        """Everything, for log lines (no width limit)."""
        s = self.snapshot()
        errors = ", ".join(f"{code} {n}" for code, n in self.by_error.most_common()) or "none"
        oldest = self.oldest_waiting()
        waiting = "" if oldest is None else f" oldest={format_oldest(*oldest)}"
        return (
            f"{self.finished}/{s['total']} done={s['done']} failed={s['failed']} "
            f"{s['images_per_min']:.1f} img/min in_flight={s['in_flight']}{waiting} 429s={s['throttled']} "
            f"errors: {errors} eta={format_eta(s['eta_s'], self.finished)}"
        )

    def live_line(self, width: int) -> str:
        """The live bar's text within `width` columns: the least important parts are dropped first."""
        s = self.snapshot()
        oldest = self.oldest_waiting()
        parts = [  # most important first
            f"{self.finished}/{s['total']}",
            f"eta {format_eta(s['eta_s'], self.finished)}",
            f"oldest {format_oldest(*oldest)}" if oldest is not None else "",
            f"failed {s['failed']}" if s["failed"] else "",
            f"in flight {s['in_flight']}",
            f"{s['images_per_min']:.1f} img/min",
            f"429s {s['throttled']}" if s["throttled"] else "",
            ", ".join(f"{code} {n}" for code, n in self.by_error.most_common()),
        ]
        return fit_parts([part for part in parts if part], width)


def fit_parts(parts: list[str], width: int, separator: str = " · ") -> str:
    """As many of `parts` as fit in `width`, in order; the first is cut (with …) if even it alone does not."""
    line = parts[0] if parts else ""
    for part in parts[1:]:
        longer = f"{line}{separator}{part}"
        if len(longer) > width:
            break
        line = longer
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def format_oldest(age_s: float, deadline_s: float) -> str:
    """`3m30s of 4m25s` (age and the deadline counted from its start), or `4m40s, past 4m25s: cancelling`."""
    age, deadline = format_eta(age_s, 1), format_eta(deadline_s, 1)
    return f"{age} of {deadline}" if age_s < deadline_s else f"{age}, past {deadline}: cancelling"


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
        {"metric": "API requests", "value": progress.requests_sent},
        {
            "metric": "requests per image",
            "value": round(progress.requests_sent / images, 3) if images else None,
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
    if stats.refused_probes:
        rows.append({"metric": "room probes refused (free)", "value": stats.refused_probes})
    if stats.listed_ends:
        listed = "successes seen in the executions listing (no get)"
        rows.append({"metric": listed, "value": stats.listed_ends})
    if stats.spend:
        rows.append({"metric": "spent against the cap", "value": stats.spend})
    if stats.late_successes:
        rows.append({"metric": "cancelled as stuck, then succeeded", "value": stats.late_successes})
    if stats.adopted_creates:
        rows.append({"metric": "lost create answers found in the listing", "value": stats.adopted_creates})
    if stats.unverified_resends:
        rows.append(
            {"metric": "5xx creates re-sent with no listing to check", "value": stats.unverified_resends}
        )
    return rows


def _live_display(stream: TextIO, *, transient: bool = False) -> Progress:
    """A rich display of one text column and a bar, on `stream` (a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    console = Console(file=stream)
    bar = BarColumn(bar_width=max(5, min(BAR_WIDTH, console.width // 4)))
    text = TextColumn("{task.description}", markup=False)
    return Progress(text, bar, console=console, transient=transient)


def _text_width(live: Progress) -> int:
    """Columns left for the text beside the bar (rich puts one space between columns)."""
    from rich.progress import BarColumn

    bar = next(column for column in live.columns if isinstance(column, BarColumn))
    return max(10, live.console.width - (bar.bar_width or BAR_WIDTH) - 2)


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
            self._live = _live_display(self.stream)
            self._live.__enter__()
            line = self.progress.live_line(_text_width(self._live))
            self._bar = self._live.add_task(line, total=max(self.progress.total, 1))
        return self

    def refresh(self) -> None:
        self._print_news()
        if self._live is not None:
            assert self._bar is not None  # added along with the live display
            self._live.update(  # the width is read each time: the terminal may have been resized
                self._bar,
                completed=self.progress.finished,
                total=max(self.progress.total, 1),
                description=self.progress.live_line(_text_width(self._live)),
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


class StepProgress:
    """A counted stage after the run (the report's prompts): a bar on a terminal, removed when done;
    elsewhere a line every `interval_s`, so a stage that takes seconds is seen working and a quick one stays
    quiet. `advance()` may be called from any thread."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        interval_s: float = 5.0,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self.stream = stream or PROGRESS_STREAM.get() or sys.stderr
        self.interval_s, self.clock = interval_s, clock
        self.started = self._last_line = clock()
        self._printed = -1  # `done` as of the last line printed; -1: none yet
        self._live: Progress | None = None
        self._bar: TaskID | None = None

    def __enter__(self) -> StepProgress:
        if self.stream.isatty() and self.total > 0:
            self._live = _live_display(self.stream, transient=True)
            self._live.__enter__()
            self._bar = self._live.add_task(self._line(), total=self.total)
        return self

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._live is not None:
            assert self._bar is not None
            self._live.update(self._bar, completed=self.done, description=self._line())
        elif self.clock() - self._last_line >= self.interval_s:
            self._print()

    def _line(self) -> str:
        elapsed = self.clock() - self.started
        return f"{self.what}: {self.done}/{self.total} {self.unit} ({elapsed:.1f} s)"

    def _print(self) -> None:
        self._last_line, self._printed = self.clock(), self.done
        print(self._line(), file=self.stream, flush=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, tb)
        elif self._printed not in (-1, self.done) and exc_type is None:  # seen working: say it finished
            self._print()
