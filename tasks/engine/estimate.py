"""The dry run: what a spec would cost in jobs, API requests, time and money, said before anything is sent.

The time model is the quota's: images per second are capped both by the request rate (each image costs one
create plus its polls, when polls count) and by predictions in flight (max_concurrent per typical latency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from promptgrid.defaults import PRICE_PER_IMAGE_USD, TYPICAL_LATENCY_S
from promptgrid.tasks.api.polling import PollPolicy
from promptgrid.tasks.spec.expand import JobPlan, plan_jobs
from promptgrid.tasks.spec.problems import display_path
from promptgrid.tasks.spec.schema import ApiConfig, SweepSpec
from promptgrid.types import Job

SAMPLE_PROMPT_CHARS = 60
RENDERED_PROMPT_CHARS = 200


@dataclass(frozen=True)
class RunEstimate:
    """The API requests, time and cost of running `jobs` images at an API's limits."""

    jobs: int
    creates: int
    polls: int
    counted_requests: int  # the requests that count toward the rate limit
    seconds: float
    seconds_if_polls_free: float
    bound_by: str  # "rate limit" or "concurrency"
    cost_usd: float

    @property
    def requests(self) -> int:
        return self.creates + self.polls


def _run_seconds(jobs: int, api: ApiConfig, requests_per_image: float, latency_s: float) -> tuple[float, str]:
    if jobs == 0:
        return 0.0, "nothing"
    by_rate = api.rate_limit.requests / api.rate_limit.window_s / requests_per_image
    by_flight = api.max_concurrent / latency_s
    per_second = min(by_rate, by_flight)
    # The last images still take one latency to come back after the last create.
    return jobs / per_second + latency_s, "rate limit" if by_rate < by_flight else "concurrency"


def expected_polls(polls_count: bool, policy: PollPolicy | None = None) -> float:
    """Polls per image once the engine has learned the latency: its first poll finds a share `first_hit`
    done, each later one about `second_hit` of the rest (the cold start's few scout polls left out)."""
    policy = policy or PollPolicy()
    first_hit = policy.first_hit if polls_count else policy.first_hit_uncounted
    return 1 + (1 - first_hit) / policy.second_hit


def estimate_run(
    jobs: int,
    api: ApiConfig,
    price_per_image: float,
    latency_s: float = TYPICAL_LATENCY_S,
    polls_per_image: float | None = None,
) -> RunEstimate:
    """Requests, time and cost of `jobs` images at `api`'s limits and a typical latency."""
    if polls_per_image is None:
        polls_per_image = expected_polls(api.polls_count)
    polls = math.ceil(jobs * polls_per_image)
    counted_per_image = 1 + polls_per_image if api.polls_count else 1.0
    seconds, bound_by = _run_seconds(jobs, api, counted_per_image, latency_s)
    free_seconds, _ = _run_seconds(jobs, api, 1.0, latency_s)
    return RunEstimate(
        jobs=jobs,
        creates=jobs,
        polls=polls,
        counted_requests=jobs + (polls if api.polls_count else 0),
        seconds=seconds,
        seconds_if_polls_free=free_seconds,
        bound_by=bound_by,
        cost_usd=jobs * price_per_image,
    )


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _prompts_line(spec: SweepSpec, plan: JobPlan) -> str:
    if spec.prompts is None:
        return f"template: {plan.distinct_prompts} distinct prompts rendered"
    rendered = " (rendered from templates)" if plan.rendered else ""
    shown = display_path(spec.prompts)
    return f"grid: {shown}: {plan.rows} rows, {plan.distinct_prompts} distinct prompts{rendered}"


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
    polls_note = "polls count toward the limit" if api.polls_count else "polls do not count toward the limit"
    lines = [
        f"spec {spec.name} ({display_path(spec.source_path)}), spec hash {spec.spec_hash[:12]}",
        f"models: {', '.join(plan.models)} (version {spec.version})",
        "schemas: " + "; ".join(f"{model.slug} from {model.source}" for model in spec.model_schemas()),
        _prompts_line(spec, plan),
        f"jobs: {plan.total_jobs} ({plan.variants_per_row} per {'prompt' if plan.rendered else 'row'}; "
        f"{plan.duplicates_collapsed} identical jobs collapsed)",
        f"API requests: {estimate.creates} creates + ~{estimate.polls} polls = ~{estimate.requests}; "
        f"~{estimate.counted_requests} count toward the limit ({polls_note})",
        f"limits: {api.rate_limit.requests} requests per {api.rate_limit.window_s:g} s, "
        f"{api.max_concurrent} in flight, at {api.base_url}",
        f"time: ~{format_duration(estimate.seconds)} at these limits and {latency_s:g} s typical latency "
        f"(bound by {estimate.bound_by}); ~{format_duration(estimate.seconds_if_polls_free)} "
        "if polls did not count",
        f"cost: ${estimate.cost_usd:,.2f} at ${price_per_image:g} per image",
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


def describe_dry_run(
    spec: SweepSpec,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    latency_s: float = TYPICAL_LATENCY_S,
    samples: int = 3,
) -> str:
    """Expand the spec without keeping its jobs, and say what running it would take."""
    plan = plan_jobs(spec, samples=samples)
    estimate = estimate_run(plan.total_jobs, spec.api, price_per_image, latency_s)
    return describe_plan(spec, plan, estimate, price_per_image, latency_s)
