"""The `promptgrid sandbox` command: serve the local stand-in for the prediction API until Ctrl-C."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from promptgrid.sandbox.config import SandboxConfig


def _limits(config: SandboxConfig) -> str:
    if config.rate_limited:
        polls = "polls count" if config.polls_count else "polls do not count"
        limits = (
            f"{config.rate_limit} requests per {config.window:g} s per key ({polls}), "
            f"{config.max_in_flight} predictions in flight per key"
        )
    else:
        limits = f"no request-rate limit, {config.max_in_flight} concurrent executions per organisation"
    if config.held_by_others:
        limits += f" ({config.held_by_others} held by other keys)"
    if config.payment_limit is not None:
        limits += f", 402 from {config.payment_limit} in flight"
    return limits


def _describe(config: SandboxConfig, url: str) -> str:
    return "\n".join(
        [
            f"Sandbox API listening on {url}",
            f"  time scale x{config.time_scale:g}, {config.limit_model} limits: {_limits(config)}, "
            f"median latency {config.scaled(config.latency_median_s):g} s",
            f"  key: {'the one given with --api-key' if config.api_key else 'any non-empty key'}; "
            f"stats at {url}/sandbox/stats",
            f"  export EACHLABS_API_BASE={url}",
            "Press Ctrl-C to stop.",
        ]
    )


def register(app: typer.Typer) -> None:
    @app.command("sandbox")
    def sandbox_command(
        port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8787,
        host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
        time_scale: Annotated[
            float, typer.Option(help="Divide every clock (latency, window, URL life) by X.")
        ] = 1.0,
        api_key: Annotated[
            str | None,
            typer.Option(help="Accept only this key (default: any non-empty key).", show_default=False),
        ] = None,
        limit_model: Annotated[
            str,
            typer.Option(
                help="page: requests per window and in-flight cap per key; docs: no rate limit, one cap "
                "on concurrent executions for the whole organisation."
            ),
        ] = "page",
        rate_limit: Annotated[int, typer.Option(help="Requests per window per key (page model).")] = 60,
        window_s: Annotated[float, typer.Option(help="Window length in API seconds.")] = 60.0,
        max_in_flight: Annotated[int, typer.Option(help="Predictions in flight per key.")] = 10,
        polls_count: Annotated[
            bool,
            typer.Option(
                "--polls-count/--no-polls-count", metavar="", help="Whether polls count toward the limit."
            ),
        ] = True,
        cancels_count: Annotated[
            bool,
            typer.Option("--cancels-count/--no-cancels-count", metavar="", help="Whether cancels count."),
        ] = True,
        retry_after: Annotated[
            bool,
            typer.Option(
                "--retry-after/--no-retry-after", metavar="", help="Whether 429s carry Retry-After."
            ),
        ] = True,
        held_by_others: Annotated[
            int, typer.Option(help="In-flight slots other keys of the organisation hold.")
        ] = 0,
        payment_limit: Annotated[
            int | None, typer.Option(help="Answer 402 to creates while this many are in flight.")
        ] = None,
        cancel_ignored_rate: Annotated[
            float, typer.Option(help="Share of cancels acknowledged but not carried out.")
        ] = 0.0,
        latency_median_s: Annotated[
            float, typer.Option(help="Median prediction latency (API seconds).")
        ] = 8.0,
        latency_sigma: Annotated[float, typer.Option(help="Lognormal spread of the latency.")] = 0.25,
        latency_tail_rate: Annotated[
            float, typer.Option(help="Share of predictions stretched by up to --latency-tail-factor.")
        ] = 0.0,
        latency_tail_factor: Annotated[float, typer.Option(help="The longest stretch of the tail.")] = 5.0,
        seed: Annotated[int, typer.Option(help="Seed of every random draw (latency, faults).")] = 0,
        create_5xx_rate: Annotated[float, typer.Option(help="Share of creates answered 5xx.")] = 0.0,
        get_5xx_rate: Annotated[float, typer.Option(help="Share of polls answered 5xx.")] = 0.0,
        drop_rate: Annotated[
            float, typer.Option(help="Share of creates and polls whose connection drops.")
        ] = 0.0,
        error_rate: Annotated[float, typer.Option(help="Share of predictions that end in error.")] = 0.0,
        never_finish_rate: Annotated[
            float, typer.Option(help="Share of predictions that never finish.")
        ] = 0.0,
        url_lifetime_s: Annotated[float, typer.Option(help="Output URL lifetime (API seconds).")] = 3600.0,
        slug_spelling: Annotated[
            str, typer.Option(help="Model slug spellings known: any, dotted (3.5) or dashed (3-5).")
        ] = "any",
        bearer_only: Annotated[
            bool,
            typer.Option("--bearer-only", metavar="", help="Read the key from Authorization: Bearer only."),
        ] = False,
        model_endpoints: Annotated[
            str,
            typer.Option(help="Model endpoints that answer (model, openapi; comma-separated); others 503."),
        ] = "model,openapi",
        success_status: Annotated[
            str, typer.Option(help="The status word for success: success, completed or succeeded.")
        ] = "success",
        minimal_errors: Annotated[
            bool,
            typer.Option(
                "--minimal-errors", metavar="", help="Failed predictions' output as the minimal {error}."
            ),
        ] = False,
        size_delta_px: Annotated[
            int, typer.Option(help="Render outputs this many pixels off the expected size each way.")
        ] = 0,
        executions: Annotated[
            bool,
            typer.Option(
                "--executions/--no-executions", metavar="", help="Serve GET /v1/executions (else 404)."
            ),
        ] = True,
        executions_fail_rate: Annotated[
            float, typer.Option(help="Share of executions listings answered 500.")
        ] = 0.0,
        echo_key: Annotated[
            bool,
            typer.Option(
                "--echo-key", metavar="", help="Echo the caller's key in error answers (a leak test)."
            ),
        ] = False,
    ) -> None:
        """Serve a local, strict stand-in for the prediction API (limits, latency, faults) until Ctrl-C."""
        from promptgrid.errors import InvalidInput
        from promptgrid.sandbox.server import SandboxConfig, serve_forever

        try:
            config = SandboxConfig(
                time_scale=time_scale, limit_model=limit_model, rate_limit=rate_limit, window_s=window_s,
                max_in_flight=max_in_flight, polls_count=polls_count, cancels_count=cancels_count,
                retry_after=retry_after, held_by_others=held_by_others, payment_limit=payment_limit,
                cancel_ignored_rate=cancel_ignored_rate, latency_median_s=latency_median_s,
                latency_sigma=latency_sigma, latency_tail_rate=latency_tail_rate,
                latency_tail_factor=latency_tail_factor, api_key=api_key, seed=seed,
                create_5xx_rate=create_5xx_rate,
                get_5xx_rate=get_5xx_rate, drop_rate=drop_rate, error_rate=error_rate,
                never_finish_rate=never_finish_rate, url_lifetime_s=url_lifetime_s, host=host, port=port,
                slug_spelling=slug_spelling, bearer_only=bearer_only, success_status=success_status,
                model_endpoints=tuple(name.strip() for name in model_endpoints.split(",") if name.strip()),
                minimal_errors=minimal_errors, size_delta_px=size_delta_px,
                executions_endpoint=executions, executions_fail_rate=executions_fail_rate, echo_key=echo_key,
            )  # fmt: skip
        except ValueError as exc:
            raise InvalidInput([f"sandbox options: {exc}"]) from None
        # Ctrl-C is how the server is meant to stop: no traceback.
        with contextlib.suppress(KeyboardInterrupt):
            try:
                serve_forever(config, on_ready=lambda url: typer.echo(_describe(config, url)))
            except OSError as exc:  # the port is taken or the address is not ours
                raise InvalidInput([f"cannot listen on {host}:{port}: {exc.strerror or exc}"]) from None
