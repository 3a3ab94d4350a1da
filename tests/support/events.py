"""Job events from plain functions, for tests that watch what the engine tells its store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from promptgrid.types import Job

OnCreated = Callable[[Job, str, int], Awaitable[None]]
OnAttempt = Callable[[Job, int], Awaitable[None]]


class Events:
    """The engine's JobEvents, each told to the function given for it (if any)."""

    def __init__(
        self,
        *,
        on_created: OnCreated | None = None,
        on_sending: OnAttempt | None = None,
        on_unsent: OnAttempt | None = None,
    ):
        self._created, self._sending, self._unsent = on_created, on_sending, on_unsent

    async def on_sending(self, job: Job, attempt: int) -> None:
        if self._sending is not None:
            await self._sending(job, attempt)

    async def on_unsent(self, job: Job, attempt: int) -> None:
        if self._unsent is not None:
            await self._unsent(job, attempt)

    async def on_created(self, job: Job, prediction_id: str, attempt: int) -> None:
        if self._created is not None:
            await self._created(job, prediction_id, attempt)
