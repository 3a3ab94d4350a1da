"""Small asyncio helpers the stages share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TypeVar

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


async def as_async_iterator(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    """Iterate plain and async iterables alike."""
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
