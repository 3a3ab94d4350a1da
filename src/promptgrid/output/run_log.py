"""A record of each run in its output (`runs/<run_id>.json`): where it ran, when it started and how it ended.

Written once when the run starts (before anything is sent) and again when it ends, so a run that died
(`kill -9`, a lost machine) is the one whose record has a start and no end. `promptgrid status` reads them.
Writing one never stops a run: a store that refuses it costs a warning, not the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from promptgrid.errors import RunInterrupted
from promptgrid.output.keys import safe_token
from promptgrid.output.sinks.base import Sink
from promptgrid.redact import scrub
from promptgrid.version import VERSION

RUNS_PREFIX = "runs/"
Clock = Callable[[], datetime]
_logger = logging.getLogger("promptgrid.output")


class EndState(Protocol):
    """What a run ends with (a Prefect `State`): its name, message and the run's summary as data."""

    @property
    def name(self) -> str | None: ...

    @property
    def message(self) -> str | None: ...

    @property
    def data(self) -> Any: ...


EndStateT = TypeVar("EndStateT", bound=EndState)


@dataclass(frozen=True)
class RunRecord:
    """One run of an output: who, where, when, and (once it ended) how."""

    run_id: str
    started_at: datetime
    host: str
    pid: int
    version: str
    shard: str | None = None
    ended_at: datetime | None = None
    outcome: str | None = None  # the end state's name (Completed, Failed), or interrupted / crashed
    message: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # planned, succeeded, failed, skipped

    def to_json(self) -> bytes:
        fields = asdict(self)
        fields["started_at"] = self.started_at.isoformat()
        fields["ended_at"] = self.ended_at.isoformat() if self.ended_at else None
        return json.dumps(fields, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> RunRecord | None:
        try:
            fields = json.loads(data)
            fields["started_at"] = datetime.fromisoformat(fields["started_at"])
            ended = fields.get("ended_at")
            fields["ended_at"] = datetime.fromisoformat(ended) if ended else None
            return cls(**fields)
        except (ValueError, TypeError, KeyError):
            return None  # torn or foreign: status shows the run from the manifest alone


def run_key(run_id: str) -> str:
    return f"{RUNS_PREFIX}{safe_token(run_id)}.json"


def run_started(sink: Sink, run_id: str, shard: str | None = None, clock: Clock | None = None) -> RunRecord:
    """Record that a run starts here and now (host, process, promptgrid version)."""
    now = (clock or _utc_now)()
    record = RunRecord(run_id, now, socket.gethostname(), os.getpid(), VERSION, shard)
    _save(sink, record)
    return record


def run_ended(
    sink: Sink,
    record: RunRecord,
    outcome: str,
    message: str | None = None,
    counts: Mapping[str, int] | None = None,
    clock: Clock | None = None,
) -> RunRecord:
    """Record how the run ended; `message` is scrubbed of secrets and kept short."""
    text = scrub(message)[:500] if message else None
    ended = replace(
        record, ended_at=(clock or _utc_now)(), outcome=outcome, message=text, counts=dict(counts or {})
    )
    _save(sink, ended)
    return ended


def read_runs(sink: Sink) -> list[RunRecord]:
    """Every run record of the output, oldest first; unreadable ones are left out."""
    records = []
    for key in sorted(sink.list_keys(RUNS_PREFIX)):
        if not key.endswith(".json"):
            continue
        try:
            record = RunRecord.from_json(sink.get_bytes(key))
        except OSError:
            continue
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda record: record.started_at)


class RunLog:
    """A started run's record, to be ended with the state the run ends in (`ended(state)` returns it)."""

    def __init__(self, sink: Sink, record: RunRecord):
        self.sink, self.record, self.done = sink, record, False

    def ended(self, state: EndStateT) -> EndStateT:
        wanted = ("planned", "succeeded", "failed", "skipped")
        data = state.data  # the run's summary: a mapping, or an object with those counts as attributes
        if not isinstance(data, Mapping):
            data = {name: getattr(data, name, None) for name in wanted}
        counts = {name: int(data[name]) for name in wanted if isinstance(data.get(name), int)}
        self.record = run_ended(self.sink, self.record, state.name or "ended", state.message, counts)
        self.done = True
        return state


@contextlib.contextmanager
def recorded(sink: Sink, run_id: str, shard: str | None = None) -> Iterator[RunLog]:
    """Record the run's start now and its end when the block ends: the state given to `ended`, else
    `interrupted` (Ctrl-C) or `crashed` with the exception that ended it."""
    log = RunLog(sink, run_started(sink, run_id, shard))
    try:
        yield log
    except BaseException as exc:
        stopped = isinstance(exc, KeyboardInterrupt | RunInterrupted | asyncio.CancelledError)
        outcome = "interrupted" if stopped else "crashed"
        log.record = run_ended(sink, log.record, outcome, f"{type(exc).__name__}: {exc}")
        raise
    if not log.done:
        log.record = run_ended(sink, log.record, "ended")


def _save(sink: Sink, record: RunRecord) -> None:
    try:
        sink.put_bytes(run_key(record.run_id), record.to_json(), "application/json")
    except Exception as exc:  # a run record is for people reading status; never worth a run
        _logger.warning("could not write the run record %s: %s", run_key(record.run_id), exc)


def _utc_now() -> datetime:
    return datetime.now(UTC)
