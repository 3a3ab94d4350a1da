"""What a face asks of a run, in one typed form: the API settings every request-sending command takes, and
the run's own (output, price, report, waiting for a busy output)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.errors import InvalidInput
from promptgrid.spec.overrides import spec_overrides

# A sandbox's clock runs this many times faster than real time unless told otherwise.
SANDBOX_TIME_SCALE = 10.0


@dataclass(frozen=True)
class ApiOptions:
    """The API settings a face was given: each overrides the environment's and the spec's (or the saved
    spec's, for a backfill); None leaves it to them. `sandbox` starts the local stand-in API for the run."""

    api_base: str | None = None
    rate_limit: str | None = None  # "auto", or requests per window such as "60/60s"
    max_concurrent: int | None = None
    polls_count: bool | None = None
    sandbox: bool = False
    time_scale: float | None = None  # the API clock's speed: SANDBOX_TIME_SCALE with a sandbox, else 1

    def __post_init__(self) -> None:
        problems = []
        if self.sandbox and self.api_base:
            problems.append("give --sandbox (sandbox=True) or an API base URL, not both")
        if self.time_scale is not None and not self.time_scale > 0:
            problems.append(f"the time scale must be above 0, got {self.time_scale!r}")
        if problems:
            raise InvalidInput(problems)

    @property
    def scale(self) -> float:
        if self.time_scale is not None:
            return self.time_scale
        return SANDBOX_TIME_SCALE if self.sandbox else 1.0

    def overrides(self, output: str | None = None) -> dict[str, Any]:
        """The settings these options set, keyed as the spec names them (`api.base_url`, ...)."""
        return spec_overrides(output, self.api_base, self.rate_limit, self.max_concurrent, self.polls_count)


@dataclass(frozen=True)
class RunOptions:
    """One run's options: the API's, where to write, the cost estimate's price, the report, and whether
    to wait for another run that holds the output."""

    api: ApiOptions = field(default_factory=ApiOptions)
    output: str | None = None
    price_per_image: float = PRICE_PER_IMAGE_USD
    report: bool = True
    wait: bool = False
    max_jobs: int | None = None  # refuse a run of more jobs (the spec's `max_jobs`)
    max_cost: float | None = None  # USD this run may spend at most (the spec's `api.max_cost`)
    stall_timeout: float | None = None  # seconds without progress before the run halts

    def overrides(self) -> dict[str, Any]:
        limits = spec_overrides(
            max_jobs=self.max_jobs, max_cost=self.max_cost, stall_timeout=self.stall_timeout
        )
        return {**self.api.overrides(self.output), **limits}
