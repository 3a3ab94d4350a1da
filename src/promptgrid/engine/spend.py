"""Spend caps: what a run may spend, per run (`max_cost`) and per output and UTC day (`max_cost_per_day`).

Every create is reserved at its expected price before it is sent and settled at what it cost once its
prediction ended, so predictions in flight count at their expected price; once one more create would pass
a cap, none is sent and the jobs left end BUDGET_EXHAUSTED. A create refused by the API cost nothing and
gives its reservation back; one whose outcome is unknown keeps it (it may be billed).

A model's expected price is the last cost the API reported for it (`metrics.cost`), else its known price
(`KNOWN_PRICES`), else the spec's `api.price_per_image`. A cap on a model with none of these is refused
before anything is sent (`check_prices`), since nothing could be counted against it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, replace

from promptgrid.defaults import PRICE_PER_IMAGE_USD
from promptgrid.engine.retry import JobDeferred, JobEnded
from promptgrid.errors import BudgetExhausted, InvalidInput
from promptgrid.output.manifest.costs import spent_on_day
from promptgrid.output.sinks.base import Sink
from promptgrid.spec.schema import ApiConfig
from promptgrid.types import ErrorCode, Job

# USD per image of the models whose price is published (the model page's indicative price).
KNOWN_PRICES: dict[str, float] = {"stable-diffusion-3-5-large": 0.065}
# Sums of prices in binary floating point: ten images at $0.065 must fit a cap of $0.65.
_EPSILON_USD = 1e-9


@dataclass(frozen=True)
class SpendCaps:
    """The caps a run keeps (None: no cap) and what counts toward them before the run's first create."""

    max_cost: float | None = None  # USD this run
    max_cost_per_day: float | None = None  # USD per output and UTC day, across runs
    # what the output's manifest shows spent this UTC day before the run (output.manifest.costs)
    spent_today: float = 0.0
    price_per_image: float | None = None  # the spec's, for models of no known or reported price

    @property
    def capped(self) -> bool:
        return self.max_cost is not None or self.max_cost_per_day is not None


def expected_price(model: str, caps: SpendCaps, reported: dict[str, float] | None = None) -> float | None:
    """USD one image of `model` is expected to cost: reported by the API, else known, else the spec's."""
    if reported and model in reported:
        return reported[model]
    return KNOWN_PRICES.get(model, caps.price_per_image)


def check_prices(caps: SpendCaps, models: Iterable[str]) -> None:
    """InvalidInput (exit 2, nothing sent) when a cap is set and a model's price is unknown."""
    if not caps.capped:
        return
    unknown = sorted(model for model in set(models) if expected_price(model, caps) is None)
    if unknown:
        raise InvalidInput(
            [
                f"api.max_cost / api.max_cost_per_day: the price of {', '.join(unknown)} is not known, so "
                "no spend could be counted against the cap; set api.price_per_image (USD per image)"
            ]
        )


class SpendGuard:
    """One run's spending against its caps: settled costs, and reservations for creates in flight."""

    def __init__(self, caps: SpendCaps | None = None):
        self.caps = caps or SpendCaps()
        self.spent = 0.0  # settled this run
        self._reserved: dict[str, float] = {}  # job id -> the expected price of its create in flight
        self._reported: dict[str, float] = {}  # model -> the last cost the API reported for one image

    @property
    def committed(self) -> float:
        """Spent this run, plus what the creates in flight are expected to cost."""
        return self.spent + sum(self._reserved.values())

    def reserve(self, job: Job) -> None:
        """Count the job's create at its expected price; BudgetExhausted when that would pass a cap."""
        if not self.caps.capped:
            return
        price = expected_price(job.model, self.caps, self._reported)
        if price is None:  # check_prices refused such a spec before the run; a model added since has none
            raise BudgetExhausted(f"the price of {job.model} is not known, so no create is sent under a cap")
        after = self.committed + price
        for cap, limit, before in self._limits():
            if after + before > limit + _EPSILON_USD:
                raise BudgetExhausted(self._exhausted(cap, limit, before, price))
        self._reserved[job.job_id] = price

    def unsent(self, job: Job) -> None:
        """The create created nothing (refused, or never left): its reservation goes back."""
        self._reserved.pop(job.job_id, None)

    def create_raised(self, job: Job, exc: BaseException) -> None:
        """The create ended the job or was stopped: its reservation goes back when it provably made
        nothing (refused, never sent); one whose outcome is unknown, or that was cut off, stays counted."""
        refused = isinstance(exc, JobEnded) and exc.code != ErrorCode.CREATE_OUTCOME_UNKNOWN
        if refused or isinstance(exc, JobDeferred):
            self.unsent(job)

    def settle(self, job: Job, cost_usd: float | None, billed: bool) -> None:
        """The job's prediction ended: count what the API reported, else its expected price when `billed`."""
        reserved = self._reserved.pop(job.job_id, None)
        if cost_usd is not None:
            self._reported[job.model] = cost_usd
            self.spent += cost_usd
        elif billed and reserved is not None:
            self.spent += reserved

    def describe(self) -> str | None:
        """'$0.65 spent of max_cost $0.65', per cap set; None without caps."""
        parts = [
            f"${before + self.spent:.4g} spent of {cap} ${limit:.4g}" for cap, limit, before in self._limits()
        ]
        return "; ".join(parts) or None

    def _limits(self) -> list[tuple[str, float, float]]:
        """(cap name, USD, spent before this run that counts toward it) for each cap set."""
        caps = self.caps
        limits = []
        if caps.max_cost is not None:
            limits.append(("max_cost", caps.max_cost, 0.0))
        if caps.max_cost_per_day is not None:
            limits.append(("max_cost_per_day", caps.max_cost_per_day, caps.spent_today))
        return limits

    def _exhausted(self, cap: str, limit: float, before: float, price: float) -> str:
        in_flight = sum(self._reserved.values())
        return (
            f"spend cap reached: one more create at ${price:.4g} would pass {cap} ${limit:.4g} "
            f"(${before + self.spent:.4g} spent, ${in_flight:.4g} in flight); no further create is sent "
            f"(raise api.{cap}, then rerun or backfill)"
        )


def spend_caps(
    api: ApiConfig, sink: Sink, models: Iterable[str], now: dt.datetime | None = None
) -> SpendCaps:
    """The run's spend caps from its spec, with what the output spent today for a per-day cap; InvalidInput
    (nothing sent) when a cap is set on a model of unknown price."""
    caps = SpendCaps(api.max_cost, api.max_cost_per_day, 0.0, api.price_per_image)
    check_prices(caps, models)
    if caps.max_cost_per_day is None:
        return caps
    day = (now or dt.datetime.now(dt.UTC)).date()
    price = api.price_per_image if api.price_per_image is not None else PRICE_PER_IMAGE_USD
    return replace(caps, spent_today=spent_on_day(sink, day, price))
