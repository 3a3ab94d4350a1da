"""The score-images task: a run scores each shard's stored images as they land (`score:` in the spec)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable

from prefect import task
from prefect.cache_policies import NO_CACHE

from promptgrid.output.sinks.base import Sink
from promptgrid.score.stage import ScoreResult, score_output


@task(name="score-images", cache_policy=NO_CACHE)
async def score_images(
    sink: Sink,
    metrics: Iterable[str],
    job_ids: Collection[str],
    check: Callable[[], None] | None = None,
) -> ScoreResult:
    """Score the stored images of `job_ids` not scored yet; `check` (the lease's) runs before each batch."""
    return await asyncio.to_thread(score_output, sink, tuple(metrics), job_ids=job_ids, check=check)
