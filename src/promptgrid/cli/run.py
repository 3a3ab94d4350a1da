"""The `promptgrid run` and `promptgrid backfill` commands: flags in, the run service's summary out as text
and an exit code (`promptgrid.runs` does the work)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from promptgrid.cli.options import (
    DEFAULT_PRICE,
    ApiBase,
    DryRun,
    MaxConcurrent,
    PollsCount,
    PricePerImage,
    RateLimit,
    Sandbox,
    TimeScale,
    Wait,
    api_options,
)
from promptgrid.errors import ApiUnreachable, RunInterrupted
from promptgrid.interrupts import EXIT_CODE as INTERRUPTED
from promptgrid.run_summary import RunSummary
from promptgrid.runs.options import RunOptions

SANDBOX_HINT = "--sandbox"
MAX_COST_HELP = "Spend at most this many USD in this run (api.max_cost); no create is sent past it."
STALL_HELP = "Halt when no create is accepted and no prediction finishes for this many seconds (600)."
MAX_JOBS_HELP = "Refuse a run of more jobs than this (max_jobs; 1,000,000 by default)."


def note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def finish(start: Callable[[], RunSummary]) -> None:
    """Run, print the summary (and why the run failed), and exit with the summary's code: 1 for an API that
    cannot be reached, 130 for Ctrl-C; InvalidInput goes on up (exit 2)."""
    try:
        summary = start()
    except ApiUnreachable as exc:
        note(f"error: the run failed: {exc.explain()}")
        raise typer.Exit(1) from None
    except RunInterrupted as exc:
        note(f"interrupted: {exc}")
        raise typer.Exit(INTERRUPTED) from None
    typer.echo(summary.describe())
    if summary.problem is not None:
        note(f"error: {summary.verdict}")
    raise typer.Exit(summary.exit_code)


def dry_run(spec: Path, options: RunOptions) -> None:
    """Offline: the spec checked against the built-in table and the user cache; nothing asked of the API."""
    from promptgrid.engine.estimate import describe_dry_run
    from promptgrid.settings import environment_overrides, read_api_settings
    from promptgrid.spec.load import load_spec
    from promptgrid.spec.overrides import describe_settings

    sweep = load_spec(spec, overrides=options.overrides(), environment=environment_overrides())
    note(describe_settings(sweep, key_set=read_api_settings(sweep.api.base_url).api_key is not None))
    typer.echo(describe_dry_run(sweep, price_per_image=options.price_per_image))


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_command(
        spec: Annotated[Path, typer.Argument(help="The sweep spec (YAML).")],
        dry_run_only: Annotated[
            bool,
            typer.Option(
                "--dry-run", metavar="", help="Validate and print the plan; send nothing to the API."
            ),
        ] = False,
        use_sandbox: Sandbox = False,
        time_scale: TimeScale = None,
        output: Annotated[str | None, typer.Option(help="Local folder or s3://bucket/prefix.")] = None,
        api_base: ApiBase = None,
        rate_limit: RateLimit = None,
        max_concurrent: MaxConcurrent = None,
        polls_count: PollsCount = None,
        price_per_image: PricePerImage = DEFAULT_PRICE,
        report: Annotated[
            bool,
            typer.Option("--report/--no-report", metavar="", help="Write the HTML report when the run ends."),
        ] = True,
        wait: Wait = False,
        max_jobs: Annotated[int | None, typer.Option(help=MAX_JOBS_HELP)] = None,
        max_cost: Annotated[float | None, typer.Option(help=MAX_COST_HELP)] = None,
        stall_timeout: Annotated[float | None, typer.Option(help=STALL_HELP)] = None,
    ) -> None:
        """Generate every image a spec describes (or, with --dry-run, say what that would take)."""
        api = api_options(api_base, rate_limit, max_concurrent, polls_count, use_sandbox, time_scale)
        options = RunOptions(api, output, price_per_image, report, wait, max_jobs, max_cost, stall_timeout)
        if dry_run_only:
            dry_run(spec, options)
            return
        from promptgrid.runs.service import run_spec

        finish(lambda: run_spec(spec, options, note, sandbox_hint=SANDBOX_HINT))

    @app.command("backfill")
    def backfill_command(
        output: Annotated[
            str, typer.Argument(help="The output of an earlier run: a folder or s3://bucket/prefix.")
        ],
        status: Annotated[
            str, typer.Option(help="Comma-separated latest statuses to re-run.")
        ] = "failed,timed_out,cancelled",
        where: Annotated[
            str | None, typer.Option(help='An SQL condition on manifest columns, e.g. "cfg > 4".')
        ] = None,
        use_sandbox: Sandbox = False,
        time_scale: TimeScale = None,
        api_base: ApiBase = None,
        rate_limit: RateLimit = None,
        max_concurrent: MaxConcurrent = None,
        polls_count: PollsCount = None,
        price_per_image: PricePerImage = DEFAULT_PRICE,
        dry_run_only: DryRun = False,
        wait: Wait = False,
    ) -> None:
        """Re-run the jobs of OUTPUT whose latest outcome matches (every one not a success by default)."""
        from promptgrid.runs.backfill import describe, run_backfill, select_backfill

        api = api_options(api_base, rate_limit, max_concurrent, polls_count, use_sandbox, time_scale)
        options = RunOptions(api, price_per_image=price_per_image, wait=wait)
        statuses = [part.strip() for part in status.split(",") if part.strip()]
        chosen = select_backfill(output, statuses, where, options, note)  # bad input stops here
        if dry_run_only:
            typer.echo(describe(chosen, price_per_image))
            raise typer.Exit(0)
        if not chosen.jobs:
            raise typer.Exit(0)
        finish(lambda: run_backfill(chosen, options, note, sandbox_hint=SANDBOX_HINT))
