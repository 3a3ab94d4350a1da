"""The command line's options, each written once: the API settings every command that sends requests takes
(`run`, `backfill`, `models show`), and the run options `run` and `backfill` share."""

from __future__ import annotations

from typing import Annotated

import typer

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.runs.options import SANDBOX_TIME_SCALE, ApiOptions

# A flag's help needs no type: `metavar=""` keeps Typer from printing `<bool>` beside every one.
ApiBase = Annotated[
    str | None, typer.Option(help="Base URL of the prediction API (default: EACHLABS_API_BASE, the spec's).")
]
RateLimit = Annotated[
    str | None,
    typer.Option(help="auto (no cap until the API shows one, then its cap), or requests per window: 60/60s."),
]
MaxConcurrent = Annotated[int | None, typer.Option(help="Predictions in flight at most.")]
PollsCount = Annotated[
    bool | None,
    typer.Option(
        "--polls-count/--no-polls-count", metavar="", help="Whether polls count toward the rate limit."
    ),
]
Sandbox = Annotated[
    bool,
    typer.Option(
        "--sandbox",
        metavar="",
        help="Start the local sandbox API for this command and use it (sandbox renders, not real images).",
    ),
]
TimeScale = Annotated[
    float | None,
    typer.Option(
        "--time-scale",
        "--sandbox-time-scale",
        help=f"How many times faster than real time the API's clock runs (latency, rate window): "
        f"{SANDBOX_TIME_SCALE:g} with --sandbox, else 1.",
        show_default=False,
    ),
]
PricePerImage = Annotated[float, typer.Option(help="USD per image, for the cost estimate.")]
DEFAULT_PRICE = PRICE_PER_IMAGE_USD
DryRun = Annotated[bool, typer.Option("--dry-run", metavar="", help="Say what would run; send nothing.")]
Wait = Annotated[
    bool,
    typer.Option(
        "--wait",
        metavar="",
        help="When another run holds the output, wait until it is done instead of stopping at once.",
    ),
]


def api_options(
    api_base: str | None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    polls_count: bool | None = None,
    sandbox: bool = False,
    time_scale: float | None = None,
) -> ApiOptions:
    """The API options as the run service takes them (InvalidInput when they contradict each other)."""
    return ApiOptions(api_base, rate_limit, max_concurrent, polls_count, sandbox, time_scale)
