"""A spec from Python: loaded from a file or a dict with the command line's checks, and its dry-run plan."""

from __future__ import annotations

import os
from dataclasses import dataclass

from promptgrid.defaults import PRICE_PER_IMAGE_USD, TYPICAL_LATENCY_S
from promptgrid.engine.estimate import describe_plan, estimate_run, planned_images
from promptgrid.runs.source import SpecSource, parse_source
from promptgrid.settings import environment_overrides
from promptgrid.spec.load import check_spec
from promptgrid.spec.plan import plan_jobs
from promptgrid.spec.schema import SweepSpec


def load_spec(spec: SpecSource, *, base_dir: str | os.PathLike[str] | None = None) -> SweepSpec:
    """Load and check a spec, and every row of its grid, as `promptgrid run` does before it sends anything.

    `spec` is the path of a YAML spec, or a dict of the same keys (`name`, `model`, `prompts`, `sweep`,
    `seeds`, `output`, `api`, ...; see docs/specs.md); a spec already loaded is returned as it is. Relative
    paths in a dict start from `base_dir` (the working directory by default), in a file from its folder.

    Raises `promptgrid.errors.InvalidInput` listing every problem found (its `problems`), each message the
    same as the command line prints: the file (or `spec` for a dict), the key or grid row, what is allowed.
    """
    if isinstance(spec, SweepSpec):
        return spec
    return check_spec(parse_source(spec, base_dir=base_dir))


@dataclass(frozen=True)
class Plan:
    """What running a spec would take, as `promptgrid run --dry-run` says it: `str(plan)` is that text."""

    spec_name: str
    jobs: int  # distinct jobs (identical ones collapsed)
    rows: int  # grid rows
    distinct_prompts: int
    variants_per_row: int
    duplicates_collapsed: int
    models: tuple[str, ...]
    creates: int
    polls: int  # expected polls, once the engine has learned the latency
    requests: int  # creates + polls
    counted_requests: int  # the requests that count toward the rate limit
    seconds: float  # estimated wall time at the spec's limits
    seconds_if_polls_free: float
    bound_by: str  # "rate limit" or "concurrency"
    cost_usd: float
    text: str

    def __str__(self) -> str:
        return self.text


def plan(
    spec: SpecSource,
    *,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    latency_s: float = TYPICAL_LATENCY_S,
) -> Plan:
    """Count a spec's jobs and estimate its API requests, time and cost; nothing is sent to the API.

    The same figures and text as `promptgrid run SPEC --dry-run`, settings from the environment included
    (EACHLABS_API_BASE, ...); `spec` is anything `load_spec` takes.
    """
    # The settings a run would use: the environment's (EACHLABS_API_BASE, ...) over the spec's own.
    loaded = check_spec(parse_source(spec, environment=environment_overrides()))
    jobs = plan_jobs(loaded)
    images = planned_images(loaded, jobs.total_jobs)
    estimate = estimate_run(jobs.total_jobs, loaded.api, price_per_image, latency_s, images=images)
    return Plan(
        spec_name=loaded.name,
        jobs=jobs.total_jobs,
        rows=jobs.rows,
        distinct_prompts=jobs.distinct_prompts,
        variants_per_row=jobs.variants_per_row,
        duplicates_collapsed=jobs.duplicates_collapsed,
        models=jobs.models,
        creates=estimate.creates,
        polls=estimate.polls,
        requests=estimate.requests,
        counted_requests=estimate.counted_requests,
        seconds=estimate.seconds,
        seconds_if_polls_free=estimate.seconds_if_polls_free,
        bound_by=estimate.bound_by,
        cost_usd=estimate.cost_usd,
        text=describe_plan(loaded, jobs, estimate, price_per_image, latency_s),
    )
