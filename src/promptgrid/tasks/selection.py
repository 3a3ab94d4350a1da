"""The backfill's selection task: which jobs run again (`promptgrid.engine.selection`)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from promptgrid.engine.selection import jobs_to_backfill
from promptgrid.types import Job


@task(name="select-backfill", cache_policy=NO_CACHE)
def select_backfill(output: str, statuses: list[str], where: str | None) -> tuple[str, list[Job]]:
    """The backfill flow's selection: the saved spec's text and the jobs to run again (`jobs_to_backfill`)."""
    return jobs_to_backfill(output, statuses, where)
