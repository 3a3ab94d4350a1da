"""The `promptgrid run` and `promptgrid backfill` commands: check a spec, print its plan, or run it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from promptgrid import interrupts
from promptgrid.api.reach import check_reachable
from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.errors import ApiUnreachable, InvalidInput, PromptgridError, RunInterrupted
from promptgrid.settings import API_KEY_ENV, environment_overrides, read_api_settings
from promptgrid.spec.overrides import describe_settings, spec_overrides

if TYPE_CHECKING:
    from promptgrid.spec.schema import SweepSpec

SANDBOX_HELP = "Start the local sandbox API and run against it (sandbox renders, not real images)."
PRICE_HELP = "USD per image, for the cost estimate."
TIME_SCALE_HELP = "With --sandbox: how many times faster the sandbox's clock runs (latency, rate window)."
MAX_COST_HELP = "Spend at most this many USD in this run (api.max_cost); no create is sent past it."
STALL_HELP = "Halt when no create is accepted and no prediction finishes for this many seconds (600)."
WAIT_HELP = "When another run holds the output, wait until it is done instead of stopping at once."


@contextlib.contextmanager
def api_for_run(use_sandbox: bool, time_scale: float) -> Iterator[str | None]:
    """Yield the API base URL to use: a freshly started sandbox's, or None for the configured API.

    Without --sandbox the key must be in the environment before anything runs. The sandbox gets a key made
    up for this run, so a real key in the environment is never sent to it.
    """
    if not use_sandbox:
        if read_api_settings().api_key is None:
            raise InvalidInput([f"{API_KEY_ENV} is not set: export your Eachlabs API key, or pass --sandbox"])
        yield None
        return
    from promptgrid.sandbox.server import SandboxConfig, running_sandbox

    key = f"sandbox-{secrets.token_hex(12)}"
    saved = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = key
    try:
        with running_sandbox(SandboxConfig(time_scale=time_scale, api_key=key)) as sandbox:
            print(
                f"sandbox API at {sandbox.url} (x{time_scale:g} time): images are sandbox renders",
                file=sys.stderr,
            )
            yield sandbox.url
    finally:
        if saved is None:
            os.environ.pop(API_KEY_ENV, None)
        else:
            os.environ[API_KEY_ENV] = saved


def resolve_models_first(
    spec: Path, overrides: dict[str, Any], environment: dict[str, Any], time_scale: float
) -> tuple[SweepSpec, dict[str, Any]]:
    """Resolve the spec's models and check the spec against them before anything runs (exit 2 on bad input);
    say what was found. The resolution goes to the flow, which then does not ask again."""
    from promptgrid.flows.resolution import resolve_spec

    checked, resolution = asyncio.run(
        resolve_spec(spec, overrides, environment=environment, time_scale=time_scale)
    )
    for note in resolution.notes:
        print(f"model {note}", file=sys.stderr)
    return checked, resolution.to_json()


def scaled_rate_limit(requests: int, window_s: float, time_scale: float) -> str:
    return f"{requests}/{window_s / time_scale:g}s"


def reachable(base_url: str) -> bool:
    """Whether the API answers; when not, say so at once (Prefect's import and start-up take seconds)."""
    try:
        check_reachable(base_url)
    except ApiUnreachable as exc:
        print(f"error: the run failed: {exc.explain()}", file=sys.stderr)
        return False
    return True


def check_output(output: str) -> None:
    """Exit 2 with a sentence, before any request, when the output cannot be written (a file, read-only)."""
    from promptgrid.output.lease import check_writable
    from promptgrid.output.sinks import open_sink

    check_writable(open_sink(output))


@contextlib.contextmanager
def output_reserved(output: str, wait: bool) -> Iterator[None]:
    """Take the output's lease before the run (and Prefect) starts, for the run to claim: an unusable
    output, or one another run holds, stops the command at once (exit 2); `wait` waits for it instead."""
    from promptgrid.output.lease import OutputLease, hand_over, lease_name
    from promptgrid.output.sinks import open_sink

    sink = open_sink(output)
    lease = OutputLease(sink, lease_name(), run_id=f"cli-{secrets.token_hex(6)}")
    lease.take(wait=wait, on_wait=lambda text: print(f"note: {text}", file=sys.stderr, flush=True))
    lease.start_renewing()
    hand_over(lease)
    try:
        yield
    finally:
        lease.release()


def run_flow(flow_call: Callable[[], Awaitable[Any]]) -> int:
    """Run a flow (called with return_state=True) in this process, on the Prefect API `prefect_api` gives.

    0 when every job succeeded; 1 when the flow run ended Failed (its message says why) or the output holds
    failures from earlier runs; 130 when Ctrl-C stopped it (after it saved what was in progress; a second
    Ctrl-C stops at once); InvalidInput goes on up (exit 2).
    """
    from promptgrid.cli.prefect_server import prefect_api

    async def flow_run() -> Any:
        return await flow_call()

    try:
        with interrupts.ctrl_c_stops_runs(), prefect_api():
            state = asyncio.run(flow_run())
            result = state.result(raise_on_failure=False)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return interrupts.EXIT_CODE
    if isinstance(result, RunInterrupted) or (
        isinstance(result, PromptgridError) and interrupts.stop_requested()
    ):
        print(f"interrupted: {result}", file=sys.stderr)
        return interrupts.EXIT_CODE
    if isinstance(result, InvalidInput):
        raise result
    if isinstance(result, PromptgridError):
        print(f"error: the run failed: {result}", file=sys.stderr)
        return 1
    if isinstance(result, BaseException):
        raise result
    print(describe_summary(result))
    if state.is_failed():
        print(f"error: the run failed: {state.message}", file=sys.stderr)
        return 1
    return 1 if result["previously_failed"] and result.get("fail_when") != "never" else 0


def nothing_left(spec: SweepSpec) -> dict[str, Any] | None:
    """The summary of a run with nothing left to do, worked out without Prefect; None when there is work.

    Only an output with a manifest can have nothing left, so a first run pays nothing for asking.
    """
    from promptgrid.flows.planning import RunPlan, Selection, plan_selection
    from promptgrid.output.manifest.read import part_keys
    from promptgrid.output.sinks import open_sink

    sink = open_sink(spec.output)
    if not part_keys(sink):
        return None
    _, total, tally = plan_selection(RunPlan.from_spec(spec), sink, Selection())
    if total:
        return None
    return {
        "output": sink.root,
        "succeeded": 0,
        "failed": 0,
        "skipped": tally.skipped,
        "previously_failed": tally.previously_failed,
        "api_requests": 0,
        "report": None,
        "fail_when": str(spec.fail_when),
    }


def describe_summary(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['succeeded']} images generated, {summary['failed']} failed, "
        f"{summary['skipped']} already done ({summary['previously_failed']} of those failed earlier); "
        f"{summary['api_requests']} API requests",
        f"images:   {summary['output']}/images/",
        f"manifest: {summary['output']}/manifest/ (see `promptgrid manifest show {summary['output']}`)",
    ]
    if summary.get("report"):
        lines.append(f"report:   {summary['report']}")
    if summary["failed"] or summary["previously_failed"]:
        lines.append(f"retry failures with: promptgrid backfill {summary['output']}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_command(
        spec: Annotated[Path, typer.Argument(help="The sweep spec (YAML).")],
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Validate and print the plan; send nothing to the API.")
        ] = False,
        use_sandbox: Annotated[bool, typer.Option("--sandbox", help=SANDBOX_HELP)] = False,
        sandbox_time_scale: Annotated[float, typer.Option(help=TIME_SCALE_HELP)] = 10.0,
        output: Annotated[str | None, typer.Option(help="Local folder or s3://bucket/prefix.")] = None,
        api_base: Annotated[str | None, typer.Option(help="Base URL of the prediction API.")] = None,
        rate_limit: Annotated[
            str | None, typer.Option(help="auto (learned from the API), or requests per window: 60/60s.")
        ] = None,
        max_concurrent: Annotated[int | None, typer.Option(help="Predictions in flight at most.")] = None,
        polls_count: Annotated[
            bool | None,
            typer.Option("--polls-count/--no-polls-count", help="Whether polls count toward the rate limit."),
        ] = None,
        price_per_image: Annotated[
            float, typer.Option(help="USD per image, for the cost estimate.")
        ] = PRICE_PER_IMAGE_USD,
        report: Annotated[
            bool, typer.Option("--report/--no-report", help="Write the HTML report when the run ends.")
        ] = True,
        wait: Annotated[bool, typer.Option("--wait", help=WAIT_HELP)] = False,
        max_jobs: Annotated[int | None, typer.Option(help="Refuse a run of more jobs than this.")] = None,
        max_cost: Annotated[float | None, typer.Option(help=MAX_COST_HELP)] = None,
        stall_timeout: Annotated[float | None, typer.Option(help=STALL_HELP)] = None,
    ) -> None:
        """Generate every image a spec describes (or, with --dry-run, say what that would take)."""
        from promptgrid.engine.estimate import describe_dry_run
        from promptgrid.spec.load import check_spec, load_spec, read_spec

        caps: dict[str, Any] = {"max_cost": max_cost, "stall_timeout": stall_timeout, "max_jobs": max_jobs}
        overrides = spec_overrides(output, api_base, rate_limit, max_concurrent, polls_count, **caps)
        environment = environment_overrides()
        if dry_run:  # offline: the built-in table and the user cache, nothing asked of the API
            loaded = load_spec(spec, overrides=overrides, environment=environment)
            print(describe_settings(loaded, key_set=read_api_settings().api_key is not None), file=sys.stderr)
            typer.echo(describe_dry_run(loaded, price_per_image=price_per_image))
            return
        sweep = read_spec(spec, overrides=overrides, environment=environment)
        if not use_sandbox and read_api_settings().api_key is None:
            check_spec(sweep)  # without a key nothing can be asked: say what is wrong with the spec first
            raise InvalidInput([f"{API_KEY_ENV} is not set: export your Eachlabs API key, or pass --sandbox"])
        check_output(sweep.output)
        if not use_sandbox and not reachable(sweep.api.base_url):
            raise typer.Exit(1)
        from promptgrid.quota.factory import check_quota_reachable

        check_quota_reachable(sweep.api.quota_url)  # exit 1 in seconds, before Prefect starts
        time_scale = sandbox_time_scale if use_sandbox else 1.0
        with api_for_run(use_sandbox, time_scale) as sandbox_url:
            replaced = {}
            if sandbox_url:
                api_base = sandbox_url
                limit = sweep.api.rate_limit
                replaced = {"api.base_url": (api_base, "--sandbox")}
                if limit.requests is not None:  # auto needs no scaling: it reads the sandbox's limits
                    rate_limit = scaled_rate_limit(limit.requests, limit.window_s, time_scale)
                    replaced["api.rate_limit"] = (rate_limit, f"--sandbox, x{time_scale:g} time")
            print(describe_settings(sweep, replaced), file=sys.stderr)
            overrides = spec_overrides(output, api_base, rate_limit, max_concurrent, polls_count, **caps)
            checked, resolved = resolve_models_first(spec, overrides, environment, time_scale)
            done = nothing_left(checked)
            if done is not None:
                print(
                    f"nothing to do: all {done['skipped']} jobs are in the manifest already", file=sys.stderr
                )
                print(describe_summary(done))
                raise typer.Exit(1 if done["previously_failed"] and done["fail_when"] != "never" else 0)
            from promptgrid.flows.generate import generate  # Prefect: only once there is work to do

            with output_reserved(checked.output, wait):
                code = run_flow(
                    lambda: generate(
                        spec_path=str(spec.resolve()),
                        output=output,
                        api_base=api_base,
                        rate_limit=rate_limit,
                        max_concurrent=max_concurrent,
                        polls_count=polls_count,
                        price_per_image=price_per_image,
                        time_scale=time_scale,
                        report=report,
                        wait=wait,
                        return_state=True,
                        resolved_models=resolved,
                        **caps,
                    )
                )
        raise typer.Exit(code)

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
        use_sandbox: Annotated[bool, typer.Option("--sandbox", help=SANDBOX_HELP)] = False,
        sandbox_time_scale: Annotated[float, typer.Option(help=TIME_SCALE_HELP)] = 10.0,
        api_base: Annotated[str | None, typer.Option(help="Base URL of the prediction API.")] = None,
        rate_limit: Annotated[str | None, typer.Option(help="Requests per window, e.g. 60/60s.")] = None,
        price_per_image: Annotated[
            float, typer.Option(help="USD per image, for the cost estimate.")
        ] = PRICE_PER_IMAGE_USD,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="List the jobs that would run again; send nothing.")
        ] = False,
        wait: Annotated[bool, typer.Option("--wait", help=WAIT_HELP)] = False,
    ) -> None:
        """Re-run only the jobs of OUTPUT whose latest outcome matches (by default: not a success)."""
        from promptgrid.output.selection import (
            describe_backfill,
            jobs_to_backfill,
            saved_api_config,
            unknown_error_codes,
        )

        statuses = [part.strip() for part in status.split(",") if part.strip()]
        text, jobs = jobs_to_backfill(output, statuses, where)  # bad input stops here, before any run
        flags = spec_overrides(None, api_base, rate_limit)
        for unknown in unknown_error_codes(where):
            print(
                f"note: {unknown!r} is not an error code promptgrid knows (docs/errors.md)", file=sys.stderr
            )
        print(f"{len(jobs)} jobs to run again", file=sys.stderr)
        if dry_run:
            api = saved_api_config(text, {**environment_overrides(), **flags})
            typer.echo(describe_backfill(output, jobs, api, price_per_image))
            raise typer.Exit(0)
        if not jobs:
            raise typer.Exit(0)
        base_url = saved_api_config(text, {**environment_overrides(), **flags}).base_url
        check_output(output)
        if not use_sandbox and not reachable(base_url):
            raise typer.Exit(1)
        from promptgrid.flows.backfill import backfill

        time_scale = sandbox_time_scale if use_sandbox else 1.0
        with api_for_run(use_sandbox, time_scale) as sandbox_url:
            if sandbox_url:
                api_base = sandbox_url
                rate_limit = rate_limit or scaled_rate_limit(60, 60.0, time_scale)
            with output_reserved(output, wait):
                code = run_flow(
                    lambda: backfill(
                        output=output,
                        statuses=statuses,
                        where=where,
                        api_base=api_base,
                        rate_limit=rate_limit,
                        price_per_image=price_per_image,
                        time_scale=time_scale,
                        wait=wait,
                        return_state=True,
                    )
                )
        raise typer.Exit(code)
