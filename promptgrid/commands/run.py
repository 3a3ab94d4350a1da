"""The `promptgrid run` command: check a spec, print its plan, or run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def spec_overrides(
    output: str | None,
    api_base: str | None,
    rate_limit: str | None,
    max_concurrent: int | None,
    polls_count: bool | None,
) -> dict[str, Any]:
    """Command-line flags that override the spec, keyed as the spec names them (`api.base_url`, ...)."""
    flags = {
        "output": output,
        "api.base_url": api_base,
        "api.rate_limit": rate_limit,
        "api.max_concurrent": max_concurrent,
        "api.polls_count": polls_count,
    }
    return {key: value for key, value in flags.items() if value is not None}


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_command(
        spec: Annotated[Path, typer.Argument(help="The sweep spec (YAML).")],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Validate and print the plan; send nothing to the API.")
        ] = False,
        use_sandbox: Annotated[
            bool, typer.Option("--sandbox", help="Start the local sandbox API and run against it.")
        ] = False,
        output: Annotated[str | None, typer.Option(help="Local folder or s3://bucket/prefix.")] = None,
        api_base: Annotated[str | None, typer.Option(help="Base URL of the prediction API.")] = None,
        rate_limit: Annotated[
            str | None, typer.Option(help="Requests per window, e.g. 60/60s or 60/6s.")
        ] = None,
        max_concurrent: Annotated[int | None, typer.Option(help="Predictions in flight at most.")] = None,
        polls_count: Annotated[
            bool | None,
            typer.Option("--polls-count/--no-polls-count", help="Whether polls count toward the rate limit."),
        ] = None,
        price_per_image: Annotated[float, typer.Option(help="USD per image, for the cost estimate.")] = 0.065,
    ) -> None:
        """Generate every image a spec describes (or, with --dry-run, say what that would take)."""
        from tasks.plan import describe_dry_run
        from tasks.spec import load_spec

        overrides = spec_overrides(output, api_base, rate_limit, max_concurrent, polls_count)
        sweep = load_spec(spec, overrides=overrides)
        if dry_run:
            typer.echo(describe_dry_run(sweep, price_per_image=price_per_image))
            return
        from flows.generate import run_from_cli

        raise typer.Exit(run_from_cli(sweep, use_sandbox=use_sandbox, price_per_image=price_per_image))
