"""The model-resolution tasks: which slug the API knows for each model and its schema, before the first
create, and the spec checked against those schemas (`promptgrid.engine.resolution`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from promptgrid.api.resolve import Resolution
from promptgrid.engine.resolution import resolve_and_check, resolve_jobs_models
from promptgrid.spec.schema import ApiConfig, LoadedSpec, SweepSpec


@task(name="resolve-models", cache_policy=NO_CACHE)
async def resolve_spec_models(
    spec: LoadedSpec, resolved: Mapping[str, Any] | None = None, time_scale: float = 1.0
) -> tuple[SweepSpec, Resolution]:
    """The spec checked against its models as the API describes them, and the resolution; `resolved` (an
    earlier resolution, `Resolution.to_json()`) is used as it is and not logged again."""
    checked, resolution = await resolve_and_check(spec, resolved, time_scale=time_scale)
    if resolved is None:
        for note in resolution.notes:
            get_run_logger().info("model %s", note)
    return checked, resolution


@task(name="resolve-models", cache_policy=NO_CACHE)
async def resolve_backfill_models(
    api: ApiConfig, models: Iterable[str], output: str, time_scale: float = 1.0
) -> Resolution:
    """The models of jobs taken from an output's manifest, the output's own records first."""
    return await resolve_jobs_models(api, models, output, time_scale=time_scale)
