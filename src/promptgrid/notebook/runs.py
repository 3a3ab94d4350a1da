"""`promptgrid.run`: the run service (`promptgrid.runs`) from a script or a notebook, with Python arguments
in place of the command line's flags; progress goes to the notebook's output."""

from __future__ import annotations

import sys

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.progress import PROGRESS_STREAM
from promptgrid.run_summary import RunSummary
from promptgrid.runs.options import ApiOptions, RunOptions
from promptgrid.runs.service import run_spec
from promptgrid.runs.source import SpecSource


def run(
    spec: SpecSource,
    *,
    sandbox: bool = False,
    output: str | None = None,
    api_base: str | None = None,
    rate_limit: str | None = None,
    max_concurrent: int | None = None,
    polls_count: bool | None = None,
    time_scale: float | None = None,
    price_per_image: float = PRICE_PER_IMAGE_USD,
    report: bool = True,
    wait: bool = False,
    max_jobs: int | None = None,
    max_cost: float | None = None,
    stall_timeout: float | None = None,
) -> RunSummary:
    """Generate every image of a spec that its output does not have yet, and return what the run did.

    The same run as `promptgrid run SPEC`: the spec and the settings are checked first (InvalidInput lists
    every problem, nothing is sent), jobs already in the manifest are skipped, so running a spec again
    creates nothing it already has (and does not even start Prefect). `sandbox=True` starts the local
    stand-in API for the run (its images are sandbox renders); otherwise the key is read from
    EACHLABS_API_KEY. `output`, `api_base`, `rate_limit` ("auto", "60/60s"), `max_concurrent` and
    `polls_count` override the spec's keys of those names, and the environment's (EACHLABS_API_BASE, ...).

    `time_scale` says how many times faster than real time the API's clock runs: 10 for `sandbox=True`
    unless given, 1 for a real API. An explicit rate limit's window and the engine's clocks shrink by it.
    `wait` waits for another run that holds the output instead of raising OutputInUse. `max_jobs`,
    `max_cost` (USD for this run) and `stall_timeout` (seconds) override the spec's `max_jobs`,
    `api.max_cost` and `api.stall_timeout`.

    Works from a script and inside a notebook's running event loop alike; progress lines go to stdout,
    notes (the settings and where each came from, the models) to stderr. Raises
    `promptgrid.errors.ApiUnreachable` when the API cannot be reached at all (nothing was sent).
    """
    api = ApiOptions(api_base, rate_limit, max_concurrent, polls_count, sandbox, time_scale)
    options = RunOptions(api, output, price_per_image, report, wait, max_jobs, max_cost, stall_timeout)
    token = PROGRESS_STREAM.set(sys.stdout)
    try:
        return run_spec(spec, options, _note, sandbox_hint="sandbox=True")
    finally:
        PROGRESS_STREAM.reset(token)


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
