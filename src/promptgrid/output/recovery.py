"""Putting an output back in order before a run, and `promptgrid manifest check [--repair]`.

Two things can be wrong after a crash or a bad disk, and neither may stop a run or lose an image:
- a damaged manifest part (truncated, zero bytes): it is moved aside to `manifest-quarantine/`, named in a
  warning, and its jobs come back from the journal where possible;
- an image stored whose success row never reached the manifest (rows wait a few seconds in a buffer, and a
  `kill -9` loses them): the journal recorded the image's key, size, hash and row before the image was
  written, so the image is checked against that record and its row written, without fetching or paying.
  A `num_images` prediction's images are adopted together, each checked and given its row, only when every
  one of them is there; otherwise the rerun polls the prediction (in the journal) and fetches them again.

Jobs a damaged part held that had no stored image run again as usual: their prediction ids are in the
journal, so the rerun polls what was bought instead of creating it anew.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from promptgrid.output.journal import ImageRecord, Journal
from promptgrid.output.manifest.read import DamagedPart, latest_status, part_keys, read_keys
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.sinks.base import Sink
from promptgrid.types import JobStatus

QUARANTINE_PREFIX = "manifest-quarantine/"
_TIMESTAMPS = ("queued_at", "submitted_at", "completed_at")
_logger = logging.getLogger("promptgrid.recovery")


@dataclass
class Recovery:
    """What putting an output in order found and did."""

    parts: int = 0
    damaged: list[DamagedPart] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # where the damaged parts went
    recoverable: list[str] = field(default_factory=list)  # jobs with verified stored images and no row
    unverified: list[str] = field(default_factory=list)  # stored-image records whose image is not as told
    rebuilt: int = 0  # success rows written from the journal (one per image)

    @property
    def healthy(self) -> bool:
        return not self.damaged and not self.recoverable


def quarantine(sink: Sink, part: DamagedPart) -> str:
    """Move a damaged part out of `manifest/` (readers only look there); returns its new key."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = f"{QUARANTINE_PREFIX}{stamp}-{part.key.rsplit('/', 1)[-1]}"
    sink.put_bytes(target, sink.get_bytes(part.key), "application/octet-stream")
    sink.delete(part.key)
    _logger.warning(
        "manifest part %s/%s was damaged (%s); moved aside to %s/%s, its jobs are recovered from the journal",
        sink.root,
        part.key,
        part.reason,
        sink.root,
        target,
    )
    return target


def stored_image_matches(sink: Sink, record: ImageRecord) -> bool:
    """Whether the image at the record's key has the size and hash the journal recorded."""
    try:
        data = sink.get_bytes(record.key)
    except FileNotFoundError:
        return False
    return len(data) == record.size and hashlib.sha256(data).hexdigest() == record.sha256


def row_from_record(sink: Sink, record: ImageRecord) -> dict[str, Any]:
    """The success row a stored-image record carries, timestamps parsed back and the URI made current."""
    row = dict(record.row)
    for name in _TIMESTAMPS:
        if isinstance(row.get(name), str):
            row[name] = datetime.fromisoformat(row[name])
    row["image_uri"], row["image_key"] = sink.uri(record.key), record.key
    return row


def inspect(
    sink: Sink, journal: Journal, *, owns: Callable[[str], bool] = lambda job_id: True, whole: bool = False
) -> tuple[Recovery, dict[str, list[ImageRecord]]]:
    """Find damaged parts and stored images without rows (`whole`: read every column of every part)."""
    recovery = Recovery()
    keys = part_keys(sink)
    recovery.parts = len(keys)
    if whole:
        read_keys(sink, keys, recovery.damaged.append)
        statuses = latest_status(sink, on_damaged=lambda part: None)
    else:
        statuses = latest_status(sink, on_damaged=recovery.damaged.append)
    successes = {job_id for job_id, status in statuses.items() if status == JobStatus.SUCCESS.value}
    verified = {}
    for job_id, records in journal.image_sets(skip=successes).items():
        if not owns(job_id):
            continue
        if all(stored_image_matches(sink, record) for record in records):
            verified[job_id] = records
        else:
            recovery.unverified.append(job_id)
    recovery.recoverable = sorted(verified)
    return recovery, verified


def repair(
    sink: Sink,
    journal: Journal,
    writer: ManifestWriter,
    *,
    owns: Callable[[str], bool] = lambda job_id: True,
    whole: bool = False,
) -> Recovery:
    """Quarantine damaged parts and write the success rows the journal proves; the rows are committed."""
    recovery, verified = inspect(sink, journal, owns=owns, whole=whole)
    recovery.quarantined = [quarantine(sink, part) for part in recovery.damaged]
    rows = [row_from_record(sink, record) for records in verified.values() for record in records]
    for row in rows:
        writer.add_row(row)
    writer.flush()
    recovery.rebuilt = len(rows)
    if rows:
        _logger.warning(
            "%d stored image(s) had no manifest row (a run stopped before writing it); rows rebuilt from "
            "the journal, nothing fetched or paid again",
            len(rows),
        )
    return recovery
