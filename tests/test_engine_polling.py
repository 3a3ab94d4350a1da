"""The poll schedule on simulated latencies: the learned delay settles at its target, cold starts are cheap.

No clock is involved: each simulated prediction has a latency drawn from a seeded distribution, and a poll at
`plan.next_poll_at()` is "done" when that is at least the latency — exactly what a real poll would answer.
"""

from __future__ import annotations

import math
import random

import pytest

from promptgrid.api.polling import LatencyModel, PollPolicy

KEY = ("stable-diffusion-3-5-large", 35)


def poll_until_done(model: LatencyModel, latency: float, key=KEY) -> tuple[int, float]:
    """Polls used and the delay at which the prediction was seen done."""
    plan = model.plan(key)
    while True:
        at = plan.next_poll_at()
        done = at >= latency
        plan.record_poll(at, done)
        if done:
            return plan.polls, at


@pytest.mark.parametrize(("sigma", "median"), [(0.25, 8.0), (0.1, 0.8), (0.5, 30.0)])
def test_the_first_poll_finds_the_target_share_done_whatever_the_spread(sigma, median):
    rng = random.Random(5)
    model = LatencyModel(PollPolicy())
    for _ in range(400):  # learning
        poll_until_done(model, median * math.exp(rng.gauss(0, sigma)))
    hits = sum(poll_until_done(model, median * math.exp(rng.gauss(0, sigma)))[0] == 1 for _ in range(2000))
    assert 0.85 <= hits / 2000 <= 0.95  # first_hit is 0.9


def test_polls_per_image_stay_near_one_and_done_is_seen_about_when_most_are_done():
    rng = random.Random(11)
    model = LatencyModel(PollPolicy())
    latencies = [8.0 * math.exp(rng.gauss(0, 0.25)) for _ in range(1000)]
    results = [poll_until_done(model, latency) for latency in latencies]
    polls = sum(count for count, _ in results) / len(results)
    mean_seen = sum(seen for _, seen in results) / len(results)
    p90 = sorted(latencies)[900]
    assert polls < 1.2
    assert mean_seen < p90 * 1.1


def test_free_polls_trade_a_few_more_polls_for_faster_turnover():
    rng = random.Random(3)
    latencies = [8.0 * math.exp(rng.gauss(0, 0.25)) for _ in range(1500)]
    counted = LatencyModel(PollPolicy(), polls_free=False)
    free = LatencyModel(PollPolicy(), polls_free=True)
    counted_results = [poll_until_done(counted, t) for t in latencies]
    free_results = [poll_until_done(free, t) for t in latencies]
    assert sum(p for p, _ in free_results) > sum(p for p, _ in counted_results)
    assert sum(s for _, s in free_results) < sum(s for _, s in counted_results)


@pytest.mark.parametrize("sigma", [0.1, 0.25, 0.5])
def test_free_polls_see_a_prediction_done_within_a_few_percent_of_its_latency_whatever_the_spread(sigma):
    rng = random.Random(8)
    model = LatencyModel(PollPolicy(), polls_free=True)
    for _ in range(300):  # learning
        poll_until_done(model, 8.0 * math.exp(rng.gauss(0, sigma)))
    latencies = [8.0 * math.exp(rng.gauss(0, sigma)) for _ in range(1000)]
    results = [poll_until_done(model, latency) for latency in latencies]
    # Slot time a finished prediction holds until a poll sees it, against the time predictions run. One poll
    # every 5% of the time elapsed costs ~2.5%; polling every second of an 8 s prediction (the seed page's
    # loop) ~6%; the few done before the first poll (where ~10% are) add a little.
    held = sum(seen - latency for latency, (_, seen) in zip(latencies, results, strict=True))
    assert held / sum(latencies) < 0.04
    assert sum(polls for polls, _ in results) / len(results) < 20


def test_a_regime_change_restarts_the_delay_at_the_new_quantile_of_recent_latencies():
    rng = random.Random(4)
    model = LatencyModel(PollPolicy(), polls_free=True)
    latencies = [8.0 * math.exp(rng.gauss(0, 0.25)) for _ in range(200)]
    for latency in latencies:
        poll_until_done(model, latency)
    early = model.estimate(KEY)
    model.set_polls_free(False)  # the API turned out to count polls: poll sparingly from now on
    later = model.estimate(KEY)
    assert early < 8.0 < later  # from near the 10th percentile to near the 90th
    assert later == pytest.approx(sorted(latencies)[180], rel=0.1)


def test_polls_held_back_by_a_pause_do_not_count_among_the_completion_times():
    rng = random.Random(4)
    model = LatencyModel(PollPolicy(), polls_free=True)
    latencies = [8.0 * math.exp(rng.gauss(0, 0.25)) for _ in range(100)]
    for latency in latencies:
        poll_until_done(model, latency)
    for _ in range(100):  # a 429's pause held every poll for 30 s: each saw its end that late
        plan = model.plan(KEY)
        due = plan.next_poll_at()
        plan.record_poll(due + 30.0, True, sent_s=due)
    model.set_polls_free(False)
    # The restart comes from the prompt sightings alone, not from the 38 s the held polls reported.
    assert model.estimate(KEY) == pytest.approx(sorted(latencies)[90], rel=0.1)


def test_the_cold_start_scouts_probe_and_the_others_hold_back_until_a_delay_is_known():
    model = LatencyModel(PollPolicy(cold_start_s=1.0, cold_growth=2.0, scouts=2, scout_lead=5))
    scout_a, scout_b, other = model.plan(KEY), model.plan(KEY), model.plan(KEY)
    assert scout_a.next_poll_at() == 1.0
    assert 1.0 < scout_b.next_poll_at() < 2.0  # interleaved with the first scout
    assert other.next_poll_at() == 32.0
    assert not other.learned.is_set()
    scout_a.record_poll(1.0, False)
    scout_a.record_poll(2.0, True)
    assert other.learned.is_set()
    assert other.next_poll_at() == pytest.approx(2.0 * PollPolicy().seed_margin)


def test_a_new_step_count_starts_from_the_known_one_scaled():
    model = LatencyModel(PollPolicy(prior_s=None))
    poll_until_done(model, 4.0, key=("m", 20))
    known = model.estimate(("m", 20))
    assert model.estimate(("m", 40)) == pytest.approx(known * 2)
    assert model.estimate(("other-model", 20)) is None


def test_a_late_hit_teaches_nothing():
    model = LatencyModel(PollPolicy(prior_s=10.0))
    plan = model.plan(KEY)
    plan.record_poll(30.0, True)  # the poll waited for the budget: done by then says nothing about 10 s
    assert model.estimate(KEY) == 10.0


def test_free_polls_are_timed_from_when_the_last_poll_left_and_finer_while_room_is_scarce():
    model = LatencyModel(PollPolicy(prior_s=8.0, fine_step=0.05, scarce_fine_step=0.01), polls_free=True)
    plan = model.plan(KEY)
    assert plan.next_poll_at() == 8.0
    plan.record_poll(8.3, False, sent_s=8.0)  # the answer took 0.3 s to come back
    assert plan.next_poll_at() == pytest.approx(
        8.0 * 1.05
    )  # not 8.3 * 1.05: a slow answer does not stretch it
    model.room_scarce = True
    assert plan.next_poll_at() == pytest.approx(8.3 + PollPolicy().min_interval_s)  # 8.08 has passed already
    plan.record_poll(8.4, False, sent_s=8.35)
    assert plan.next_poll_at() == pytest.approx(8.35 * 1.01)
