"""The asyncio helpers: a cancel reaches the caller even through a call that swallows it."""

from __future__ import annotations

import asyncio
import gc

import pytest

from promptgrid.aio import cancellable, wait_ended


async def answers_even_when_cancelled(started: asyncio.Event) -> str:
    """A library call as Python 3.11's `asyncio.wait_for` can behave: a cancel arriving as its inner step
    finishes is swallowed and the step's answer returned (CPython gh-86296)."""
    started.set()
    try:
        await asyncio.sleep(0.2)  # the step
    except asyncio.CancelledError:
        return "answered though cancelled"
    return "answered"


async def test_a_plain_await_of_such_a_call_loses_the_cancel():
    # What `cancellable` is for: without it the caller goes on as if it had never been cancelled.
    started = asyncio.Event()
    caller = asyncio.create_task(answers_even_when_cancelled(started))
    await started.wait()
    caller.cancel()
    assert await caller == "answered though cancelled"


async def test_a_cancel_reaches_the_caller_and_the_call_runs_on_to_its_end():
    started, unfinished = asyncio.Event(), set()

    async def caller() -> str:
        return await cancellable(answers_even_when_cancelled(started), unfinished)

    task = asyncio.create_task(caller())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (call,) = unfinished  # not cancelled with its caller: it runs on in the background, kept until it ends
    await wait_ended(unfinished, 5)
    assert not unfinished and call.result() == "answered"


async def test_an_error_of_a_call_left_running_is_not_reported_as_never_retrieved(caplog):
    started, unfinished = asyncio.Event(), set()

    async def fails_later() -> None:
        started.set()
        await asyncio.sleep(0.05)
        raise OSError("connection reset")

    task = asyncio.create_task(cancellable(fails_later(), unfinished))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_ended(unfinished, 5)
    del task
    gc.collect()
    assert "exception was never retrieved" not in caplog.text


async def test_a_call_that_ends_first_answers_the_caller():
    assert await cancellable(asyncio.sleep(0, "answer"), set()) == "answer"
    with pytest.raises(OSError, match="refused"):
        await cancellable(_raise(OSError("refused")), set())


async def _raise(error: Exception) -> None:
    raise error
