"""The local request budget: sliding-log admission, uncounted polls, shared pauses, in-flight slots.

Windows are tenths of a second so the tests run in well under a second each; admission times are read from
the budget's own clock, and the assertions are about counts inside windows, not about speed.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget

WINDOW = 0.2


def most_in_any_window(times: list[float], window: float) -> int:
    """The largest number of times falling in one closed interval of length `window`."""
    times = sorted(times)
    best = 0
    start = 0
    for end, t in enumerate(times):
        while t - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def admit_all(budget: LocalBudget, kinds: list[str]) -> list[float]:
    async def one(kind: str) -> float:
        receipt = await budget.take_request(kind)
        admitted = time.monotonic()
        receipt.settle()
        return admitted

    return list(await asyncio.gather(*(one(kind) for kind in kinds)))


async def test_never_more_than_n_in_any_trailing_window():
    budget = LocalBudget(Limits(requests=5, window_s=WINDOW))
    start = time.monotonic()
    times = await admit_all(budget, ["create"] * 16)
    assert most_in_any_window(times, WINDOW) == 5
    # A bucket with a burst of 5 would let 10 through within the first window; the log makes the 6th wait.
    assert sorted(times)[5] - start >= WINDOW
    await budget.aclose()


async def test_the_guard_keeps_a_margin_beyond_the_window():
    budget = LocalBudget(Limits(requests=3, window_s=WINDOW), guard_s=0.05)
    times = sorted(await admit_all(budget, ["poll"] * 6))
    assert times[3] - times[0] >= WINDOW + 0.05
    await budget.aclose()


async def test_an_entry_counts_from_its_settle_not_its_admission():
    # The server stamps on arrival, somewhere between admission and answer: a slow request must not free
    # its place in the window before a full window has passed since its answer.
    budget = LocalBudget(Limits(requests=2, window_s=WINDOW), guard_s=0.0)
    slow = await budget.take_request("create")
    fast = await budget.take_request("create")
    fast.settle()
    waiting = asyncio.create_task(budget.take_request("poll"))
    await asyncio.sleep(WINDOW / 2)
    settled_at = time.monotonic()
    slow.settle()
    (await waiting).settle()
    assert time.monotonic() - settled_at < WINDOW  # freed when the fast one's window ended
    third = asyncio.create_task(budget.take_request("poll"))
    await third
    assert time.monotonic() - settled_at >= WINDOW  # the slow one held its place a window past its settle
    await budget.aclose()


async def test_a_receipt_never_settled_is_dated_after_unsettled_s():
    budget = LocalBudget(Limits(requests=1, window_s=0.05), guard_s=0.0, unsettled_s=0.05)
    started = time.monotonic()
    await budget.take_request("create")  # the caller forgets to settle
    await budget.take_request("create")
    assert time.monotonic() - started >= 0.1
    await budget.aclose()


async def test_uncounted_polls_pass_while_creates_wait_for_the_window():
    budget = LocalBudget(Limits(requests=2, window_s=WINDOW, polls_count=False))
    await admit_all(budget, ["create", "create"])
    started = time.monotonic()
    blocked_create = asyncio.create_task(budget.take_request("create"))
    await admit_all(budget, ["poll"] * 20)
    assert time.monotonic() - started < WINDOW / 2
    assert not blocked_create.done()
    await blocked_create
    assert budget.stats().requests == {"create": 3, "poll": 20}
    await budget.aclose()


async def test_polls_are_served_before_creates_when_both_wait():
    budget = LocalBudget(Limits(requests=1, window_s=0.05))
    (await budget.take_request("create")).settle()
    order: list[str] = []

    async def take(kind: str) -> None:
        (await budget.take_request(kind)).settle()
        order.append(kind)

    creates = [asyncio.create_task(take("create")) for _ in range(2)]
    await asyncio.sleep(0)  # let the creates queue first
    polls = [asyncio.create_task(take("poll")) for _ in range(2)]
    await asyncio.gather(*creates, *polls)
    assert order == ["poll", "poll", "create", "create"]
    await budget.aclose()


async def test_a_throttle_with_retry_after_pauses_every_caller_even_uncounted_polls():
    budget = LocalBudget(Limits(requests=100, window_s=1.0, polls_count=False))
    await budget.on_throttled(0.15, "poll")
    started = time.monotonic()
    times = await admit_all(budget, ["poll", "create", "cancel"])
    assert min(times) - started >= 0.14
    assert budget.stats().throttled == 1
    await budget.aclose()


async def test_a_create_429_pauses_creates_only_while_polls_are_not_known_to_count():
    budget = LocalBudget(Limits.auto())
    await budget.on_throttled(0.15, "create")
    started = time.monotonic()
    create = asyncio.create_task(budget.take_request("create"))
    await asyncio.sleep(0)
    (await budget.take_request("poll")).settle()  # admitted during the create's pause
    assert time.monotonic() - started < 0.1
    assert not create.done()
    (await asyncio.wait_for(create, 1.0)).settle()
    assert time.monotonic() - started >= 0.14
    await budget.aclose()


async def test_a_create_429_under_a_creates_only_cap_lets_uncounted_polls_pass():
    budget = LocalBudget(Limits(requests=100, window_s=1.0, polls_count=False))
    await budget.on_throttled(0.15, "create")
    started = time.monotonic()
    (await budget.take_request("poll")).settle()
    assert time.monotonic() - started < 0.1
    (await budget.take_request("create")).settle()
    assert time.monotonic() - started >= 0.14
    await budget.aclose()


@pytest.mark.parametrize("limits", [Limits.auto(), Limits(requests=100, window_s=1.0, polls_count=True)])
async def test_a_poll_429_pauses_polls_and_creates(limits):
    budget = LocalBudget(limits)
    await budget.on_throttled(0.15, "poll")
    started = time.monotonic()
    times = await admit_all(budget, ["poll", "create"])
    assert min(times) - started >= 0.14
    await budget.aclose()


async def test_a_create_429_pauses_polls_too_once_they_count_toward_the_cap():
    budget = LocalBudget(Limits(requests=100, window_s=1.0, polls_count=True))
    await budget.on_throttled(0.15, "create")
    started = time.monotonic()
    (await budget.take_request("poll")).settle()
    assert time.monotonic() - started >= 0.14
    await budget.aclose()


async def test_a_throttle_without_retry_after_backs_off_doubling():
    clock_now = [100.0]
    budget = LocalBudget(Limits(requests=10, window_s=1.0), clock=lambda: clock_now[0], max_pause_s=1.0)
    pauses = []
    for _ in range(5):
        await budget.on_throttled(None, "poll")
        pauses.append(round(budget.stats().paused_for_s, 3))
        clock_now[0] += budget.stats().paused_for_s
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.0]
    clock_now[0] += 5.0  # a quiet spell resets the backoff
    await budget.on_throttled(None, "poll")
    assert round(budget.stats().paused_for_s, 3) == 0.1
    await budget.aclose()


async def test_slots_bound_the_predictions_in_flight():
    budget = LocalBudget(Limits(max_in_flight=3))
    held = 0
    most = 0

    async def job() -> None:
        nonlocal held, most
        token = await budget.take_slot()
        held += 1
        most = max(most, held)
        await asyncio.sleep(0.001)
        held -= 1
        await budget.release_slot(token)

    await asyncio.gather(*(job() for _ in range(20)))
    assert most == 3
    assert budget.stats().in_flight == 0


async def test_releasing_twice_or_cancelling_a_waiter_leaks_no_slot():
    budget = LocalBudget(Limits(max_in_flight=1))
    token = await budget.take_slot()
    waiter = asyncio.create_task(budget.take_slot())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await budget.release_slot(token)
    await budget.release_slot(token)
    first = await budget.take_slot()
    second = asyncio.create_task(budget.take_slot())
    await asyncio.sleep(0)
    assert not second.done()  # still one slot: the double release did not mint a second
    await budget.release_slot(first)
    await second


async def test_unknown_request_kinds_are_refused():
    with pytest.raises(ValueError, match="unknown request kind"):
        await LocalBudget(Limits()).take_request("upload")


async def test_sends_are_paced_in_bursts_instead_of_a_window_at_once():
    # 12 per 0.24 s with bursts of 3: never more than 3 in any 0.06 s, so no long starvation after a burst.
    budget = LocalBudget(Limits(requests=12, window_s=0.24, max_in_flight=1), burst=3)
    times = await admit_all(budget, ["poll"] * 12)
    assert most_in_any_window(times, 0.055) <= 3
    assert most_in_any_window(times, 0.24) <= 12
    await budget.aclose()
