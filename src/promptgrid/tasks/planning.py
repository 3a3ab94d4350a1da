"""The planning task: what a run has left to do, read from its output's manifest and its job source."""

from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from promptgrid.engine.planning import RunPlan, Selection, Tally, plan_selection
from promptgrid.output.sinks.base import Sink


@task(name="plan-run", cache_policy=NO_CACHE)
async def plan_run(plan: RunPlan, sink: Sink, selection: Selection) -> tuple[dict[str, str], int, Tally]:
    """Each job's latest status, how many jobs the run takes, and what it passes over (`plan_selection`)."""
    return await asyncio.to_thread(plan_selection, plan, sink, selection)  # reads the manifest: off the loop
