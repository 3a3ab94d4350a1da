"""Small asyncio helpers the stages share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until `event` is set or `timeout_s` passes; True when it was set.

    `asyncio.timeout` rather than `asyncio.wait_for`: on Python 3.11, a cancel arriving as the event is set
    is swallowed by `wait_for` (the caller goes on as if never cancelled, and whoever cancelled it waits
    forever); `timeout` keeps the outer cancel.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


def in_background(coroutine: Coroutine[Any, Any, T], tasks: set[asyncio.Task[T]]) -> asyncio.Task[T]:
    """Run `coroutine` as a task held in `tasks` until it ends (the loop keeps only a weak reference)."""
    task = asyncio.get_running_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def wait_ended(futures: Collection[asyncio.Future[Any]], timeout_s: float) -> None:
    """Wait until every one of `futures` has ended, or `timeout_s` has passed."""
    if futures:
        await asyncio.wait(list(futures), timeout=timeout_s)


async def cancellable(awaitable: Awaitable[T], unfinished: set[asyncio.Future[Any]]) -> T:
    """Await `awaitable` run as its own task, so a cancel of the caller always raises here.

    A library call can swallow a cancel that arrives as one of its inner steps finishes: Python 3.11's
    `asyncio.wait_for` returns the step's result instead (CPython gh-86296), and redis-py wraps its socket
    writes in one. The caller would go on as if never cancelled, and whoever cancelled it wait forever.
    Shielded, the call runs on to its end; cancelled before then, it stays in `unfinished` until it ends,
    for what must follow it (handing back what it may yet take, closing the connection it holds).
    """
    call = asyncio.ensure_future(awaitable)
    try:
        return await asyncio.shield(call)
    except asyncio.CancelledError:
        if not call.done():
            unfinished.add(call)
            call.add_done_callback(_forget(unfinished))
        raise


def _forget(unfinished: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    def done(call: asyncio.Future[Any]) -> None:
        unfinished.discard(call)
        if not call.cancelled():
            call.exception()  # no one awaits it: its error is the caller's cleanup's, not asyncio's to report

    return done


async def as_async_iterator(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    """Iterate plain and async iterables alike."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
