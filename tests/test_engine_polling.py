"""The poll schedule on simulated latencies: the learned delay settles at its target, cold starts are cheap.

No clock is involved: each simulated prediction has a latency drawn from a seeded distribution, and a poll at
`plan.next_poll_at()` is "done" when that is at least the latency — exactly what a real poll would answer.
"""

from __future__ import annotations

import heapq
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


def draw_latency(rng: random.Random, median: float, sigma: float, tail: bool = False) -> float:
    """Lognormal around `median`; with `tail`, one in ten up to five times longer (the benchmark's tail)."""
    latency = median * math.exp(rng.gauss(0, sigma))
    return latency * rng.uniform(1, 5) if tail and rng.random() < 0.1 else latency


@pytest.mark.parametrize(
    ("sigma", "median", "tail"), [(0.1, 8.0, False), (0.25, 8.0, False), (0.5, 8.0, False), (0.25, 8.0, True),
                                  (0.25, 30.0, False), (0.5, 0.8, False)]
)  # fmt: skip
def test_free_polls_cost_a_bounded_number_per_prediction_whatever_the_spread_or_the_latency(
    sigma, median, tail
):
    rng = random.Random(8)
    policy = PollPolicy()
    model = LatencyModel(policy, polls_free=True)
    for _ in range(300):  # learning
        poll_until_done(model, draw_latency(rng, median, sigma, tail))
    latencies = [draw_latency(rng, median, sigma, tail) for _ in range(1000)]
    results = [poll_until_done(model, latency) for latency in latencies]
    # About `fine_polls` each, however long or spread: the seed page's loop polls every second, 8 for an
    # 8 s prediction, 30 for a 30 s one.
    assert sum(polls for polls, _ in results) / len(results) <= policy.fine_polls + 0.5
    # Slot time a finished prediction holds until a poll sees it, against the time predictions run: polling
    # every second of an 8 s prediction costs ~6%; the schedule's polls where predictions end, less.
    held = sum(seen - latency for latency, (_, seen) in zip(latencies, results, strict=True))
    assert held / sum(latencies) < 0.055


def test_predictions_in_flight_together_keep_to_their_schedule_while_it_is_redrawn():
    """Ten in flight at once, each ending while the others wait: the schedule is redrawn at every end, and a
    prediction that jumped to the redrawn one would poll at a random point of its next interval."""
    rng = random.Random(3)
    policy = PollPolicy()
    model = LatencyModel(policy, polls_free=True)
    polls = in_flight_together(model, [draw_latency(rng, 8.0, 0.5) for _ in range(600)], slots=10)
    assert sum(polls[100:]) / len(polls[100:]) <= policy.fine_polls + 0.5


@pytest.mark.parametrize(("sigma", "tail"), [(0.1, False), (0.5, False), (0.25, True)])
def test_while_room_is_scarce_predictions_in_flight_together_spend_the_scarce_schedule(sigma, tail):
    rng = random.Random(4)
    policy = PollPolicy()
    model = LatencyModel(policy, polls_free=True)
    model.room_scarce = True
    polls = in_flight_together(model, [draw_latency(rng, 8.0, sigma, tail) for _ in range(400)], slots=7)
    assert sum(polls[100:]) / len(polls[100:]) <= policy.scarce_polls + 0.5


def in_flight_together(model: LatencyModel, latencies: list[float], slots: int) -> list[int]:
    """Polls per prediction, `slots` at a time, each started when one before it is seen done."""
    queue = iter(latencies)
    events: list[tuple[float, int, float, float]] = []  # (poll due, order, started, latency)
    plans = {}
    polls = []
    order = 0
    for _ in range(slots):
        latency = next(queue)
        plans[order] = model.plan(KEY)
        heapq.heappush(events, (plans[order].next_poll_at(), order, 0.0, latency))
        order += 1
    while events:
        due, n, started, latency = heapq.heappop(events)
        plan = plans.pop(n)
        done = due - started >= latency
        plan.record_poll(due - started, done)
        if not done:
            plans[n] = plan
            heapq.heappush(events, (started + plan.next_poll_at(), n, started, latency))
            continue
        polls.append(plan.polls)
        if (latency := next(queue, None)) is not None:
            plans[order] = model.plan(KEY)
            heapq.heappush(events, (due + plans[order].next_poll_at(), order, due, latency))
            order += 1
    return polls


def test_while_room_is_scarce_the_schedule_spends_more_polls_to_see_an_end_sooner():
    rng = random.Random(6)
    policy = PollPolicy()
    model = LatencyModel(policy, polls_free=True)
    for _ in range(300):
        poll_until_done(model, draw_latency(rng, 8.0, 0.5))
    latencies = [draw_latency(rng, 8.0, 0.5) for _ in range(1000)]
    fine = [poll_until_done(model, latency) for latency in latencies]
    model.room_scarce = True
    scarce = [poll_until_done(model, latency) for latency in latencies]
    assert sum(p for p, _ in fine) < sum(p for p, _ in scarce) <= (policy.scarce_polls + 0.5) * len(latencies)
    assert sum(seen for _, seen in scarce) < sum(seen for _, seen in fine)


def test_the_first_free_poll_still_learns_where_a_tenth_are_done():
    """The schedule places the polls after the first; the first still moves with each answer it gets, from
    a seed (the first completion seen) far from where a tenth are done."""
    rng = random.Random(9)
    model = LatencyModel(PollPolicy(), polls_free=True)
    poll_until_done(model, 16.0)
    latencies = [draw_latency(rng, 8.0, 0.5) for _ in range(600)]
    for latency in latencies:
        poll_until_done(model, latency)
    assert model.estimate(KEY) == pytest.approx(sorted(latencies)[60], rel=0.3)
    assert model.schedule(KEY)[0] < 8.0  # the schedule's polls begin well before the median


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


def test_free_polls_are_timed_from_when_the_last_poll_left_on_the_schedule():
    rng = random.Random(2)
    model = LatencyModel(PollPolicy(), polls_free=True)
    for _ in range(100):
        poll_until_done(model, draw_latency(rng, 8.0, 0.25))
    schedule = model.schedule(KEY)
    plan = model.plan(KEY)
    first = plan.next_poll_at()
    plan.record_poll(first, False)
    at = plan.next_poll_at()
    assert at in schedule and at > first
    assert plan.next_poll_at() == at  # asked again (a sleep woken early), the same point: none is skipped
    plan.record_poll(at + 0.05, False, sent_s=at)  # the answer took 0.05 s to come back
    # The schedule's next point: a slow answer does not push it back, nor is a point polled twice.
    assert plan.next_poll_at() == schedule[schedule.index(at) + 1]
    plan.record_poll(schedule[-1] + 1.0, False, sent_s=schedule[-1] + 1.0)  # held up past the schedule
    assert plan.next_poll_at() == pytest.approx((schedule[-1] + 1.0) * 1.08)  # then `fine_step` of it


def test_where_the_slots_spare_time_the_first_poll_waits_until_nearly_every_prediction_is_done():
    rng = random.Random(7)
    latencies = [8.0 * math.exp(rng.gauss(0, 0.25)) for _ in range(1500)]
    plain = LatencyModel(PollPolicy())
    spare = LatencyModel(PollPolicy())
    spare.hold_s = 40.0  # the first poll may come as late as 28 s: far past nearly every end
    for model in (plain, spare):  # learning
        for t in latencies[:500]:
            poll_until_done(model, t)
    plain_polls = sum(poll_until_done(plain, t)[0] for t in latencies[500:]) / 1000
    spare_polls = sum(poll_until_done(spare, t)[0] for t in latencies[500:]) / 1000
    assert spare.first_hit_for(KEY) == PollPolicy().max_first_hit
    assert spare_polls < 1.05 < plain_polls
    tight = LatencyModel(PollPolicy())
    tight.hold_s = 8.0  # up to 5.6 s: before most ends, so no later than the usual target
    for t in latencies[:500]:
        poll_until_done(tight, t)
    assert tight.first_hit_for(KEY) == PollPolicy().first_hit


def test_free_polls_that_may_yet_count_aim_later_and_spend_fewer():
    model = LatencyModel(PollPolicy(), polls_free=True)
    assert model.first_hit == PollPolicy().fine_first_hit
    assert model.schedule_polls == PollPolicy().fine_polls
    model.set_polls_unproven(True)
    assert model.first_hit == PollPolicy().unproven_first_hit
    assert model.schedule_polls == PollPolicy().unproven_polls


def test_a_switch_to_counted_polls_with_few_completions_moves_the_first_poll_past_the_fine_delay():
    model = LatencyModel(PollPolicy(), polls_free=True)
    for done_at in (7.0, 8.0, 9.0, 10.0):
        model.record_done(KEY, done_at, after_s=done_at - 0.5)
    fine_delay = model.estimate(KEY)
    model.set_polls_free(False)
    assert model.estimate(KEY) > fine_delay
    assert model.estimate(KEY) >= 9.0
