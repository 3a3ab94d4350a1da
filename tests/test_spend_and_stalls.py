"""Spend caps and stalls: the engine against the sandbox stops paying at a cap and halts when nothing moves.

The sandbox serves the 429s the documentation describes without saying what they count (a bare one, a
burst's), so the limits reader is tested on what it must not adopt as well as on what it must.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace

import pytest

from promptgrid.api.client import ApiClient
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.engine.limits import names_a_rate
from promptgrid.engine.spend import SpendCaps, SpendGuard, check_prices, spend_caps
from promptgrid.engine.stall import StallWatch
from promptgrid.errors import BudgetExhausted, InvalidInput, Stalled, Throttled
from promptgrid.output.manifest.costs import spent_on_day
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks import open_sink
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.spec.schema import ApiConfig
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus
from tests.test_engine_limits import AUTO, MODEL, jobs
from tests.test_manifest import T0, make_job, make_outcome

TURBO = "stable-diffusion-3-5-large-turbo"


async def run_until_halted(
    url: str, batch: list[Job], config: EngineConfig
) -> tuple[list[JobOutcome], Engine]:
    """Every outcome the engine yields, and the engine, whose `halted` says why it stopped (if it did)."""
    outcomes: list[JobOutcome] = []
    async with ApiClient(url, ApiKey("sk-unattended-test")) as client:
        engine = Engine(client, LocalBudget(config.limits), config)
        try:
            async for outcome in engine.run(batch):
                outcomes.append(outcome)
        except (BudgetExhausted, Stalled) as exc:
            assert exc is engine.halted
    return outcomes, engine


async def test_a_run_cap_of_ten_images_sends_at_most_ten_creates_and_ends_the_rest_budget_exhausted(
    sandbox_factory,
):
    sb = sandbox_factory()  # reports $0.065 an image
    config = replace(AUTO, spend=SpendCaps(max_cost=0.65))
    outcomes, engine = await run_until_halted(sb.url, jobs(30), config)
    stats = sb.stats()
    assert stats["creates"] <= 10 and stats["duplicate_creates"] == 0
    by_status = Counter(o.status for o in outcomes)
    assert by_status[JobStatus.SUCCESS] == stats["creates"]
    exhausted = [o for o in outcomes if o.error_code == ErrorCode.BUDGET_EXHAUSTED]
    assert exhausted and all(o.prediction_id is None for o in exhausted)
    assert isinstance(engine.halted, BudgetExhausted) and "max_cost $0.65" in str(engine.halted)
    assert engine.stats.spend == f"${0.065 * stats['creates']:.4g} spent of max_cost $0.65"


def test_predictions_in_flight_count_at_their_expected_price_and_a_refused_create_gives_it_back():
    guard = SpendGuard(SpendCaps(max_cost=0.2))
    first, second, third, fourth = (Job(job_id=f"j{n}", model=MODEL, inputs={}) for n in range(4))
    guard.reserve(first)
    guard.reserve(second)
    guard.reserve(third)  # 3 x $0.065 in flight
    with pytest.raises(
        BudgetExhausted, match=r"at \$0.065 would pass max_cost \$0.2 \(\$0 spent, \$0.195 in flight\)"
    ):
        guard.reserve(fourth)
    guard.unsent(third)  # refused by the API: it cost nothing
    guard.settle(first, 0.05, billed=True)  # the API reported its cost: the model's price from now on
    guard.settle(second, None, billed=True)  # no cost reported: its expected price
    assert guard.spent == pytest.approx(0.115)
    guard.reserve(third)  # $0.115 + $0.05 fits $0.2
    with pytest.raises(BudgetExhausted):
        guard.reserve(fourth)


def test_a_per_day_cap_counts_what_the_output_spent_earlier_that_day():
    guard = SpendGuard(SpendCaps(max_cost_per_day=1.0, spent_today=0.9))
    guard.reserve(Job(job_id="a", model=MODEL, inputs={}))
    with pytest.raises(BudgetExhausted, match="max_cost_per_day"):
        guard.reserve(Job(job_id="b", model=MODEL, inputs={}))
    assert guard.describe() == "$0.9 spent of max_cost_per_day $1"


def test_a_cap_on_a_model_of_unknown_price_is_refused_before_anything_is_sent():
    check_prices(SpendCaps(), [TURBO])  # no cap: no price needed
    with pytest.raises(InvalidInput, match=f"price of {TURBO} is not known.*api.price_per_image"):
        check_prices(SpendCaps(max_cost=5.0), [MODEL, TURBO])
    check_prices(SpendCaps(max_cost=5.0, price_per_image=0.02), [TURBO])


async def test_an_api_answering_every_create_with_a_bare_429_halts_by_the_stall_timeout(sandbox_factory):
    sb = sandbox_factory(bare_429=True, retry_after=False)
    config = replace(AUTO, stall_timeout_s=0.5)
    outcomes, engine = await run_until_halted(sb.url, jobs(5), config)
    assert isinstance(engine.halted, Stalled)
    assert "HTTP 429" in str(engine.halted) and "too many requests" in str(engine.halted)
    assert {o.error_code for o in outcomes} == {ErrorCode.STALLED}
    assert engine.stats.adopted_limit is None  # a bare 429 is a pause, never a cap
    assert sb.stats()["creates"] == 0


async def test_a_burst_429_is_transient_and_adopts_no_cap(sandbox_factory):
    sb = sandbox_factory(limit_model="docs", burst_limit=3)
    outcomes, engine = await run_until_halted(sb.url, jobs(20), AUTO)
    stats = sb.stats()
    assert stats["throttled"] > 0, "the burst never met a 429: the test proves nothing"
    failures = [o.error_message for o in outcomes if o.status is not JobStatus.SUCCESS]
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 20}, failures[:3]
    assert engine.stats.adopted_limit is None and engine.halted is None
    assert stats["duplicate_creates"] == 0


@pytest.mark.parametrize(
    ("message", "rate"),
    [
        ("too many requests", False),
        ("too many requests: too many executions were started at once; retry with backoff", False),
        ("too many requests; at most 60 requests per 60 s per API key", True),
        ("rate limit exceeded", True),
    ],
)
def test_only_a_429_that_names_a_rate_is_read_as_one(message, rate):
    assert names_a_rate(Throttled(message, retry_after_s=None)) is rate


def test_a_stall_is_logged_after_a_minute_of_refusals_and_halts_at_the_timeout(caplog):
    now = [0.0]
    watch = StallWatch(600.0, lambda: now[0])
    refusal = Throttled("create: HTTP 429: too many requests", retry_after_s=None, status_code=429)
    with caplog.at_level(logging.WARNING, logger="promptgrid.engine.stall"):
        for second in range(0, 600, 10):
            now[0] = float(second)
            watch.refused(refusal)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "refused for 60 s" in warnings[0] and "60 x HTTP 429" not in warnings[0]
    now[0] = 601.0
    with pytest.raises(Stalled, match=r"for 601 s .*refusals met: 61 x create: HTTP 429: too many requests"):
        watch.refused(refusal)
    watch.progressed()  # one create accepted: the clock starts again
    watch.refused(refusal)


def test_the_day_s_spend_is_read_from_the_manifest_across_runs(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    for run_id, minutes in (("r1", 0), ("r2", 60), ("r3", 60 * 24)):  # the third run is the next day
        with ManifestWriter(sink, run_id=run_id, spec_hash="h") as writer:
            writer.add(make_job(minutes), make_outcome(minutes, minutes=minutes), None)  # billed $0.065
            unpriced = make_outcome(minutes + 1, minutes=minutes, cost_usd=None)  # no cost reported
            writer.add(make_job(minutes + 1), unpriced, None)
            failed = make_outcome(minutes + 2, status=JobStatus.FAILED, minutes=minutes)
            writer.add(make_job(minutes + 2), failed, None)
    assert spent_on_day(sink, T0.date(), price_per_image=0.05) == pytest.approx(2 * (0.065 + 0.05))
    caps = spend_caps(ApiConfig(max_cost_per_day=1.0), sink, [MODEL], now=T0)
    assert caps.spent_today == pytest.approx(2 * (0.065 + 0.065))
    with pytest.raises(InvalidInput, match="api.price_per_image"):
        spend_caps(ApiConfig(max_cost=1.0), sink, [TURBO], now=T0)
