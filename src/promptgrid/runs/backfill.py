"""The backfill service: an output's jobs picked by their latest status (and SQL), then run again through
the backfill flow with the same preparation as a spec's run (key, output, API, lease)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from promptgrid.run_summary import RunSummary
from promptgrid.runs.api import api_for_run, check_api, require_key_unless_sandbox, run_settings
from promptgrid.runs.options import RunOptions
from promptgrid.runs.service import check_output, output_reserved
from promptgrid.settings import environment_overrides, read_api_settings
from promptgrid.spec.schema import ApiConfig
from promptgrid.types import Job

Say = Callable[[str], None]


@dataclass(frozen=True)
class Backfill:
    """What a backfill would run again, and the API settings it would use (the saved spec's, overridden)."""

    output: str
    statuses: tuple[str, ...]
    where: str | None
    jobs: tuple[Job, ...]
    api: ApiConfig


def select_backfill(
    output: str, statuses: list[str], where: str | None, options: RunOptions, say: Say
) -> Backfill:
    """The jobs to run again; InvalidInput when the output or the filters are bad (before anything runs)."""
    from promptgrid.engine.selection import jobs_to_backfill, saved_api_config, unknown_error_codes

    text, jobs = jobs_to_backfill(output, statuses, where)
    for unknown in unknown_error_codes(where):
        say(f"note: {unknown!r} is not an error code promptgrid knows (docs/errors.md)")
    say(f"{len(jobs)} jobs to run again")
    api = saved_api_config(text, {**environment_overrides(), **options.api.overrides()})
    return Backfill(output, tuple(statuses), where, tuple(jobs), api)


def describe(backfill: Backfill, price_per_image: float) -> str:
    """The dry run's text: which jobs would run again, and the requests, time and cost."""
    from promptgrid.engine.selection import describe_backfill

    return describe_backfill(backfill.output, list(backfill.jobs), backfill.api, price_per_image)


def run_backfill(backfill: Backfill, options: RunOptions, say: Say, *, sandbox_hint: str) -> RunSummary:
    """Run the chosen jobs again under the output's lease; the summary of what was done."""
    require_key_unless_sandbox(options.api, read_api_settings(backfill.api.base_url), sandbox_hint)
    check_output(backfill.output)
    check_api(options.api, backfill.api.base_url)
    from promptgrid.flows.backfill import backfill as backfill_flow
    from promptgrid.runs.execute import run_flow

    with api_for_run(options.api, say) as sandbox_url:
        api, _ = run_settings(options.api, backfill.api, sandbox_url)
        with output_reserved(backfill.output, options.wait, say):
            return run_flow(
                lambda: backfill_flow(
                    output=backfill.output,
                    statuses=list(backfill.statuses),
                    where=backfill.where,
                    api_base=api.api_base,
                    rate_limit=api.rate_limit,
                    max_concurrent=api.max_concurrent,
                    polls_count=api.polls_count,
                    price_per_image=options.price_per_image,
                    time_scale=api.scale,
                    wait=options.wait,
                    return_state=True,
                )
            )
