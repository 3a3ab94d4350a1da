"""What a spec expands to, counted before anything runs: the dry run's figures and the run's size bound.

Jobs are counted by multiplication (per grid row, its prompts times the variants every row expands into),
which takes one pass over the grid however many jobs the rows make: a template of 12 inline `{a|...|j}`
groups is 10^12 jobs counted in a moment. Up to EXACT_COUNT_LIMIT jobs the dry run also hashes each one, to
say how many identical jobs collapse; above it the count is the multiplied one (identical jobs not
collapsed, so at most that many run). A run of more jobs than the spec's `max_jobs` is refused before
anything is sent (`check_run_size`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from promptgrid.errors import InvalidInput
from promptgrid.spec.expand import PROMPT_SAMPLES, Expander, grid_batches, to_job
from promptgrid.spec.grid import GridBatch
from promptgrid.spec.schema import SweepSpec
from promptgrid.types import Job

# Jobs hashed one by one to collapse identical ones (16 bytes each, ~100 MB at the limit); above, multiplied.
EXACT_COUNT_LIMIT = 2_000_000
# Rendered prompts looked at for the dry run's samples when the count is multiplied: enough to find a few
# distinct ones, few enough to take no time.
_SAMPLE_SCAN = 1000


@dataclass
class JobPlan:
    """What a spec expands to, counted without keeping the jobs: the dry run's figures."""

    total_jobs: int = 0
    distinct_prompts: int = 0
    duplicates_collapsed: int = 0
    rows: int = 0
    variants_per_row: int = 0
    models: tuple[str, ...] = ()
    samples: list[Job] = field(default_factory=list)
    rendered: bool = False  # prompts came from templates
    prompt_samples: list[str] = field(default_factory=list)  # the first distinct rendered prompts
    exact: bool = True  # identical jobs collapsed; False: counted by multiplication, at most this many


def plan_jobs(spec: SweepSpec, samples: int = 3, exact_limit: int = EXACT_COUNT_LIMIT) -> JobPlan:
    """Count the jobs and prompts of a spec (distinct ones, when at most `exact_limit`), and keep the first
    few jobs as samples.

    Samples carry no grid columns: reading those for every row would only slow the count down.
    """
    expander = Expander(spec)
    plan = JobPlan(variants_per_row=len(expander.variants), models=spec.models)
    plan.rendered = expander.axes.active
    multiplied = prompts = 0
    for batch in grid_batches(spec, carried=False):
        if len(plan.samples) < samples:  # the first jobs in grid order, found apart from the count
            first = Expander(spec).expand(batch)
            plan.samples += [to_job(spec.version, batch, *job) for job in itertools.islice(first, samples)]
            plan.samples = plan.samples[:samples]
        plan.rows += len(batch)
        jobs, batch_prompts = expander.multiplied(batch)
        multiplied, prompts = multiplied + jobs, prompts + batch_prompts
        plan.exact = plan.exact and multiplied <= exact_limit
        if plan.exact:
            expander.count(batch)
            continue
        expander.seen.clear()  # the digests are of no use once the count is multiplied
        if plan.rendered and len(plan.prompt_samples) < PROMPT_SAMPLES:
            _sample_prompts(expander, batch, plan.prompt_samples)
    if plan.exact:
        plan.total_jobs = len(expander.seen)
        plan.distinct_prompts = len(expander.prompts)
        plan.duplicates_collapsed = multiplied - plan.total_jobs
        plan.prompt_samples = expander.prompt_samples
    else:
        plan.total_jobs, plan.distinct_prompts = multiplied, prompts
    return plan


def _sample_prompts(expander: Expander, batch: GridBatch, found: list[str]) -> None:
    """Add the batch's first distinct rendered prompts to `found`, up to PROMPT_SAMPLES."""
    for text in itertools.islice(expander.prompt_texts(batch), _SAMPLE_SCAN):
        if len(found) >= PROMPT_SAMPLES:
            return
        if text not in found:
            found.append(text)


def count_jobs(spec: SweepSpec) -> int:
    """The spec's jobs by multiplication (identical jobs not collapsed): at most this many would run."""
    expander = Expander(spec)
    return sum(expander.multiplied(batch)[0] for batch in grid_batches(spec, carried=False))


def check_run_size(spec: SweepSpec) -> int:
    """The spec's job count; InvalidInput (nothing sent) when it is above the spec's `max_jobs`."""
    jobs = count_jobs(spec)
    if jobs > spec.max_jobs:
        origin = spec.setting_origins.get("max_jobs", "default")
        shown = spec.where("max_jobs") if origin == "spec" else f"{spec.source_name}: max_jobs ({origin})"
        raise InvalidInput(
            [
                f"{shown}: the spec makes {jobs:,} jobs, more than max_jobs {spec.max_jobs:,}; nothing was "
                "sent. Raise it (max_jobs: N in the spec, --max-jobs N, or PROMPTGRID_MAX_JOBS) if you mean "
                "to run them all, or make the grid smaller (`promptgrid run SPEC --dry-run` counts the jobs)"
            ]
        )
    return jobs
