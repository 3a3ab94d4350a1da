"""The poll schedule on simulated latencies: the learned delay settles at its target, cold starts are cheap.

No clock is involved: each simulated prediction has a latency drawn from a seeded distribution, and a poll at
`plan.next_poll_at()` is "done" when that is at least the latency — exactly what a real poll would answer.
"""

from __future__ import annotations

import math
import random

import pytest

from promptgrid.tasks.api.polling import LatencyModel, PollPolicy

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
    counted = LatencyModel(PollPolicy(), polls_count=True)
    free = LatencyModel(PollPolicy(), polls_count=False)
    counted_results = [poll_until_done(counted, t) for t in latencies]
    free_results = [poll_until_done(free, t) for t in latencies]
    assert sum(p for p, _ in free_results) > sum(p for p, _ in counted_results)
    assert sum(s for _, s in free_results) < sum(s for _, s in counted_results)


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
