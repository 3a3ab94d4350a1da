"""The backfill flow: run again the jobs of an output whose latest outcome matches, e.g. failed or timed out.

Which jobs, and with which API settings, is the select-backfill task's: the output alone says.
"""

from __future__ import annotations

from prefect import flow
from prefect.client.schemas.objects import State

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.planning import RunPlan, Selection
from promptgrid.engine.selection import DEFAULT_STATUSES, saved_api_config
from promptgrid.flows.generate import current_run_id
from promptgrid.output.manifest.read import provenance
from promptgrid.output.sinks import open_sink
from promptgrid.run_summary import RunSummary
from promptgrid.settings import environment_overrides
from promptgrid.spec.overrides import spec_overrides
from promptgrid.spec.verdict import FailWhen
from promptgrid.tasks.pipeline import run_plan
from promptgrid.tasks.resolution import resolve_backfill_models
from promptgrid.tasks.selection import select_backfill


@flow(name="backfill")
async def backfill(
    output: str,
    statuses: list[str] | None = None,
    where: str | None = None,
    api_base: str | None = None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    polls_count: bool | None = None,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    time_scale: float = 1.0,
    wait: bool = False,
) -> State[RunSummary]:
    """Re-run the jobs in `output` whose latest status is in `statuses` (and that match `where`, SQL)."""
    chosen = list(statuses or DEFAULT_STATUSES)
    text, jobs = select_backfill(output, chosen, where)
    flags = spec_overrides(None, api_base, rate_limit, max_concurrent, polls_count)
    api = saved_api_config(text, {**environment_overrides(), **flags})
    spec_hash = provenance(open_sink(output)).get("promptgrid.spec_hash", "")
    models = await resolve_backfill_models(api, {job.model for job in jobs}, output, time_scale=time_scale)
    fail_when = FailWhen.of_saved_spec(text)
    plan = RunPlan(api, output, text, spec_hash, lambda: [jobs], fail_when=fail_when, models=models)
    selection = Selection(rerun=frozenset(job.job_id for job in jobs), rerun_successes="success" in chosen)
    return await run_plan(
        plan,
        selection,
        price_per_image=price_per_image,
        time_scale=time_scale,
        run_id=current_run_id(),
        wait=wait,
    )
