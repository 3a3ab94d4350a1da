"""The Redis-backed budget against a real redis-server on loopback: window, slots, leases, pause, failures."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from promptgrid.errors import QuotaUnavailable
from promptgrid.quota.base import Limits
from promptgrid.quota.factory import check_quota_reachable
from promptgrid.quota.shared import RedisBudget
from tests.support.processes import free_port, running_redis_server

pytestmark = [
    pytest.mark.integration,  # a real redis-server
    pytest.mark.needs("redis-server"),
    pytest.mark.timeout(120),  # a hung Redis call fails its own test in two minutes, not the run's five
]


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis_server() as url:
        yield url


@pytest.fixture
def namespace(request) -> str:
    # One namespace per test: tests share the server, never the quota.
    return request.node.name


def max_in_any_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


async def test_window_holds_across_budgets(redis_url, namespace):
    limits = Limits(requests=5, window_s=0.3, max_in_flight=10)
    budgets = [RedisBudget(limits, redis_url, namespace) for _ in range(3)]
    admitted: list[float] = []

    async def worker(budget: RedisBudget) -> None:
        for _ in range(5):
            receipt = await budget.take_request("create")
            admitted.append(time.monotonic())
            receipt.settle()  # the answer is in at once

    await asyncio.wait_for(asyncio.gather(*(worker(b) for b in budgets)), 10)
    for budget in budgets:
        await budget.aclose()
    assert len(admitted) == 15
    assert max_in_any_window(admitted, 0.3) <= 5
    # Fifteen requests at five per window need at least two full windows after the first burst.
    assert admitted[-1] - min(admitted) >= 0.6


async def test_requests_are_dated_at_their_answer(redis_url, namespace):
    limits = Limits(requests=2, window_s=0.3, max_in_flight=10)
    budget = RedisBudget(limits, redis_url, namespace, unsettled_s=2.0)
    started = time.monotonic()
    first = await budget.take_request("create")
    await budget.take_request("create")  # never settled: counts as dated 2 s after admission
    await asyncio.sleep(0.1)  # the first answer takes 0.1 s to arrive
    first.settle()
    first.settle()  # twice is harmless
    # Settled, the first entry leaves 0.3 s after its answer: well before the 2 s it would count unsettled,
    await asyncio.wait_for(budget.take_request("create"), 1.5)
    # and not 0.3 s after its admission.
    assert time.monotonic() - started >= 0.38
    await budget.aclose()


async def test_polls_pass_when_they_do_not_count(redis_url, namespace):
    limits = Limits(requests=2, window_s=60.0, max_in_flight=10, polls_count=False)
    budget = RedisBudget(limits, redis_url, namespace)
    await budget.take_request("create")
    await budget.take_request("create")
    polls = await asyncio.wait_for(asyncio.gather(*(budget.take_request("poll") for _ in range(20))), 2)
    assert polls == [None] * 20  # nothing to settle
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(budget.take_request("create"), 0.2)
    await budget.aclose()


async def test_namespaces_keep_quotas_apart(redis_url, namespace):
    limits = Limits(requests=1, window_s=60.0, max_in_flight=1)
    first = RedisBudget(limits, redis_url, namespace + "-a")
    second = RedisBudget(limits, redis_url, namespace + "-b")
    await first.take_request("create")
    await asyncio.wait_for(second.take_request("create"), 2)
    await asyncio.wait_for(second.take_slot(), 2)
    await asyncio.wait_for(first.take_slot(), 2)
    await first.aclose()
    await second.aclose()


async def test_slots_hold_across_budgets_and_waiters_wake_on_release(redis_url, namespace):
    limits = Limits(requests=1000, window_s=1.0, max_in_flight=3)
    # A long recheck: only the release announcement can wake waiters in time for the deadline below.
    budgets = [RedisBudget(limits, redis_url, namespace, recheck_s=30.0) for _ in range(4)]
    running, most = 0, 0

    async def job(budget: RedisBudget) -> None:
        nonlocal running, most
        token = await budget.take_slot()
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)  # stands in for a prediction being generated
        running -= 1
        await budget.release_slot(token)

    await asyncio.wait_for(asyncio.gather(*(job(budgets[i % 4]) for i in range(24))), 5)
    for budget in budgets:
        await budget.aclose()
    assert most == 3


async def test_killed_holders_slots_come_back_after_the_lease(redis_url, namespace):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, redis_url, namespace],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()
        holder.wait(timeout=10)
        holder.stdout.close()
    limits = Limits(requests=1000, window_s=1.0, max_in_flight=2)
    budget = RedisBudget(limits, redis_url, namespace, lease_s=0.5, recheck_s=0.05)
    started = time.monotonic()
    tokens = await asyncio.wait_for(asyncio.gather(budget.take_slot(), budget.take_slot()), 5)
    assert len(set(tokens)) == 2
    # The dead holder's two leases (0.5 s, renewed until the kill) blocked both slots for a while.
    assert time.monotonic() - started > 0.1
    await budget.aclose()


HOLDER_SCRIPT = """
import asyncio, sys, time
from promptgrid.quota.base import Limits
from promptgrid.quota.shared import RedisBudget

async def main():
    budget = RedisBudget(Limits(requests=1000, window_s=1.0, max_in_flight=2), sys.argv[1], sys.argv[2],
                         lease_s=0.5)
    await budget.take_slot()
    await budget.take_slot()
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_held_slots_are_renewed_past_the_lease(redis_url, namespace):
    limits = Limits(requests=1000, window_s=1.0, max_in_flight=1)
    holder = RedisBudget(limits, redis_url, namespace, lease_s=0.15)
    other = RedisBudget(limits, redis_url, namespace, lease_s=0.15, recheck_s=0.02)
    token = await asyncio.wait_for(holder.take_slot(), 2)
    waiting = asyncio.ensure_future(other.take_slot())
    done, _ = await asyncio.wait({waiting}, timeout=0.6)  # four leases long
    assert not done, "the slot was taken while its holder renewed it"
    # Not `wait_for`: it waits as long as the cancelled call takes to unwind, and a Redis call cancelled
    # mid-read has been seen to hang there; the test's own bound names this line instead.
    waiting.cancel()
    await asyncio.wait({waiting}, timeout=2)
    assert waiting.done(), "a cancelled take_slot did not unwind within 2 s"
    await asyncio.wait_for(holder.release_slot(token), 2)
    await asyncio.wait_for(other.take_slot(), 2)
    for budget in (holder, other):
        await asyncio.wait_for(budget.aclose(), 5)


async def test_a_cancel_the_redis_client_swallows_still_ends_a_slot_wait(redis_url, namespace):
    # redis-py wraps socket writes in `asyncio.wait_for`, which on Python 3.11 returns the write's result
    # when a cancel arrives as it finishes (CPython gh-86296): the wait went on as if never cancelled, and
    # a run stopping its workers hung on it. Here every slot call answers in spite of a cancel, as then.
    limits = Limits(requests=1000, window_s=1.0, max_in_flight=1)
    holder = RedisBudget(limits, redis_url, namespace)
    waiter = RedisBudget(limits, redis_url, namespace, recheck_s=0.02)
    script, asked = waiter._take_slot, asyncio.Event()

    async def answers_through_a_cancel(**call) -> int:
        answer = asyncio.ensure_future(script(**call))
        asked.set()
        try:
            return await asyncio.shield(answer)
        except asyncio.CancelledError:
            return await answer

    waiter._take_slot = answers_through_a_cancel  # type: ignore[assignment]
    token = await asyncio.wait_for(holder.take_slot(), 2)
    waiting = asyncio.ensure_future(waiter.take_slot())
    await asyncio.wait_for(asked.wait(), 2)
    waiting.cancel()
    await asyncio.wait({waiting}, timeout=2)
    assert waiting.done() and waiting.cancelled(), "the cancelled slot wait went on"
    await holder.release_slot(token)
    # Whatever the last call was granted is handed back once it has answered: the slot is free again.
    again = await asyncio.wait_for(holder.take_slot(), 2)
    await holder.release_slot(again)
    for budget in (holder, waiter):
        await asyncio.wait_for(budget.aclose(), 5)


async def test_a_429_pauses_every_budget(redis_url, namespace):
    limits = Limits(requests=1000, window_s=1.0, max_in_flight=10)
    throttled = RedisBudget(limits, redis_url, namespace)
    bystander = RedisBudget(limits, redis_url, namespace)
    await throttled.on_throttled(0.3, "poll")
    started = time.monotonic()
    await asyncio.wait_for(bystander.take_request("poll"), 5)
    assert time.monotonic() - started >= 0.25
    await throttled.aclose()
    await bystander.aclose()


async def test_a_create_429_pauses_every_budgets_creates_while_polls_go_on(redis_url, namespace):
    throttled = RedisBudget(Limits.auto(), redis_url, namespace)
    bystander = RedisBudget(Limits.auto(), redis_url, namespace)
    await throttled.on_throttled(0.4, "create")
    started = time.monotonic()
    await asyncio.wait_for(bystander.take_request("poll"), 5)
    assert time.monotonic() - started < 0.2  # polls go on through a create's pause
    assert await window_entries(redis_url, namespace) == 0  # no cap: nothing entered
    await asyncio.wait_for(bystander.take_request("create"), 5)
    assert time.monotonic() - started >= 0.35
    await throttled.on_throttled(0.3, "poll")  # a poll's 429 holds every kind
    started = time.monotonic()
    await asyncio.wait_for(bystander.take_request("poll"), 5)
    assert time.monotonic() - started >= 0.25
    await throttled.aclose()
    await bystander.aclose()


async def test_a_create_429_pauses_polls_too_once_they_count_toward_the_cap(redis_url, namespace):
    limits = Limits(requests=1000, window_s=1.0, max_in_flight=10, polls_count=True)
    throttled = RedisBudget(limits, redis_url, namespace)
    await throttled.on_throttled(0.3, "create")
    started = time.monotonic()
    (await asyncio.wait_for(throttled.take_request("poll"), 5)).settle()
    assert time.monotonic() - started >= 0.25
    await throttled.aclose()


async def test_unreachable_redis_fails_loudly_without_the_password():
    url = f"redis://user:hunter2secret@127.0.0.1:{free_port()}/0"
    budget = RedisBudget(Limits(), url)
    with pytest.raises(QuotaUnavailable) as caught:
        await budget.take_request("create")
    assert "hunter2secret" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)
    await budget.aclose()


async def test_a_waiter_cancelled_mid_grant_leaves_no_slot_behind(redis_url, namespace):
    limits = Limits(requests=1000, window_s=1.0, max_in_flight=1)
    budget = RedisBudget(limits, redis_url, namespace, recheck_s=0.02)
    other = RedisBudget(limits, redis_url, namespace, recheck_s=0.02)
    admin = redis.asyncio.Redis.from_url(redis_url)
    # Redis holds the grant while paused and the waiter is cancelled before any answer: whether Redis then
    # grants the slot (and the budget hands it back) or never runs the script, the slot must not stay taken.
    await admin.execute_command("CLIENT", "PAUSE", "300", "WRITE")
    waiter = asyncio.create_task(budget.take_slot())
    await asyncio.sleep(0.1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    token = await asyncio.wait_for(other.take_slot(), 2)  # far shorter than the 30 s lease
    await other.release_slot(token)
    for closing in (budget, other):
        await closing.aclose()
    await admin.aclose()


def test_an_unreachable_quota_is_found_before_anything_is_sent_naming_it_without_the_password():
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(QuotaUnavailable) as caught:
        check_quota_reachable(url)
    assert time.monotonic() - started < 15
    message = str(caught.value)
    assert "redis://***@127.0.0.1:" in message and "hunter2secret" not in message
    assert "redis-server --port 6379 --save ''" in message and "nothing was sent" in message
    check_quota_reachable(None)  # no shared quota: nothing to check


async def test_a_quota_lost_mid_run_fails_fast_and_gives_slots_back_without_raising(caplog):
    limits = Limits(requests=None, window_s=1.0, max_in_flight=2)
    with running_redis_server() as url:
        budget = RedisBudget(limits, url, "lost", lease_s=0.6)
        await budget.check()
        held = await budget.take_slot()
    # The server is gone: every call fails within the timeouts, and nothing is left for asyncio to report.
    started = time.monotonic()
    with pytest.raises(QuotaUnavailable):
        await budget.take_slot()
    with pytest.raises(QuotaUnavailable):
        await budget.check()
    await budget.release_slot(held)  # in a `finally`: must not hide the error on its way out
    cancelled = asyncio.create_task(budget.take_slot())
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises((asyncio.CancelledError, QuotaUnavailable)):
        await cancelled
    await budget.aclose()
    assert time.monotonic() - started < 15
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def window_entries(redis_url: str, namespace: str) -> int:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return int(await client.zcard(f"promptgrid:quota:{namespace}:window"))
    finally:
        await client.aclose()


async def test_a_cap_adopted_counts_the_requests_answered_before_it(redis_url, namespace):
    budget = RedisBudget(Limits.auto(max_in_flight=10), redis_url, namespace)
    for _ in range(3):
        (await budget.take_request("create")).settle()  # answered (the times below)
    assert await window_entries(redis_url, namespace) == 0  # no cap: nothing entered
    now = time.monotonic()
    budget.adopt(Limits(5, 30.0, 10), answered=[now - 0.3, now - 0.2, now - 0.1])
    # The API counted those three: only two more fit its window, not a full window's five.
    for _ in range(2):
        (await asyncio.wait_for(budget.take_request("create"), 2)).settle()
    assert await window_entries(redis_url, namespace) == 5
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(budget.take_request("create"), 0.3)
    await budget.aclose()


async def test_requests_answered_before_the_window_are_not_entered(redis_url, namespace):
    budget = RedisBudget(Limits.auto(max_in_flight=10), redis_url, namespace)
    now = time.monotonic()
    budget.adopt(Limits(3, 30.0, 10), answered=[now - 45.0, now - 31.0, now - 0.1])
    for _ in range(2):
        await asyncio.wait_for(budget.take_request("poll"), 2)
    assert await window_entries(redis_url, namespace) == 3
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(budget.take_request("poll"), 0.3)
    await budget.aclose()


async def test_requests_entered_at_adoption_are_dated_at_their_answers(redis_url, namespace):
    budget = RedisBudget(Limits.auto(max_in_flight=10), redis_url, namespace)
    now = time.monotonic()
    budget.adopt(Limits(5, 30.0, 10), answered=[now - 10.0, now - 20.0])
    await budget.take_request("create")
    client = redis.asyncio.Redis.from_url(redis_url)
    seconds, micros = await client.time()
    entries = await client.zrange(f"promptgrid:quota:{namespace}:window", 0, 1, withscores=True)
    await client.aclose()
    ages = [seconds + micros / 1e6 - score / 1e6 for _, score in entries]
    # Dated on Redis' clock where they were answered, so they leave the window as it slides past them.
    assert 20.0 <= ages[0] < 25.0 and 10.0 <= ages[1] < 15.0
    await budget.aclose()


async def test_another_process_sees_the_requests_entered_at_adoption(redis_url, namespace):
    adopter = RedisBudget(Limits.auto(max_in_flight=10), redis_url, namespace)
    now = time.monotonic()
    adopter.adopt(Limits(4, 30.0, 10), answered=[now - 0.2, now - 0.1])
    (await adopter.take_request("create")).settle()  # entered before this one
    other = RedisBudget(Limits(4, 30.0, 10), redis_url, namespace)
    await asyncio.wait_for(other.take_request("create"), 2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other.take_request("create"), 0.3)
    for budget in (adopter, other):
        await budget.aclose()


async def test_a_lowered_cap_enters_nothing_again_and_a_request_held_by_a_pause_counts(redis_url, namespace):
    budget = RedisBudget(Limits.auto(max_in_flight=10), redis_url, namespace, guard_s=0.005)
    await budget.on_throttled(0.3, "poll")  # the 429 that shows the cap pauses every kind
    held = asyncio.create_task(budget.take_request("create"))
    await asyncio.sleep(0.05)
    budget.adopt(Limits(10, 30.0, 10), answered=[time.monotonic() - 0.1])
    receipt = await asyncio.wait_for(held, 2)
    assert receipt is not None  # sent under the cap: counted
    receipt.settle()
    await asyncio.sleep(0.05)  # the settle is sent in the background
    # A later 429 lowers the cap; the engine's answers are the same two requests, not two more.
    budget.adopt(Limits(9, 30.0, 10), answered=[time.monotonic() - 0.3, time.monotonic() - 0.05])
    await asyncio.wait_for(budget.take_request("create"), 2)
    assert await window_entries(redis_url, namespace) == 3  # one answered before the cap, two sent under it
    await budget.aclose()


async def test_polls_found_to_count_under_a_creates_only_cap_are_entered_once(redis_url, namespace):
    budget = RedisBudget(Limits.auto(max_in_flight=10), redis_url, namespace, guard_s=0.005)
    budget.adopt(Limits(10, 30.0, 10, polls_count=False), answered=[time.monotonic() - 0.2])
    (await budget.take_request("create")).settle()
    assert await budget.take_request("poll") is None  # not counted under this cap
    await asyncio.sleep(0.05)  # the settle is sent in the background
    now = time.monotonic()
    # A poll's 429 shows polls count: two creates and the poll were answered in the window.
    budget.adopt(Limits(10, 30.0, 10, polls_count=True), answered=[now - 0.25, now - 0.06, now - 0.05])
    await asyncio.wait_for(budget.take_request("poll"), 2)
    assert await window_entries(redis_url, namespace) == 4  # those three and this one: the creates once
    await budget.aclose()


async def test_a_cap_adopted_counts_the_requests_still_unanswered(redis_url, namespace):
    budget = RedisBudget(Limits.auto(max_in_flight=10), redis_url, namespace)
    unanswered = await budget.take_request("create")
    answered = await budget.take_request("poll")
    answered.settle()  # answered before the cap: the engine tells adopt when (here: not within the window)
    budget.adopt(Limits(3, 30.0, 10), answered=[])
    for _ in range(2):
        await asyncio.wait_for(budget.take_request("poll"), 2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(budget.take_request("poll"), 0.3)
    unanswered.settle()  # dated at its answer now, no longer a window after its entry
    await asyncio.sleep(0.05)  # the settle is sent in the background
    client = redis.asyncio.Redis.from_url(redis_url)
    seconds, micros = await client.time()
    dated = await client.zscore(f"promptgrid:quota:{namespace}:window", unanswered.member)
    await client.aclose()
    assert dated <= seconds * 1e6 + micros  # dated at its answer, not `unsettled_s` on
    await budget.aclose()
