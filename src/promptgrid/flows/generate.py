"""The generate flow: spec → resolve models → validate → expand → skip what is done → predict → store →
manifest.

Run it with `promptgrid run SPEC`, or as a deployment (deployments/prefect.yaml). The API key is read from
EACHLABS_API_KEY inside the run and is never a parameter, so it cannot land in Prefect's database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run

from promptgrid.api.resolve import Resolution
from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.planning import RunPlan, Selection
from promptgrid.engine.resolution import read_run_spec
from promptgrid.run_summary import RunSummary
from promptgrid.settings import environment_overrides
from promptgrid.spec.overrides import spec_overrides
from promptgrid.spec.schema import SweepSpec
from promptgrid.tasks.pipeline import as_is, run_plan
from promptgrid.tasks.resolution import resolve_spec_models


def current_run_id() -> str | None:
    """The Prefect flow run's id, shortened, so manifest rows and parts name the run that wrote them."""
    run_id = flow_run.get_id()
    return str(run_id).replace("-", "")[:12] if run_id else None


@flow(name="generate")
async def generate(
    spec_path: str,
    output: str | None = None,
    api_base: str | None = None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    polls_count: bool | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    time_scale: float = 1.0,
    report: bool = True,
    spec_text: str | None = None,
    resolved_models: dict[str, Any] | None = None,
    wait: bool = False,
    max_jobs: int | None = None,
    max_cost: float | None = None,
    stall_timeout: float | None = None,
    checked: Any = None,
) -> State[RunSummary]:
    """Generate every image of a spec that its output does not have yet.

    Each setting is the parameter when given, else its environment variable, else the spec's, else the
    default. The run ends Failed (the summary still its result) when more jobs fail than the spec's
    `fail_when` allows.

    `shard_index`/`shard_count` split one spec across flow runs that share the output; `time_scale` is the
    speed of the API's clock (1 for the real API; a sandbox started with --time-scale runs faster).
    `report=False` skips the HTML report at the end (`promptgrid report` builds it later). `spec_text` is
    the spec itself when it was never a file (built in Python): `spec_path` then only names it, and relative
    paths in it start from `spec_path`'s folder. The spec's models are resolved first (which slug the API
    knows, their schemas), unless `resolved_models` brings a resolution made just before (the run
    service's). Another run holding the output (or an overlapping shard) stops this one at once, unless
    `wait`. `checked` is the run service's spec, already loaded and checked against `resolved_models`
    (in-process only: a deployment gives `spec_path`), so the spec is read once per run. `max_jobs`,
    `max_cost` (USD) and `stall_timeout` (seconds) override the spec's `max_jobs`, `api.max_cost` and
    `api.stall_timeout`.
    """
    if isinstance(checked, SweepSpec) and resolved_models is not None:
        spec, models = checked, Resolution.from_json(resolved_models)
    else:
        caps: dict[str, Any] = {"max_jobs": max_jobs, "max_cost": max_cost, "stall_timeout": stall_timeout}
        overrides = spec_overrides(output, api_base, rate_limit, max_concurrent, polls_count, **caps)
        parsed = read_run_spec(Path(spec_path), overrides, environment_overrides(), spec_text)
        spec, models = await resolve_spec_models(as_is(parsed), resolved_models, time_scale)
    return await run_plan(
        RunPlan.from_spec(spec, models),
        Selection(shard_index, shard_count),
        price_per_image=price_per_image,
        time_scale=time_scale,
        run_id=current_run_id(),
        report=report,
        wait=wait,
    )
