"""The prediction-id journal: each created prediction is recorded durably before it is polled, so a rerun
after a crash polls the prediction it already paid for instead of creating (and paying for) another.

Layout, one folder per writer so several workers share an output without touching each other's records:
- local output: `journal/<writer>/records.jsonl`, one JSON line per record, appended and fsynced;
- S3 output: `journal/<writer>/<job_id>/<created>-a<attempt>-<prediction_id>.json`, one small object per
  record (a PUT is atomic; nothing is ever read, modified and written back). Loading needs only a listing,
  because the key itself carries the record; the body repeats it for people.

Beside the records: intents (a create about to leave: `intents.jsonl`, `<created>-a<attempt>.intent`) and
stored images (`images.jsonl`, `<created>-a<attempt>.image`): an image's key, size, hash and manifest row
(one record per image of a `num_images` prediction, each with its output index and the prediction's count),
written before the image itself, so a run killed before its row reached the manifest loses nothing: the
next run finds the image, checks it against this record and writes the row without fetching or paying.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Container, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from promptgrid.output.keys import JOURNAL_PREFIX, safe_token
from promptgrid.output.manifest.read import latest_outcomes
from promptgrid.output.sinks.base import LineLog, Sink
from promptgrid.types import JobStatus

_STAMP = "%Y%m%dT%H%M%S%fZ"
_LOCAL_FILE = "records.jsonl"
_INTENT_FILE = "intents.jsonl"
_INTENT_SUFFIX = ".intent"
_WITHDRAWN = "-"  # the prediction id of an intent taken back: that create never left
_IMAGE_FILE = "images.jsonl"
_IMAGE_SUFFIX = ".image"
_TORN = (ValueError, TypeError, KeyError)  # what a record torn by a crash mid-write raises when parsed


@dataclass(frozen=True, slots=True)
class JournalRecord:
    """One prediction created for one job: enough to resume polling it."""

    job_id: str
    prediction_id: str
    attempt: int
    created_at: datetime
    writer_id: str = ""

    def to_json(self) -> str:
        fields = asdict(self) | {"created_at": self.created_at.isoformat()}
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JournalRecord:
        fields = json.loads(text)
        fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        return cls(**fields)

    def sort_key(self) -> tuple[datetime, int]:
        return (self.created_at, self.attempt)


@dataclass(frozen=True)
class ImageRecord:
    """An image stored (or about to be) for a job: where, how big, its hash, and the manifest row it makes."""

    job_id: str
    key: str
    sha256: str
    size: int  # bytes
    attempt: int = 1
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    row: dict[str, Any] = field(default_factory=dict)  # JSON-safe: timestamps as ISO 8601 text
    output_index: int = 0  # which of its prediction's images (records written before: the only one)
    output_count: int = 1  # how many images that prediction made

    def to_json(self) -> str:
        fields = asdict(self) | {"created_at": self.created_at.isoformat()}
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False, default=str)

    @classmethod
    def from_json(cls, text: str | bytes) -> ImageRecord:
        fields = json.loads(text)
        fields["created_at"] = datetime.fromisoformat(fields["created_at"])
        return cls(**fields)


class Journal:
    """Append-only record of created predictions for one output; `record` is durable when it returns.

    Where the sink appends lines (a local folder) each kind of record goes to one file per writer; where it
    writes whole objects only (S3), each record is one object whose key carries it.
    """

    def __init__(self, sink: Sink, writer_id: str, *, clock: Callable[[], datetime] | None = None):
        self.sink = sink
        self.writer_id = safe_token(writer_id)
        self.clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._logs: dict[str, LineLog | None] = {}  # journal file name -> the sink's appender, if any

    def _log(self, name: str) -> LineLog | None:
        """This writer's appendable journal file `name`, opened once; None where the sink cannot append."""
        with self._lock:
            if name not in self._logs:
                self._logs[name] = self.sink.line_log(f"{JOURNAL_PREFIX}{self.writer_id}/{name}")
            return self._logs[name]

    async def record(self, job_id: str, prediction_id: str, attempt: int) -> None:
        """Persist one record (fsync locally, a completed PUT on S3) without blocking the event loop.

        Locally the line is written before the first await: from the moment the create's answer is read,
        a killed process can lose the id only for microseconds, not for a hop to a worker thread. The
        fsync that also survives a lost machine follows off the loop.
        """
        log = self._log(_LOCAL_FILE)
        if log is not None:
            entry = self._entry(job_id, prediction_id, attempt)
            log.write((entry.to_json() + "\n").encode("utf-8"))
            await asyncio.to_thread(log.sync)
            return
        await asyncio.to_thread(self.record_sync, job_id, prediction_id, attempt)

    def _entry(self, job_id: str, prediction_id: str, attempt: int) -> JournalRecord:
        if not job_id or not prediction_id:
            raise ValueError("a journal record needs a job id and a prediction id")
        return JournalRecord(job_id, prediction_id, int(attempt), self.clock(), self.writer_id)

    def close(self) -> None:
        """Release the local journal files; records already written stay."""
        with self._lock:
            for log in self._logs.values():
                if log is not None:
                    log.close()
            self._logs.clear()

    def record_sync(self, job_id: str, prediction_id: str, attempt: int) -> JournalRecord:
        entry = self._entry(job_id, prediction_id, attempt)
        log = self._log(_LOCAL_FILE)
        if log is not None:
            log.write((entry.to_json() + "\n").encode("utf-8"))
            log.sync()
        else:
            self.sink.put_bytes(_object_key(entry), entry.to_json().encode("utf-8"), "application/json")
        return entry

    async def intend(self, job_id: str, attempt: int, *, withdrawn: bool = False) -> None:
        """Note, just before a create is sent, that it is about to be; it survives a killed process (and
        on S3 a lost machine) once this returns.

        A run killed between sending a create and recording its id leaves an intent with no record after
        it; the rerun then knows the create's outcome is unknown and must not send it blindly again.
        `withdrawn=True` takes the intent back: the create provably created nothing (it never left).
        """
        marker = _WITHDRAWN if withdrawn else ""
        entry = JournalRecord(job_id, marker, int(attempt), self.clock(), self.writer_id)
        line = (entry.to_json() + "\n").encode("utf-8")
        log = self._log(_INTENT_FILE)
        if log is not None:
            log.write(line)
            return
        stamp = entry.created_at.astimezone(UTC).strftime(_STAMP)
        name = f"{stamp}-a{entry.attempt}{_INTENT_SUFFIX}"
        key = f"{JOURNAL_PREFIX}{self.writer_id}/{_key_segment(job_id)}/{name}"
        await asyncio.to_thread(self.sink.put_bytes, key, line, "application/json")

    async def record_image(self, entry: ImageRecord) -> None:
        """Persist where a job's image goes and what it must be, before the image itself is written."""
        await asyncio.to_thread(self.record_image_sync, entry)

    def record_image_sync(self, entry: ImageRecord) -> None:
        """`record_image` for a worker thread that writes the image next (one hop for both)."""
        line = (entry.to_json() + "\n").encode("utf-8")
        log = self._log(_IMAGE_FILE)
        if log is not None:
            # Written, not fsynced: a killed process loses nothing written, and an fsync here would
            # cost a second disk commit per image beside the image's own (measured: twice the time
            # per save). A machine that loses power may lose the latest few records; their images
            # are then fetched again while the links still work, as before this record existed.
            log.write(line)
            return
        stamp = entry.created_at.astimezone(UTC).strftime(_STAMP)
        index = f"-o{entry.output_index}" if entry.output_index else ""  # a prediction's images, one each
        name = f"{stamp}-a{entry.attempt}{index}{_IMAGE_SUFFIX}"
        key = f"{JOURNAL_PREFIX}{self.writer_id}/{_key_segment(entry.job_id)}/{name}"
        self.sink.put_bytes(key, line, "application/json")

    def images(self, skip: Container[str] = ()) -> dict[str, ImageRecord]:
        """job_id -> its latest stored-image record (its first image's), leaving out jobs in `skip`."""
        return {job_id: records[0] for job_id, records in self.image_sets(skip).items()}

    def image_sets(self, skip: Container[str] = ()) -> dict[str, list[ImageRecord]]:
        """job_id -> the stored-image records of every image of its latest prediction, by output index, for
        the jobs whose records are all there (a `num_images` prediction's run killed half way through its
        images has some missing: that job is left out, its prediction polled and fetched again, not paid).
        Jobs in `skip` are left out (on S3 their bodies are not even read: the job id is in the key)."""
        found: dict[tuple[str, int], ImageRecord] = {}
        for entry in self._image_records(skip):
            known = found.get((entry.job_id, entry.output_index))
            if known is None or known.created_at <= entry.created_at:
                found[(entry.job_id, entry.output_index)] = entry
        latest: dict[str, ImageRecord] = {}
        for entry in found.values():
            known = latest.get(entry.job_id)
            if known is None or known.created_at <= entry.created_at:
                latest[entry.job_id] = entry
        sets = {}
        for job_id, last in latest.items():
            records = [found.get((job_id, index)) for index in range(max(last.output_count, 1))]
            prediction = last.row.get("prediction_id")
            if all(r is not None and r.row.get("prediction_id") == prediction for r in records):
                sets[job_id] = [r for r in records if r is not None]
        return sets

    def _image_records(self, skip: Container[str]) -> Iterator[ImageRecord]:
        for key in self.sink.list_keys(JOURNAL_PREFIX):
            if key.endswith("/" + _IMAGE_FILE):
                for line in self.sink.get_bytes(key).decode("utf-8", errors="replace").splitlines():
                    # A line torn by a crash announces nothing: its image is fetched again if need be.
                    with contextlib.suppress(*_TORN):
                        entry = ImageRecord.from_json(line)
                        if entry.job_id not in skip:
                            yield entry
            elif key.endswith(_IMAGE_SUFFIX):
                segment = key[len(JOURNAL_PREFIX) :].split("/")[1]
                if segment in skip:
                    continue
                with contextlib.suppress(*_TORN):  # torn by a crash: the image is fetched again if need be
                    yield ImageRecord.from_json(self.sink.get_bytes(key))

    def intents(self) -> Iterator[JournalRecord]:
        """Every intent of every writer: a job id and attempt, with no prediction id."""
        for key in self.sink.list_keys(JOURNAL_PREFIX):
            if key.endswith("/" + _INTENT_FILE) or key.endswith(_INTENT_SUFFIX):
                yield from _read_lines(self.sink.get_bytes(key))

    def uncertain(self) -> set[str]:
        """Jobs whose latest create was sent but whose prediction id never reached the journal."""
        return set(self.unanswered())

    def unanswered(self) -> dict[str, JournalRecord]:
        """job_id -> the intent of its latest create, for creates whose prediction id never reached the
        journal (when it was sent, and which attempt: what finding its prediction later needs)."""
        latest = self.latest()
        last_intent: dict[str, JournalRecord] = {}
        last_withdrawn: dict[str, datetime] = {}
        for entry in self.intents():
            if entry.prediction_id == _WITHDRAWN:
                withdrawn = last_withdrawn.get(entry.job_id, entry.created_at)
                last_withdrawn[entry.job_id] = max(entry.created_at, withdrawn)
                continue
            known = last_intent.get(entry.job_id)
            if known is None or known.sort_key() < entry.sort_key():
                last_intent[entry.job_id] = entry
        return {
            job_id: intent
            for job_id, intent in last_intent.items()
            if (job_id not in latest or latest[job_id].created_at < intent.created_at)
            and not (job_id in last_withdrawn and last_withdrawn[job_id] >= intent.created_at)
        }

    def records(self) -> Iterator[JournalRecord]:
        """Every record of every writer in this output, in no particular order."""
        for key in self.sink.list_keys(JOURNAL_PREFIX):
            if key.endswith("/" + _LOCAL_FILE):
                yield from _read_lines(self.sink.get_bytes(key))
            elif key.endswith(".json"):
                entry = _parse_object_key(key)
                yield (
                    entry if entry is not None else JournalRecord.from_json(self.sink.get_bytes(key).decode())
                )

    def latest(self) -> dict[str, JournalRecord]:
        """job_id -> its most recent record, across all writers."""
        latest: dict[str, JournalRecord] = {}
        for entry in self.records():
            known = latest.get(entry.job_id)
            if known is None or entry.sort_key() > known.sort_key():
                latest[entry.job_id] = entry
        return latest

    def load(self, *, skip_finished: bool = True) -> dict[str, str]:
        """job_id -> latest prediction id, for jobs whose prediction may still need polling.

        Skipped: jobs whose latest manifest row is a success, and jobs whose latest row already records
        this very prediction as ended (failed, cancelled, timed out: a rerun creates a new one). A
        prediction no row records yet (the run was killed while polling it) is kept.
        """
        latest = self.latest()
        if not skip_finished or not latest:
            return {job_id: entry.prediction_id for job_id, entry in latest.items()}
        outcomes = latest_outcomes(self.sink)
        pending = {}
        for job_id, entry in latest.items():
            status, prediction_id = outcomes.get(job_id, (None, None))
            # A row for this very prediction means the run that wrote it saw it end (a timed-out one
            # was cancelled at its deadline): polling it again would only find it ended.
            done = status == JobStatus.SUCCESS.value or prediction_id == entry.prediction_id
            if not done:
                pending[job_id] = entry.prediction_id
        return pending

    async def load_async(self, *, skip_finished: bool = True) -> dict[str, str]:
        return await asyncio.to_thread(self.load, skip_finished=skip_finished)


def _read_lines(data: bytes) -> Iterator[JournalRecord]:
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            yield JournalRecord.from_json(line)
        except (ValueError, TypeError, KeyError):
            continue  # a line torn by a crash mid-append: its prediction was never polled


def _key_segment(identifier: str) -> str:
    """The id itself when a key can hold it verbatim; else a `~` mark (loading then reads the body)."""
    if safe_token(identifier, max_len=200) == identifier:
        return identifier
    return "~" + hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:32]


def _object_key(entry: JournalRecord) -> str:
    stamp = entry.created_at.astimezone(UTC).strftime(_STAMP)
    name = f"{stamp}-a{entry.attempt}-{_key_segment(entry.prediction_id)}.json"
    return f"{JOURNAL_PREFIX}{entry.writer_id}/{_key_segment(entry.job_id)}/{name}"


def _parse_object_key(key: str) -> JournalRecord | None:
    """The record a key carries, or None when the body must be read (an id the key could not hold)."""
    parts = key[len(JOURNAL_PREFIX) :].split("/")
    if len(parts) != 3:
        return None
    writer_id, job_id, name = parts
    stamp, _, rest = name[: -len(".json")].partition("-a")
    attempt, _, prediction_id = rest.partition("-")
    if "~" in (job_id[:1], prediction_id[:1]) or not attempt.isdigit() or not prediction_id:
        return None
    try:
        created_at = datetime.strptime(stamp, _STAMP).replace(tzinfo=UTC)
    except ValueError:
        return None
    return JournalRecord(job_id, prediction_id, int(attempt), created_at, writer_id)
