"""Model resolution wired for a run: read the spec, ask the API about its models (`promptgrid.api.resolve`),
then check the spec against the schemas it answered; without Prefect, so a run can be prepared before it.

The lookups are requests of the run's key: they go through its budget (`open_key_budget`), so a cap the
spec states holds for them, a 429 they meet pauses as any other, and with `api.quota_url` they share the
window of every process of the key.

Where the model endpoint cannot say, a model's schema comes from, in order: the output (what an earlier run
of it resolved; backfills), the user cache (what this API answered before), the built-in table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from promptgrid.api.resolve import Fallback, Resolution, resolve_for_run
from promptgrid.models.records import UserCache, builtin_record
from promptgrid.output.saved_spec import read_saved_model
from promptgrid.output.sinks import open_sink
from promptgrid.quota.factory import open_key_budget
from promptgrid.settings import read_api_settings
from promptgrid.spec.load import check_spec, parse_spec_text, read_spec
from promptgrid.spec.schema import ApiConfig, LoadedSpec, SweepSpec, next_stage


def fallbacks(base_url: str, output: str | None = None) -> list[Fallback]:
    chain: list[Fallback] = []
    if output is not None:
        sink = open_sink(output)
        chain.append(lambda slug: read_saved_model(sink, slug))
    chain += [UserCache(base_url).load, builtin_record]
    return chain


def read_run_spec(
    spec_path: Path,
    overrides: Mapping[str, Any],
    environment: Mapping[str, Any],
    spec_text: str | None = None,
) -> LoadedSpec:
    """The spec's shape checked, `overrides` (flags) over `environment` over its own keys (`read_spec`).

    `spec_text` is the spec when it was never a file: `spec_path` then only names it (relative paths start
    from its folder)."""
    if spec_text is None:
        return read_spec(spec_path, overrides, environment)
    parsed = parse_spec_text(spec_text, spec_path.parent, str(spec_path), overrides, environment)
    return next_stage(LoadedSpec, parsed, source_path=spec_path)


async def resolve_and_check(
    spec: LoadedSpec, resolved: Mapping[str, Any] | None = None, *, time_scale: float = 1.0
) -> tuple[SweepSpec, Resolution]:
    """The spec checked against its models as the API describes them, and the resolution (which slug to send).

    `resolved` is an earlier resolution of the same spec (`Resolution.to_json()`), used as it is.
    """
    if resolved is not None:
        resolution = Resolution.from_json(resolved)
    else:
        resolution = await resolve_run_models(spec, time_scale=time_scale)
    from promptgrid.spec.plan import check_run_size  # the grid's expansion: pyarrow, only once it is read

    checked = check_spec(spec, resolution.catalog())
    check_run_size(checked)  # a run larger than max_jobs is refused before anything is sent
    return checked, resolution


async def resolve_run_models(spec: LoadedSpec, *, time_scale: float = 1.0) -> Resolution:
    """The spec's models as the API describes them (which slug to send, which inputs it takes), asked
    through the key's budget."""
    chain = fallbacks(spec.api.base_url)
    return await resolve_metered(spec.api, spec.requested_models, chain, time_scale)


async def resolve_jobs_models(
    api: ApiConfig, models: Iterable[str], output: str, *, time_scale: float = 1.0
) -> Resolution:
    """Resolve the models of jobs taken from an output's manifest (a backfill), the output's records first."""
    chain = fallbacks(api.base_url, output)
    return await resolve_metered(api, sorted(set(models)), chain, time_scale)


async def resolve_metered(
    api: ApiConfig, written: Sequence[str], chain: Sequence[Fallback], time_scale: float
) -> Resolution:
    """Resolve `written` through the budget of the key's quota (`api` as the run uses it)."""
    budget = open_key_budget(api, read_api_settings(api.base_url).api_key)
    try:
        return await resolve_for_run(api.base_url, written, chain, retry_s=1.0 / time_scale, budget=budget)
    finally:
        await budget.aclose()
