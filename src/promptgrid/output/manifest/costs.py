"""What an output's manifest shows spent on one UTC day, across runs, and the spend caps a run keeps."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import replace

import pyarrow.compute as pc

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.spend import SpendCaps, check_prices
from promptgrid.output.manifest.read import read_parts
from promptgrid.output.sinks.base import Sink
from promptgrid.spec.schema import ApiConfig
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


def spend_caps(
    api: ApiConfig, sink: Sink, models: Iterable[str], now: dt.datetime | None = None
) -> SpendCaps:
    """The run's spend caps from its spec, with what the output spent today for a per-day cap; InvalidInput
    (nothing sent) when a cap is set on a model of unknown price."""
    caps = SpendCaps(api.max_cost, api.max_cost_per_day, 0.0, api.price_per_image)
    check_prices(caps, models)
    if caps.max_cost_per_day is None:
        return caps
    day = (now or dt.datetime.now(dt.UTC)).date()
    price = api.price_per_image if api.price_per_image is not None else PRICE_PER_IMAGE_USD
    return replace(caps, spent_today=spent_on_day(sink, day, price))
