"""What an output's manifest shows spent on one UTC day, across runs (for the per-day spend cap)."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc

from promptgrid.output.manifest.read import read_parts
from promptgrid.output.sinks.base import Sink
from promptgrid.types import JobStatus


def spent_on_day(sink: Sink, day: dt.date, price_per_image: float) -> float:
    """USD the output's manifest shows spent on `day` (UTC), across runs: each row's reported cost, else
    `price_per_image` for an image that has none."""
    columns = ["run_id", "job_id", "status", "completed_at", "cost_usd"]
    table = read_parts(sink, columns=columns)
    if table.num_rows == 0:
        return 0.0
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    completed = table["completed_at"]
    today = pc.and_(pc.greater_equal(completed, start), pc.less(completed, start + dt.timedelta(days=1)))
    rows = table.filter(pc.fill_null(today, False))
    seen: set[tuple[str, str, object]] = set()  # a compacted part's rows may be read twice
    total = 0.0
    for run_id, job_id, status, at, cost in zip(*(rows[c].to_pylist() for c in columns), strict=True):
        if (run_id, job_id, at) in seen:
            continue
        seen.add((run_id, job_id, at))
        if cost is not None:
            total += cost
        elif status == JobStatus.SUCCESS:
            total += price_per_image
    return total
