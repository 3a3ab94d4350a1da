"""The job events the engine tells as it runs (a create about to leave, withdrawn, answered), as one protocol
the store implements (promptgrid.output.recorder.OutcomeStore), so the engine never imports storage.

The order is the contract a crash relies on:

- `on_sending` is told of each create as its first byte leaves (not before: one cancelled while it waited
  for a connection was never sent), so a run that dies before reading the answer leaves a trace, and its
  rerun knows that create's outcome is unknown and does not send it blindly again;
- `on_unsent` withdraws that trace when the create provably created nothing (it never left, or was refused);
- `on_created` is told of each prediction id before the prediction is polled (a lost create found through
  the listing included), so a resumed run polls it instead of paying for it twice. An exception it raises
  (the id could not be recorded) stops the run rather than create predictions a resume cannot find.

`Engine.run` yields each job's outcome once its prediction finished and its image was fetched (or why not):
the caller stores it.
"""

from __future__ import annotations

from typing import Protocol

from promptgrid.types import Job


class JobEvents(Protocol):
    """What the engine tells about each job's creates, in the order above."""

    async def on_sending(self, job: Job, attempt: int) -> None: ...

    async def on_unsent(self, job: Job, attempt: int) -> None: ...

    async def on_created(self, job: Job, prediction_id: str, attempt: int) -> None: ...


class NoEvents:
    """For an engine whose creates nobody records (benchmarks, the dry run's tools)."""

    async def on_sending(self, job: Job, attempt: int) -> None:
        pass

    async def on_unsent(self, job: Job, attempt: int) -> None:
        pass

    async def on_created(self, job: Job, prediction_id: str, attempt: int) -> None:
        pass
