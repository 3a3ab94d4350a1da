"""The dry run: what a spec would cost in jobs, API requests, time and money, said before anything is sent.

The time model is the quota's: images per second are capped both by the request rate (each image costs one
create plus its polls, when polls count) and by predictions in flight (max_concurrent per typical latency).
Under `rate_limit: auto` no rate is known before the run, so the time is the in-flight bound's, and the
model page's 60 requests a minute is given beside it, in case the API keeps to that.

Money is per image, not per job: a model with `num_images` (an `output_type: array` model) bills every image
of a prediction, so a job asking for 3 costs three prices; requests and time stay per job.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from promptgrid.api.polling import PollPolicy
from promptgrid.defaults import (
    PRICE_PER_IMAGE_USD,
    RATE_LIMIT_REQUESTS,
    RATE_LIMIT_WINDOW_S,
    TYPICAL_LATENCY_S,
)
from promptgrid.spec.expand import build_variants
from promptgrid.spec.plan import EXACT_COUNT_LIMIT, JobPlan, plan_jobs
from promptgrid.spec.problems import display_path
from promptgrid.spec.schema import ApiConfig, RateLimit, SweepSpec
from promptgrid.types import Job

SAMPLE_PROMPT_CHARS = 60
RENDERED_PROMPT_CHARS = 200


@dataclass(frozen=True)
class RunEstimate:
    """The API requests, time and cost of running `jobs` predictions (`images` images) at an API's limits."""

    jobs: int
    creates: int
    polls: int
    counted_requests: int  # the requests that count toward the rate limit
    seconds: float
    seconds_if_polls_free: float
    bound_by: str  # "rate limit" or "concurrency"
    cost_usd: float
    seconds_at_page_limit: float | None = None  # under auto: the time if the API keeps the page's limit
    images: int = 0  # what is billed: jobs x each job's `num_images`

    @property
    def requests(self) -> int:
        return self.creates + self.polls


def _run_seconds(jobs: int, api: ApiConfig, requests_per_image: float, latency_s: float) -> tuple[float, str]:
    if jobs == 0:
        return 0.0, "nothing"
    rate = api.rate_limit
    by_rate = math.inf if rate.requests is None else rate.requests / rate.window_s / requests_per_image
    by_flight = api.max_concurrent / latency_s
    per_second = min(by_rate, by_flight)
    # The last images still take one latency to come back after the last create.
    return jobs / per_second + latency_s, "rate limit" if by_rate < by_flight else "concurrency"


def expected_polls(polls_free: bool, policy: PollPolicy | None = None) -> float:
    """Polls per image once the engine has learned the latency (the cold start's few scout polls left out).

    Counted polls: the first finds a share `first_hit` done, each later one about `second_hit` of the rest.
    Free polls: the schedule drawn from the learned latencies spends `fine_polls` per prediction, whatever
    their spread (more while the API is short of room, which a plan cannot foresee).
    """
    policy = policy or PollPolicy()
    if not polls_free:
        return 1 + (1 - policy.first_hit) / policy.second_hit
    return policy.fine_polls


def images_per_job(inputs: Mapping[str, Any]) -> int:
    """How many images a job's prediction makes and bills: its `num_images`, else one."""
    value = inputs.get("num_images")
    try:
        return max(int(value), 1) if value is not None and not isinstance(value, bool) else 1
    except (TypeError, ValueError):
        return 1


def count_images(jobs: Iterable[Any]) -> int:
    """The images a list of jobs makes (each a `Job`)."""
    return sum(images_per_job(job.inputs) for job in jobs)


def planned_images(spec: SweepSpec, jobs: int) -> int:
    """The images a spec's `jobs` make: jobs x the variants' mean `num_images` (exact when every variant
    asks the same number, as a spec's `num_images` input or none at all does)."""
    counts = [images_per_job(variant.inputs) for variant in build_variants(spec)] or [1]
    return round(jobs * sum(counts) / len(counts))


def estimate_run(
    jobs: int,
    api: ApiConfig,
    price_per_image: float,
    latency_s: float = TYPICAL_LATENCY_S,
    polls_per_image: float | None = None,
    images: int | None = None,
) -> RunEstimate:
    """Requests, time and cost of `jobs` predictions at `api`'s limits and a typical latency; `images`
    (default: one per job) is what is billed."""
    counted = api.polls_count and not api.rate_limit.auto
    if polls_per_image is None:
        polls_per_image = expected_polls(not counted)
    polls = math.ceil(jobs * polls_per_image)
    counted_per_image = 1 + polls_per_image if counted else 1.0
    seconds, bound_by = _run_seconds(jobs, api, counted_per_image, latency_s)
    free_seconds, _ = _run_seconds(jobs, api, 1.0, latency_s)
    at_page = None
    if api.rate_limit.auto:
        page = api.model_copy(
            update={"rate_limit": RateLimit(requests=RATE_LIMIT_REQUESTS, window_s=RATE_LIMIT_WINDOW_S)}
        )
        at_page, _ = _run_seconds(jobs, page, 1 + expected_polls(not page.polls_count), latency_s)
    return RunEstimate(
        jobs=jobs,
        creates=jobs,
        polls=polls,
        counted_requests=jobs + (polls if counted else 0),
        seconds=seconds,
        seconds_if_polls_free=free_seconds,
        bound_by=bound_by,
        cost_usd=(jobs if images is None else images) * price_per_image,
        seconds_at_page_limit=at_page,
        images=jobs if images is None else images,
    )


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _images_per_job(estimate: RunEstimate) -> str:
    if not estimate.jobs:
        return "1"
    return f"{estimate.images / estimate.jobs:g}"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _prompts_line(spec: SweepSpec, plan: JobPlan) -> str:
    kind = "distinct prompts" if plan.exact else "prompts"
    if spec.prompts is None:
        return f"template: {plan.distinct_prompts:,} {kind} rendered"
    rendered = " (rendered from templates)" if plan.rendered else ""
    shown = display_path(spec.prompts)
    return f"grid: {shown}: {plan.rows:,} rows, {plan.distinct_prompts:,} {kind}{rendered}"


def _jobs_lines(spec: SweepSpec, plan: JobPlan) -> list[str]:
    """The job count, how it was counted, and whether a run of it is within max_jobs."""
    per = "prompt" if plan.rendered else "row"
    if plan.exact:
        counted = f"{plan.duplicates_collapsed:,} identical jobs collapsed"
    else:
        counted = f"counted by multiplication: above {EXACT_COUNT_LIMIT:,}, identical jobs are not collapsed"
    lines = [f"jobs: {plan.total_jobs:,} ({plan.variants_per_row:,} per {per}; {counted})"]
    if plan.total_jobs > spec.max_jobs:
        lines.append(
            f"max_jobs: {spec.max_jobs:,}: a run of this spec is refused before sending "
            "(raise it with max_jobs: N in the spec or --max-jobs N)"
        )
    return lines


def _sample_line(number: int, job: Job) -> str:
    inputs = dict(job.inputs)
    prompt = _shorten(str(inputs.pop("prompt", "")), SAMPLE_PROMPT_CHARS)
    shown = " ".join(f"{key}={value}" for key, value in inputs.items())
    return f"  {number}. {job.job_id}  {job.model}  prompt={prompt!r}  {shown}"


def describe_plan(
    spec: SweepSpec, plan: JobPlan, estimate: RunEstimate, price_per_image: float, latency_s: float
) -> str:
    """The dry run's text: jobs, prompts, requests, time, cost and a few sample jobs."""
    api = spec.api
    if api.rate_limit.auto:
        polls_note = "no request cap is known before the run"
        limits = f"limits: auto (no request-rate cap until the API shows one), {api.max_concurrent} in flight"
        time_note = (
            f"~{format_duration(estimate.seconds_at_page_limit or 0)} if the API keeps the model page's "
            f"{RATE_LIMIT_REQUESTS} requests per {RATE_LIMIT_WINDOW_S:g} s"
        )
    else:
        polls_note = (
            "polls count toward the limit" if api.polls_count else "polls do not count toward the limit"
        )
        limits = (
            f"limits: {api.rate_limit.requests} requests per {api.rate_limit.window_s:g} s, "
            f"{api.max_concurrent} in flight"
        )
        time_note = f"~{format_duration(estimate.seconds_if_polls_free)} if polls did not count"
    lines = [
        f"spec {spec.name} ({display_path(spec.source_path)}), spec hash {spec.spec_hash[:12]}",
        f"models: {', '.join(plan.models)} (version {spec.version})",
        "schemas: " + "; ".join(f"{model.slug} from {model.source}" for model in spec.model_schemas()),
        _prompts_line(spec, plan),
        *_jobs_lines(spec, plan),
        f"API requests: {estimate.creates} creates + ~{estimate.polls} polls = ~{estimate.requests}; "
        f"~{estimate.counted_requests} count toward the limit ({polls_note})",
        f"{limits}, at {api.base_url}",
        f"time: ~{format_duration(estimate.seconds)} at these limits and {latency_s:g} s typical latency "
        f"(bound by {estimate.bound_by}); {time_note}",
        f"images: {estimate.images} ({_images_per_job(estimate)} per job)",
        f"cost: ${estimate.cost_usd:,.2f} at ${price_per_image:g} per image" + describe_caps(api),
        f"output: {spec.output}",
    ]
    if plan.rendered and plan.prompt_samples:
        lines.append("rendered prompts, the first few:")
        lines.extend(f"  {_shorten(prompt, RENDERED_PROMPT_CHARS)!r}" for prompt in plan.prompt_samples)
    if plan.samples:
        lines.append("sample jobs:")
        lines.extend(_sample_line(number, job) for number, job in enumerate(plan.samples, 1))
    lines.append("dry run: nothing was sent to the API.")
    return "\n".join(lines)


def describe_caps(api: ApiConfig) -> str:
    """The spend caps beside the cost estimate: '; cap: max_cost $0.65'."""
    caps = [
        f"{name} ${value:g}"
        for name, value in (("max_cost", api.max_cost), ("max_cost_per_day", api.max_cost_per_day))
        if value is not None
    ]
    return f"; cap: {', '.join(caps)} (no create is sent past it)" if caps else ""


def describe_dry_run(
    spec: SweepSpec,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    latency_s: float = TYPICAL_LATENCY_S,
    samples: int = 3,
) -> str:
    """Expand the spec without keeping its jobs, and say what running it would take."""
    plan = plan_jobs(spec, samples=samples)
    images = planned_images(spec, plan.total_jobs)
    estimate = estimate_run(plan.total_jobs, spec.api, price_per_image, latency_s, images=images)
    return describe_plan(spec, plan, estimate, price_per_image, latency_s)
