"""Limits learned from the API: a cap read off a 429, a budget that adopts it, an in-flight gate that adapts.

Times are made up (no clock runs) for the cap inference; the gate and the budget run on the event loop with
windows and waits of hundredths of a second.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from promptgrid.quota.adaptive import SlotGate, infer_rate_limit, most_in_window
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget


def steady(
    count: int, every_s: float, kinds: tuple[str, ...] = ("create", "poll")
) -> list[tuple[float, str]]:
    return [(n * every_s, kinds[n % len(kinds)]) for n in range(count)]


def test_the_first_window_that_filled_gives_the_cap_and_retry_after_its_length():
    # 60 requests answered over 2.9 s, then a 429 saying the first leaves the window in 3.0 s: 60 per 6 s.
    answered = steady(60, 2.9 / 59)
    limits = infer_rate_limit(answered, 3.0, 3.0, polls_count=True, max_in_flight=10)
    assert (limits.requests, limits.window_s, limits.polls_count) == (60, pytest.approx(6.0), True)
    assert limits.max_in_flight == 10


def test_a_429_on_a_create_alone_counts_only_creates():
    answered = steady(60, 0.05)  # creates and polls alternating
    limits = infer_rate_limit(answered, 3.0, 3.0, polls_count=False, max_in_flight=10)
    assert limits.requests == 30 and not limits.polls_count


def test_a_429_later_than_the_first_window_counts_only_the_longest_known_window():
    # Creates at 8 a second for 10 s (held back by their slots), then a 429: read with the page's 6 s
    # window (the most answered in any 6 s), not spread over 10.5 s.
    answered = steady(80, 0.125, ("create",))
    limits = infer_rate_limit(answered, 10.0, 0.5, polls_count=False, max_in_flight=10, longest_window_s=6.0)
    assert (limits.requests, limits.window_s) == (49, 6.0)
    unbounded = infer_rate_limit(answered, 10.0, 0.5, polls_count=False, max_in_flight=10)
    assert (unbounded.requests, unbounded.window_s) == (80, pytest.approx(10.5))


def test_without_retry_after_the_window_is_the_span_widened():
    limits = infer_rate_limit(steady(40, 0.1), 4.0, None, polls_count=True, max_in_flight=10)
    assert limits.requests == 40 and limits.window_s == pytest.approx(4.0 * 1.25)


def test_later_429s_lower_an_adopted_cap_or_count_polls_once_one_is_refused():
    adopted = Limits(30, 6.0, 10, polls_count=False)
    answered = steady(120, 0.1)  # 60 in any 6 s window, creates and polls alike
    lowered = infer_rate_limit(answered, 12.0, 1.0, polls_count=False, max_in_flight=10, adopted=adopted)
    assert (lowered.requests, lowered.window_s, lowered.polls_count) == (27, 6.0, False)
    counted = infer_rate_limit(answered, 12.0, 1.0, polls_count=True, max_in_flight=10, adopted=adopted)
    assert (counted.requests, counted.window_s, counted.polls_count) == (61, 6.0, True)


def test_most_in_window_counts_a_closed_interval():
    assert most_in_window([0.0, 1.0, 2.0, 2.5, 3.0], 1.0) == 3
    assert most_in_window([], 5.0) == 0


def test_refused_before_anything_was_answered_starts_from_one_request_per_pause():
    limits = infer_rate_limit([], 0.5, 2.0, polls_count=True, max_in_flight=10)
    assert (limits.requests, limits.window_s) == (1, 2.0)


async def test_an_uncapped_budget_admits_at_once_then_keeps_to_an_adopted_cap():
    budget = LocalBudget(Limits.auto(max_in_flight=10), guard_s=0.0)
    for _ in range(50):
        (await budget.take_request("poll")).settle()
    open_create = await budget.take_request("create")  # still unanswered when the cap is adopted
    now = time.monotonic()
    budget.adopt(Limits(3, 0.2, 10, polls_count=True), answered=[now - 0.1])
    (await budget.take_request("poll")).settle()  # the third request of the window
    waiting = asyncio.create_task(budget.take_request("create"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the answered one and the open one still fill the window
    open_create.settle()
    (await asyncio.wait_for(waiting, 1.0)).settle()
    assert time.monotonic() - now >= 0.1  # admitted once the request answered before the cap left it
    await budget.aclose()


async def test_an_adopted_cap_with_polls_free_lets_polls_pass_and_paces_creates():
    budget = LocalBudget(Limits.auto(), guard_s=0.0)
    budget.adopt(Limits(2, 0.2, 10, polls_count=False))
    for _ in range(20):
        (await budget.take_request("poll")).settle()
    first = [await budget.take_request("create") for _ in range(2)]
    for receipt in first:
        receipt.settle()
    third = asyncio.create_task(budget.take_request("create"))
    await asyncio.sleep(0.05)
    assert not third.done()
    (await asyncio.wait_for(third, 1.0)).settle()
    await budget.aclose()


async def start(gate: SlotGate, count: int) -> None:
    """`count` jobs enter and their creates are taken."""
    for _ in range(count):
        await gate.enter()
        gate.accepted()


async def test_the_gate_lowers_to_what_the_api_runs_for_us_and_waits_for_ours_to_finish():
    gate = SlotGate(4)
    await start(gate, 3)
    await gate.enter()
    gate.refused(None, 0.01, 0.1)  # the fourth create was refused: three of ours run
    gate.leave()
    assert (gate.cap, gate.active, gate.running) == (3, 3, 3)
    waiting = asyncio.create_task(gate.enter(first=True))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # no timer opens it: only one of ours finishing does
    gate.finished()
    gate.leave(running=True)
    await asyncio.wait_for(waiting, 1.0)
    assert (gate.active, gate.running, gate.idle_refusals, gate.cap) == (3, 2, 0, 3)


async def test_refusals_that_come_together_lower_the_gate_once():
    gate = SlotGate(10)
    await start(gate, 7)
    for _ in range(3):  # three creates sent at once, all refused: the organisation runs 7 of ours
        await gate.enter()
    for _ in range(3):
        gate.refused(None, 0.01, 0.1)
        gate.leave()
    assert (gate.cap, gate.active) == (7, 7)


async def test_the_gate_probes_one_higher_after_enough_finishes_and_backs_off_when_refused():
    gate = SlotGate(4)
    await start(gate, 3)
    await gate.enter()
    gate.refused(None, 0.01, 0.1)
    gate.leave()
    gate.finished()
    assert gate.cap == 3  # nobody waits for room: a finish then proves nothing
    waiting = asyncio.create_task(gate.enter(first=True))
    await asyncio.sleep(0)
    for _ in range(3):  # a cap of 3 times a patience of 1
        gate.finished()
    await asyncio.wait_for(waiting, 1.0)
    assert gate.cap == 4 and gate.active == 4  # a probe
    gate.refused(None, 0.01, 0.1)  # it failed: the next probe waits twice as many finishes
    gate.leave()
    assert gate.cap == 3
    waiting = asyncio.create_task(gate.enter(first=True))
    await asyncio.sleep(0)
    for _ in range(5):
        gate.finished()
    assert gate.cap == 3
    gate.finished()
    await asyncio.wait_for(waiting, 1.0)
    gate.accepted()  # the probe held: the organisation freed a slot
    assert gate.cap == 4 and not gate.lowered and gate.running == 4


async def test_while_creates_are_free_a_waiting_create_goes_ahead_as_a_probe_paced_by_our_finishes():
    now = [0.0]
    gate = SlotGate(10, clock=lambda: now[0], probes_per_finish=4.0)
    gate.room_probes = True
    await start(gate, 7)
    await gate.enter()
    gate.refused(None, 0.01, 0.1)  # the organisation runs 7 of ours
    gate.leave()
    for _ in range(2):  # two of ours seen to end 0.2 s apart, and their places taken again
        now[0] += 0.2
        gate.leave(running=True)
        assert not await gate.enter()
        gate.accepted()
    waiting = asyncio.create_task(gate.enter(first=True))
    assert await asyncio.wait_for(waiting, 1.0)  # let in as a probe, 0.05 s later (0.2 s / 4)
    assert (gate.active, gate.cap) == (8, 7)
    gate.refused(None, 0.01, 0.1, probe=True)  # nothing ended yet: the cap stays, nothing closes
    gate.leave()
    assert (gate.active, gate.cap, gate.idle_refusals) == (7, 7, 0)
    assert await asyncio.wait_for(gate.enter(first=True), 1.0)  # the next probe
    gate.accepted(probe=True)  # one of ours ended unseen: the probe runs in its place
    assert (gate.running, gate.unseen, gate.cap) == (8, 1, 7)
    third = asyncio.create_task(gate.enter(first=True))
    fourth = asyncio.create_task(gate.enter())  # behind it
    assert await asyncio.wait_for(third, 1.0)  # more of ours may have ended unseen: probing goes on
    await asyncio.sleep(0.1)
    assert not fourth.done()  # one probe out at a time
    gate.refused(None, 0.01, 0.1, probe=True)
    gate.leave()
    assert await asyncio.wait_for(fourth, 1.0)
    gate.refused(None, 0.01, 0.1, probe=True)
    gate.leave()
    gate.leave(running=True)  # the poll sees the one that ended: its place was taken already
    assert (gate.active, gate.running, gate.unseen, gate.cap) == (7, 7, 0, 7)
    assert gate.active == gate.cap + gate.unseen  # no room opened: the API runs 7 of ours


async def test_without_room_probes_a_waiting_create_waits_for_a_finish():
    now = [0.0]
    gate = SlotGate(10, clock=lambda: now[0])
    await start(gate, 7)
    await gate.enter()
    gate.refused(None, 0.01, 0.1)
    gate.leave()
    for _ in range(2):
        now[0] += 0.2
        gate.leave(running=True)
        await gate.enter()
        gate.accepted()
    waiting = asyncio.create_task(gate.enter(first=True))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    waiting.cancel()


async def test_with_nothing_of_ours_in_flight_the_gate_closes_for_retry_after_or_a_doubling_backoff():
    gate = SlotGate(2)
    await gate.enter()
    started = time.monotonic()
    gate.refused(None, 0.02, 1.0)
    gate.leave()
    await gate.enter(first=True)
    first_wait = time.monotonic() - started
    gate.refused(None, 0.02, 1.0)
    gate.leave()
    await gate.enter(first=True)
    second_wait = time.monotonic() - started - first_wait
    gate.refused(0.005, 0.02, 1.0)  # a Retry-After wins over the backoff
    gate.leave()
    before = time.monotonic()
    await gate.enter(first=True)
    assert first_wait >= 0.02 and second_wait >= 0.04 and time.monotonic() - before < 0.03
    assert gate.idle_refusals == 3 and gate.cap == 1


async def test_a_cancelled_gate_waiter_passes_its_room_on():
    gate = SlotGate(1)
    await gate.enter()
    waiter = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    waiter.cancel()
    gate.leave()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(gate.enter(), 1.0)
    assert gate.active == 1
