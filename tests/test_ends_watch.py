"""Where polls count toward a request cap, and where they are shown free, ends are seen through the
executions listing, against the sandbox: one listing for every prediction in flight, a poll of each only
late, in case the listing misses it; a listing that fails or does not show ours is given up for polls
alone."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import httpx

from promptgrid.api.client import ApiClient
from promptgrid.api.executions import parse_executions
from promptgrid.api.prediction import TERMINAL, PredictionStatus
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.ends_watch import Sighting, _Watched
from promptgrid.engine.engine import Engine
from promptgrid.engine.progress import RunProgress
from promptgrid.engine.waiting import latency_key
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.spec.schema import ApiConfig
from promptgrid.tasks.pipeline import engine_config
from promptgrid.types import JobOutcome, JobStatus
from tests.test_engine_limits import jobs

SCALE = 10.0  # at x100 a round trip is a good share of a prediction: first polls would find most done
# The page's cap at x10, polls counted, as a spec's `rate_limit: 60/6s` says it.
COUNTED = EngineConfig(limits=Limits(60, 60.0, 10, polls_count=True)).scaled(SCALE)
COUNTED = replace(COUNTED, limits=Limits(60, 6.0, 10, polls_count=True))


async def run_all(url: str, count: int, config: EngineConfig = COUNTED) -> tuple[list[JobOutcome], Engine]:
    async with ApiClient(url, ApiKey("sk-watch-test")) as client:
        engine = Engine(client, LocalBudget(config.limits), config)
        outcomes = [outcome async for outcome in engine.run(jobs(count))]
    return outcomes, engine


async def test_under_a_cap_counting_polls_most_ends_are_seen_in_the_listing_at_well_under_two_per_image(
    sandbox_factory,
):
    sb = sandbox_factory(time_scale=SCALE)
    outcomes, engine = await run_all(sb.url, 30)
    stats = sb.stats()
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 30}
    assert all(o.image and o.sha256 and o.cost_usd for o in outcomes)  # the listed output fetched, cost kept
    assert stats["throttled"] == 0 and stats["duplicate_creates"] == 0
    assert engine.stats.listed_ends >= 20 and engine.waits.ends.given_up is None
    assert stats["requests"]["executions"] >= 1
    # A create each, the listings (every 0.6 s), and the few polls of predictions the listing had not shown
    # by their late poll: per-prediction polls cost at least two requests per image.
    sent = sum(stats["requests"][kind] for kind in ("create", "get", "executions"))
    assert sent <= 1.6 * 30
    assert engine.stats.requests["poll"] == stats["requests"]["get"] + stats["requests"]["executions"]
    # The run summary's count has the listings too, though no job is charged for them.
    progress = RunProgress(total=30, engine=engine.stats)
    for outcome in outcomes:
        progress.record(outcome)
    assert engine.stats.listings == stats["requests"]["executions"]
    assert progress.requests_sent == sent


async def test_a_listing_that_fails_is_given_up_after_three_and_polls_see_every_end(sandbox_factory, caplog):
    sb = sandbox_factory(time_scale=SCALE, executions_fail_rate=1.0)
    outcomes, engine = await run_all(sb.url, 20)
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 20}
    assert engine.waits.ends.given_up == (
        "3 listings in a row failed (last: GET /v1/executions: HTTP 500: Failed to list executions)"
    )
    assert sb.stats()["requests"]["executions"] == 3 and engine.stats.listed_ends == 0
    assert "no longer used to see predictions end" in caplog.text


async def test_a_listing_whose_full_pages_show_none_of_ours_is_given_up_after_three(sandbox_factory):
    """A busy organisation: 100 newer executions of other members fill the one page asked for."""
    sb = sandbox_factory(time_scale=SCALE, foreign_executions=100)
    outcomes, engine = await run_all(sb.url, 20)
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 20}
    assert engine.stats.listed_ends == 0
    assert engine.waits.ends.given_up == (
        "3 full pages in a row showed none of ours (newer executions fill them)"
    )
    assert sb.stats()["requests"]["executions"] == 3


async def test_a_listing_that_lags_is_given_up_when_late_polls_find_the_ends(sandbox_factory):
    """It shows each prediction as it stood a minute before: the late polls find the ends first."""
    sb = sandbox_factory(time_scale=SCALE, executions_lag_s=60.0)
    outcomes, engine = await run_all(sb.url, 20)
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 20}
    assert engine.stats.listed_ends == 0
    assert (engine.waits.ends.given_up or "").endswith("late polls found ends it had not shown")


async def test_an_error_the_listing_shows_is_polled_for_its_detail(sandbox_factory):
    sb = sandbox_factory(time_scale=SCALE, error_rate=1.0, error_codes=(("PROVIDER_REJECTED", False),))
    outcomes, engine = await run_all(sb.url, 12)
    assert {(o.status, o.error_code) for o in outcomes} == {(JobStatus.FAILED, "PROVIDER_REJECTED")}
    assert engine.stats.listed_ends == 0 and sb.stats()["requests"]["executions"] >= 1


async def test_where_polls_are_free_the_listing_sees_ends_once_auto_has_shown_no_cap(sandbox_factory):
    """The documentation's model: no request cap. Once `auto`'s first window passed without a 429, one
    listing sees every end of ours within its interval: fewer requests than a poll schedule each, and most
    successes collected without a get."""
    sb = sandbox_factory(time_scale=SCALE, limit_model="docs")
    auto = EngineConfig(limits=Limits.auto(max_in_flight=10)).scaled(SCALE)
    outcomes, engine = await run_all(sb.url, 60, auto)
    stats = sb.stats()
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 60}
    assert engine.stats.adopted_limit is None and engine.waits.ends.given_up is None
    assert stats["requests"]["executions"] >= 1 and engine.stats.listed_ends >= 20
    # The free schedule alone spends `fine_polls` per prediction (8): the listings, late polls and the cold
    # start's polls stay well under it.
    sent = sum(stats["requests"][kind] for kind in ("create", "get", "executions"))
    assert sent <= 6 * 60


async def test_free_listings_go_at_the_pace_the_slots_turn_over_and_not_before_polls_are_shown_free(
    sandbox_factory,
):
    """`free_listings` listings per end while every slot is busy: the interval is the median latency over
    the slots times that; none while `auto` has not yet shown that polls do not count (its first window),
    and none with the policy at 0."""
    sb = sandbox_factory(time_scale=SCALE, limit_model="docs")
    auto = EngineConfig(limits=Limits.auto(max_in_flight=10)).scaled(SCALE)
    async with ApiClient(sb.url, ApiKey("sk-watch-test")) as client:
        engine = Engine(client, LocalBudget(auto.limits), auto)
        ends, limits = engine.waits.ends, engine.limits
        limits.finished()  # the cold start is over
        assert limits.latency.polls_unproven and not ends.active
        limits._proven_free()
        assert ends.active and ends.free and not ends.counted
        key = ("sandbox/model", 0)
        for elapsed in (0.6, 0.8, 1.0):  # each after a poll that missed it then
            limits.latency.record_done(key, elapsed, after_s=elapsed)
        ends._watched["p"] = _watched_for(key)
        assert ends.interval_s == 0.8 / (10 * auto.watch.free_listings)
        engine.waits.ends.policy = replace(auto.watch, free_listings=0)
        assert not ends.active


async def test_a_creates_only_cap_read_off_a_429_does_not_start_free_listings_but_one_the_spec_gives_does(
    sandbox_factory,
):
    """Under `auto`, a cap read off a create's 429 may yet count polls (the next poll's 429 tells): a fast
    listing would fill its window. The spec's `polls_count: false` says they never do."""
    sb = sandbox_factory(time_scale=SCALE, limit_model="docs")
    auto = EngineConfig(limits=Limits.auto(max_in_flight=10)).scaled(SCALE)
    given = replace(auto, limits=Limits(600, 6.0, 10, polls_count=False))
    async with ApiClient(sb.url, ApiKey("sk-watch-test")) as client:
        read = Engine(client, LocalBudget(auto.limits), auto)
        read.limits.finished()
        read.limits.limits = Limits(60, 6.0, 10, polls_count=False)  # as `_adopt` leaves it
        read.limits._proven_free()
        assert read.limits.polls_free and not read.waits.ends.active
        spec = Engine(client, LocalBudget(given.limits), given)
        assert spec.waits.ends.active and spec.waits.ends.free  # from the start: nothing to prove
        # Until something has ended no median is known: a listing per cold-start delay, not per 20 ms.
        spec.waits.ends._watched["p"] = _watched_for(("sandbox/model", 0))
        assert spec.waits.ends.interval_s == given.poll.cold_start_s


async def test_a_creates_only_cap_read_off_a_429_hands_the_watched_back_to_their_own_polls(sandbox_factory):
    """The page's cap counting creates alone, met after polls were shown free: the listing stops, and the
    predictions it watched are polled on their schedules at once, not late for a listing that will not come
    (which read as a listing missing ends, gave it up, and held each slot to its late poll)."""
    sb = sandbox_factory(time_scale=SCALE, limit_model="docs")
    auto = EngineConfig(limits=Limits.auto(max_in_flight=10)).scaled(SCALE)
    async with ApiClient(sb.url, ApiKey("sk-watch-test")) as client:
        engine = Engine(client, LocalBudget(auto.limits), auto)
        ends, limits = engine.waits.ends, engine.limits
        limits.finished()
        limits._proven_free()
        seen = ends.watch("p-1", "sandbox/model", ("sandbox/model", 0), ends._clock())
        assert seen is not None and ends.active
        limits.limits = Limits(60, 6.0, 10, polls_count=False)  # as `_adopt` leaves it after a create's 429
        await asyncio.wait({seen}, timeout=5)
        assert seen.cancelled() and ends.given_up is None and not ends.active
        assert not ends._watched  # none left to keep a later listing task going once polls count
        ends.unwatch("p-1")


def _watched_for(key: tuple[str, int]) -> _Watched:
    future: asyncio.Future[Sighting] = asyncio.get_running_loop().create_future()
    return _Watched("sandbox/model", key, datetime.now(UTC), future, 0.0, 0)


def test_a_finished_row_reads_as_a_get_would_and_a_running_one_as_nothing_yet():
    rows = [
        {"id": "a", "model": "m", "status": "success", "created_at": "2026-12-07T10:00:00Z",
         "output": ["https://cdn.example/a.0.png", {"url": "https://cdn.example/a.1.png"}],
         "execution_cost": 0.13, "run_time": 7.5},
        {"id": "b", "model": "m", "status": "error", "created_at": "2026-12-07T10:00:01Z",
         "output": {"error_code": "PROVIDER_REJECTED", "error_message": "filtered"}},
        {"id": "c", "model": "m", "status": "processing", "created_at": "2026-12-07T10:00:02Z"},
    ]  # fmt: skip
    done, failed, running = parse_executions({"executions": rows}).executions
    assert done.ended is not None and done.ended.status is PredictionStatus.SUCCESS
    assert done.ended.output_urls == ("https://cdn.example/a.0.png", "https://cdn.example/a.1.png")
    assert (done.ended.cost_usd, done.ended.predict_time_s, done.ended.id) == (0.13, 7.5, "a")
    assert failed.ended is not None and failed.ended.error_code == "PROVIDER_REJECTED"
    assert running.ended is None


async def test_predictions_an_earlier_run_made_are_polled_not_looked_for_in_the_listing(sandbox_factory):
    """Their creation time is not known here, so the listing's window could miss them."""
    sb = sandbox_factory(time_scale=SCALE)
    batch = jobs(6)
    async with ApiClient(sb.url, ApiKey("sk-watch-test")) as client:
        made = {job.job_id: await client.create(job.model, job.version, job.inputs) for job in batch}
        engine = Engine(client, LocalBudget(COUNTED.limits), COUNTED)
        outcomes = [outcome async for outcome in engine.run(batch, resume=made)]
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 6}
    assert {o.prediction_id for o in outcomes} == set(made.values())
    assert sb.stats()["requests"]["executions"] == 0 and engine.stats.listed_ends == 0


async def test_under_a_cap_far_above_the_need_listings_stay_fewer_than_the_polls_they_stand_in_for(
    sandbox_factory,
):
    """6,000 requests a minute: six spacings of it would list every 6 ms; a quarter of the first-poll delay
    holds the pace to a few listings per prediction's life."""
    sb = sandbox_factory(limit_model="docs")  # x100: a prediction takes ~80 ms
    config = EngineConfig(limits=Limits(6000, 60.0, 10, polls_count=True)).scaled(100.0)
    config = replace(config, limits=Limits(6000, 0.6, 10, polls_count=True))
    outcomes, engine = await run_all(sb.url, 30, config)
    stats = sb.stats()
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 30}
    assert engine.stats.listed_ends >= 1
    assert stats["requests"]["executions"] <= stats["requests"]["create"]


async def test_a_prediction_cancelled_as_stuck_is_no_longer_listed_for_while_its_cancel_is_watched(
    sandbox_factory,
):
    """The cancel's watch polls on its own: listing for it too would spend the cap on nothing."""
    sb = sandbox_factory(time_scale=SCALE, never_finish_rate=1.0, cancel_ignored_rate=1.0)
    config = replace(COUNTED, deadline_s=0.5, min_deadline_s=0.5, cancel_wait_s=2.4)
    outcomes, engine = await run_all(sb.url, 1, config)
    assert [o.status for o in outcomes] == [JobStatus.TIMED_OUT]
    # A listing every 0.6 s: at most one before the deadline (0.5 s), none in the 2.4 s of the cancel's watch.
    assert sb.stats()["requests"]["executions"] <= 1


async def test_under_auto_the_listing_takes_over_once_a_poll_429_shows_polls_count(sandbox_factory):
    """Before the cap is known polls may be free, and nothing is listed; from the 429 on, the predictions
    in flight then and after are watched."""
    sb = sandbox_factory(time_scale=SCALE)
    auto = EngineConfig(limits=Limits.auto(max_in_flight=10)).scaled(SCALE)
    outcomes, engine = await run_all(sb.url, 60, auto)
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 60}
    assert "(polls count)" in (engine.stats.adopted_limit or "")  # the window read off the 429's timing
    assert engine.stats.listed_ends >= 20 and sb.stats()["duplicate_creates"] == 0


async def test_the_spec_can_turn_the_listing_off_and_each_prediction_is_then_polled(sandbox_factory):
    """`api.listing_watch: false`, for an account whose listing is known to lag."""
    assert engine_config(ApiConfig(), 1.0).watch.enabled
    off = engine_config(ApiConfig(listing_watch=False), 1.0)
    assert not off.watch.enabled
    sb = sandbox_factory(time_scale=SCALE)
    outcomes, engine = await run_all(sb.url, 12, replace(COUNTED, watch=off.watch))
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 12}
    assert sb.stats()["requests"]["executions"] == 0 and engine.stats.listed_ends == 0


async def test_a_listing_the_budget_held_back_dates_the_ends_it_shows_when_it_left(sandbox_factory):
    """The latency learned from a sighting runs to when the listing was sent: a listing that waited for
    room in the window would otherwise date the end early, and the learned latencies lean short."""
    sb = sandbox_factory(time_scale=100.0)
    config = replace(COUNTED, limits=Limits(3, 1.5, 10, polls_count=True))
    job = jobs(1)[0]
    async with ApiClient(sb.url, ApiKey("sk-watch-test")) as client:
        engine = Engine(client, LocalBudget(config.limits), config)
        prediction_id = await engine.gateway.create(job.model, job.version, job.inputs)
        await asyncio.sleep(0.3)  # ended: a prediction takes ~80 ms at x100
        for _ in range(2):  # the create and these fill the window: the listing waits ~1.5 s for room
            (await engine.limits.budget.take_request("poll")).settle()
        watch, asked = engine.waits.ends, time.monotonic()
        seen = watch.watch(prediction_id, job.model, latency_key(job), asked)
        assert seen is not None
        await watch._look()
        sighting = seen.result()
        watch.unwatch(prediction_id)
    assert sighting.row.status in TERMINAL
    assert sighting.sent - asked >= 1.0


def _is_get(path: str) -> bool:
    return path.startswith("/v1/prediction/") and path != "/v1/prediction/"


class _Sent(httpx.AsyncHTTPTransport):
    """When each API request left and when its answer came, with its path and status."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, float, str, int]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        left = time.monotonic()
        response = await super().handle_async_request(request)
        if request.url.path.startswith("/v1/"):
            self.log.append((left, time.monotonic(), request.url.path, response.status_code))
        return response


async def test_under_auto_no_poll_goes_after_the_429_that_shows_polls_count_until_the_listing_answered(
    sandbox_factory,
):
    """The polls due while the window is full (and those the 429 met) are handed to the listing: after the
    pause one listing answers for all in flight, not a poll each. Their late polls wait for two listings,
    so one pause does not read as a listing that misses ends."""
    sb = sandbox_factory(time_scale=SCALE)
    auto = EngineConfig(limits=Limits.auto(max_in_flight=10)).scaled(SCALE)
    transport = _Sent()
    async with ApiClient(sb.url, ApiKey("sk-watch-test"), transport=transport) as client:
        engine = Engine(client, LocalBudget(auto.limits), auto)
        outcomes = [outcome async for outcome in engine.run(jobs(40))]
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 40}
    assert "(polls count)" in (engine.stats.adopted_limit or "")
    log = transport.log
    shown = min(answered for _, answered, path, status in log if _is_get(path) and status == 429)
    listed = min(
        answered for _, answered, path, status in log if path.endswith("/executions") and status == 200
    )
    assert listed > shown
    between = [path for left, _, path, _ in log if shown < left < listed and _is_get(path)]
    assert between == []
    assert engine.waits.ends.given_up is None and engine.stats.listed_ends >= 20


async def test_a_prediction_older_than_a_full_listing_page_goes_back_to_its_own_polls(sandbox_factory):
    """A page holds the newest hundred: one watched that ran long while a hundred more were created is not
    on it, and its poll, made late for the listing, would read as an end the listing missed."""
    sb = sandbox_factory(time_scale=100.0, max_in_flight=200, rate_limit=1000)
    config = replace(COUNTED, limits=Limits(1000, 6.0, 200, polls_count=True))
    job = jobs(1)[0]
    async with ApiClient(sb.url, ApiKey("sk-watch-test")) as client:
        engine = Engine(client, LocalBudget(config.limits), config)
        watch, key = engine.waits.ends, latency_key(job)
        oldest, began = await engine.gateway.create(job.model, job.version, job.inputs), watch._clock()
        newer = [
            await engine.gateway.create(job.model, job.version, {**job.inputs, "seed": seed})
            for seed in range(100)
        ]
        # Watched from when its wait began, before the hundred: no listing has gone since.
        old_seen = watch.watch(oldest, job.model, key, began)
        new_seen = watch.watch(newer[-1], job.model, key, watch._clock())
        assert old_seen is not None and new_seen is not None
        await watch._look()
        assert old_seen.cancelled() and oldest not in watch._watched  # back to its own polls
        assert newer[-1] in watch._watched or new_seen.done()  # on the page: still watched, or seen
        assert watch.given_up is None
        watch.unwatch(newer[-1])
