"""Writing the manifest: outcome rows buffered and committed as atomic Parquet parts, and compaction.

Layout: `OUTPUT/manifest/part-<run>-<worker>-<nonce>-<seq>.parquet`, each part a whole Parquet file put
atomically through the sink, so a crash loses at most the rows still buffered. Provenance (spec hash, code
version, run and worker) goes in each part's key-value metadata.
"""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from promptgrid.output.keys import manifest_part_key
from promptgrid.output.manifest.locate import key_under_root
from promptgrid.output.manifest.read import latest_rows, part_keys, read_keys
from promptgrid.output.manifest.rows import outcome_row, rows_to_table
from promptgrid.output.sinks import Sink
from promptgrid.types import Job, JobOutcome
from promptgrid.version import VERSION

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


class ManifestWriter:
    """Buffers outcome rows and commits them as Parquet parts every `rows_per_part` rows or `flush_s` seconds.

    Thread-safe (the flow calls it from worker threads). Use as a context manager; `close()` flushes the
    rest and returns this writer's counts by status.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        run_id: str,
        spec_hash: str,
        worker_id: str = "w0",
        api_base: str | None = None,
        rows_per_part: int = 500,
        flush_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if rows_per_part < 1 or flush_s <= 0:
            raise ValueError("rows_per_part must be at least 1 and flush_s positive")
        self.sink, self.run_id, self.worker_id = sink, run_id, worker_id
        self.rows_per_part, self.flush_s, self.clock = rows_per_part, flush_s, clock
        self.parts_written: list[str] = []
        self.counts: Counter[str] = Counter()
        self._nonce = secrets.token_hex(3)  # a rerun reusing run and worker ids must not overwrite parts
        self._metadata = {
            "promptgrid.spec_hash": spec_hash,
            "promptgrid.version": VERSION,
            "promptgrid.run_id": run_id,
            "promptgrid.worker_id": worker_id,
        }
        if api_base:  # where the images came from: the report tells a sandbox's figures from a bill
            self._metadata["promptgrid.api_base"] = api_base
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = clock()
        self._closed = False

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add(
        self,
        job: Job,
        outcome: JobOutcome,
        image_uri: str | None,
        image_key: str | None = None,
        output_index: int = 0,
    ) -> None:
        """Buffer one outcome's row (of its image `output_index`); commit a part when the buffer is full or
        the last commit is old.

        `image_key` is the image's key in this sink; when not given it is taken from `image_uri`.
        """
        self.add_images(job, outcome, [(image_uri, image_key)], first_index=output_index)

    def add_images(
        self,
        job: Job,
        outcome: JobOutcome,
        stored: Sequence[tuple[str | None, str | None]],
        first_index: int = 0,
    ) -> None:
        """Buffer a row per image of one outcome (`stored`: each image's URI and key, in output order), all
        in the same part, so a part never holds some of a prediction's images as success and not others."""
        if job.job_id != outcome.job_id:
            raise ValueError(f"outcome for {outcome.job_id!r} given with job {job.job_id!r}")
        rows = [
            outcome_row(job, outcome, uri, self.run_id, key or key_under_root(self.sink.root, uri), index)
            for index, (uri, key) in enumerate(stored, first_index)
        ]
        with self._lock:
            if self._closed:
                raise RuntimeError("the manifest writer is closed")
            self._rows.extend(rows)
            self.counts.update(row["status"] for row in rows)
            if len(self._rows) >= self.rows_per_part or self._flush_due():
                self._flush_locked()

    def add_row(self, row: dict[str, Any]) -> None:
        """Buffer a row made earlier (one rebuilt from the journal), as it is."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the manifest writer is closed")
            self._rows.append(row)
            self.counts[row["status"]] += 1

    def maybe_flush(self) -> None:
        """Commit buffered rows once `flush_s` has passed: a periodic tick for when no outcome arrives."""
        with self._lock:
            if self._rows and self._flush_due():
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def close(self) -> dict[str, int]:
        with self._lock:
            if not self._closed:
                self._flush_locked()
                self._closed = True
        return dict(self.counts)

    def _flush_due(self) -> bool:
        return self.clock() - self._last_flush >= self.flush_s

    def _flush_locked(self) -> None:
        self._last_flush = self.clock()
        if not self._rows:
            return
        metadata = {**self._metadata, "promptgrid.written_at": datetime.now(UTC).isoformat()}
        key = manifest_part_key(self.run_id, f"{self.worker_id}-{self._nonce}", len(self.parts_written))
        self.sink.put_bytes(key, table_to_parquet(rows_to_table(self._rows, metadata)), PARQUET_CONTENT_TYPE)
        # Only now are the rows safe; on a failed put they stay buffered for the next try.
        self._rows = []
        self.parts_written.append(key)


def table_to_parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def compact(sink: Sink) -> int:
    """Rewrite all parts as one part of latest rows, then delete the parts read; returns the rows kept.

    The compacted part is committed before any old part is deleted, and parts written meanwhile by a
    running worker are left alone, so a reader sees the same latest view at every moment.
    """
    damaged: set[str] = set()
    readable = read_keys(sink, part_keys(sink), lambda part: damaged.add(part.key))
    keys = sorted(readable)
    if not keys:
        return 0
    # Damaged parts are left where they are (`promptgrid manifest check --repair` moves them aside).
    table = latest_rows(pa.concat_tables([readable[key] for key in keys], promote_options="default"))
    metadata = dict(table.schema.metadata or {})
    metadata[b"promptgrid.compacted_from"] = str(len(keys)).encode()
    metadata[b"promptgrid.version"] = VERSION.encode()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    key = manifest_part_key(f"compact-{stamp}", secrets.token_hex(3), 0)
    sink.put_bytes(key, table_to_parquet(table.replace_schema_metadata(metadata)), PARQUET_CONTENT_TYPE)
    for old in keys:
        if old != key:
            sink.delete(old)
    return int(table.num_rows)
