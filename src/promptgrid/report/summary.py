"""The run summary the report opens with: counts by status, latency, requests per image and cost."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptgrid.engine.progress import nearest_rank
from promptgrid.types import JobStatus

Row = Mapping[str, Any]


@dataclass
class OutputFigures:
    """Figures about a whole output, computed from its manifest rows."""

    jobs: int
    by_status: dict[str, int]
    failures_by_code: dict[str, int]
    latencies_s: list[float]
    latency_source: str
    api_requests: int
    cost_usd: float
    cost_is_estimate: bool
    run_ids: list[str] = field(default_factory=list)
    from_sandbox: bool = False  # the images came from promptgrid's sandbox: its costs are make-believe
    images_stored: int | None = None  # success rows: a `num_images` job has several (None: one per success)

    @property
    def images(self) -> int:
        if self.images_stored is not None:
            return self.images_stored
        return self.by_status.get(JobStatus.SUCCESS, 0)

    @property
    def requests_per_image(self) -> float | None:
        return self.api_requests / self.images if self.images else None

    def latency_percentile(self, fraction: float) -> float | None:
        """Nearest-rank percentile of the latencies, or None when no job has one."""
        return nearest_rank(self.latencies_s, fraction)


def summarize_rows(rows: Sequence[Row], price_per_image: float) -> OutputFigures:
    """Summarise manifest rows; cost is the API's figure where every image has one, else an estimate."""
    # A `num_images` job has a row per image; its status, requests and latency are the job's, counted once.
    firsts = [row for row in rows if not row.get("output_index")]
    by_status = Counter(str(row.get("status")) for row in firsts)
    statuses = {status.value: by_status.get(status.value, 0) for status in JobStatus}
    statuses.update(by_status)
    failures = Counter(
        str(row.get("error_code") or row.get("status"))
        for row in firsts
        if row.get("status") != JobStatus.SUCCESS
    )
    latencies, source = job_latencies(firsts)
    cost, is_estimate = run_cost(rows, price_per_image)
    return OutputFigures(
        jobs=len(firsts),
        by_status=statuses,
        failures_by_code=dict(failures.most_common()),
        latencies_s=latencies,
        latency_source=source,
        api_requests=sum(int(row.get("api_requests") or 0) for row in firsts),
        cost_usd=cost,
        cost_is_estimate=is_estimate,
        run_ids=sorted({str(row["run_id"]) for row in rows if row.get("run_id")}),
        images_stored=sum(1 for row in rows if row.get("status") == JobStatus.SUCCESS),
    )


def job_latencies(rows: Sequence[Row]) -> tuple[list[float], str]:
    """Model time of the successful jobs where the API reported it, else submit-to-completion time."""
    done = [row for row in rows if row.get("status") == JobStatus.SUCCESS]
    predict = [float(row["predict_time_s"]) for row in done if row.get("predict_time_s") is not None]
    if predict:
        return predict, "predict_time_s"
    elapsed = [
        (row["completed_at"] - row["submitted_at"]).total_seconds()
        for row in done
        if row.get("completed_at") is not None and row.get("submitted_at") is not None
    ]
    return elapsed, "completed_at - submitted_at"


def run_cost(rows: Sequence[Row], price_per_image: float) -> tuple[float, bool]:
    """The billed cost when the API reported one for every image, else images × the price per image."""
    done = [row for row in rows if row.get("status") == JobStatus.SUCCESS]
    reported: list[float] = [row["cost_usd"] for row in rows if row.get("cost_usd") is not None]
    if done and all(row.get("cost_usd") is not None for row in done):
        return float(sum(reported)), False
    return len(done) * price_per_image, True


def histogram(values: Sequence[float], bins: int = 20) -> list[tuple[float, float, int]]:
    """Equal-width bins over the values' range as (low, high, count); one bin when all values agree.

    Never more bins than distinct values, so a handful of latencies reads as a handful of bars.
    """
    if not values:
        return []
    low, high = min(values), max(values)
    if high == low:
        return [(low, high, len(values))]
    bins = max(1, min(bins, len(set(values))))
    width = (high - low) / bins
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    return [(low + i * width, low + (i + 1) * width, count) for i, count in enumerate(counts)]
