"""The Parquet manifest: a row per job outcome, written in atomic parts, read back as one latest-per-job view.

Layout: `OUTPUT/manifest/part-<run>-<worker>-<nonce>-<seq>.parquet`, each part a whole Parquet file put
atomically through the sink, so a crash loses at most the rows still buffered. The base columns are
`MANIFEST_SCHEMA`, declared once. A grid's carried columns vary from grid to grid: each is appended after
the base columns as a string column under its own name (`carried_<name>` if it would shadow a base column),
and the original typed values are kept as JSON in the `carried` column. Parts from different runs therefore
differ only by which string columns they add, so they unify: `read_manifest` does it here, DuckDB with
`read_parquet(..., union_by_name=true)`, pyarrow.dataset with `pa.unify_schemas` of the parts' schemas.

"Latest" per job: a success always wins over a failure (a success must never be shadowed, and its image
exists); among rows of the same kind the latest `completed_at` wins, then the part written last.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import promptgrid
from promptgrid.models import INPUT_NAMES
from promptgrid.types import Job, JobOutcome, JobStatus
from tasks.keys import MANIFEST_PREFIX, SPEC_KEY, manifest_part_key
from tasks.storage import LocalSink, Sink

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
_TS = pa.timestamp("us", tz="UTC")

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("prediction_id", pa.string()),
        ("attempts", pa.int32()),
        ("api_requests", pa.int32()),
        ("queued_at", _TS),
        ("submitted_at", _TS),
        ("completed_at", _TS),
        ("predict_time_s", pa.float64()),
        ("cost_usd", pa.float64()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("prompt", pa.string()),
        ("aspect_ratio", pa.string()),
        ("cfg", pa.float64()),
        ("steps", pa.int32()),
        ("seed", pa.int64()),
        ("image", pa.string()),
        ("prompt_strength", pa.float64()),
        ("output_format", pa.string()),
        ("output_quality", pa.int32()),
        ("image_uri", pa.string()),
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("carried", pa.string()),  # the grid's carried columns as one JSON object, values typed
    ]
)
BASE_COLUMNS = tuple(MANIFEST_SCHEMA.names)
STATUS_COLUMNS = ("job_id", "status", "completed_at", "prediction_id")
_OUTCOME_FIELDS = (
    *("error_code", "error_message", "prediction_id", "attempts", "api_requests", "queued_at"),
    *("submitted_at", "completed_at", "predict_time_s", "cost_usd", "sha256", "bytes", "width", "height"),
)
_READ_THREADS = 8
_RELIST_ATTEMPTS = 20
assert set(INPUT_NAMES) <= set(BASE_COLUMNS), "every model input has a manifest column"


def carried_column_name(name: str) -> str:
    """The manifest column for a carried grid column: its own name unless a base column already has it."""
    name = str(name)
    return f"carried_{name}" if name in BASE_COLUMNS or name.startswith("carried_") else name


def outcome_row(job: Job, outcome: JobOutcome, image_uri: str | None, run_id: str) -> dict[str, Any]:
    """One manifest row: the outcome, the job's inputs, and its carried columns (flattened and as JSON)."""
    row: dict[str, Any] = {"run_id": run_id, "job_id": job.job_id, "status": JobStatus(outcome.status).value}
    for name in _OUTCOME_FIELDS:
        row[name] = getattr(outcome, name)
    for name in ("queued_at", "submitted_at", "completed_at"):
        row[name] = _as_utc(row[name])
    row.update(model=job.model, version=job.version, image_uri=image_uri)
    for name in INPUT_NAMES:
        row[name] = job.inputs.get(name)
    row["carried"] = json.dumps(dict(job.carried), default=str, ensure_ascii=False) if job.carried else None
    for name, value in job.carried.items():
        row[carried_column_name(name)] = _as_text(value)
    return row


def _as_utc(moment: datetime | None) -> datetime | None:
    # The engine stamps UTC; a naive stamp is taken to be UTC rather than local time.
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value != value:  # NaN from a pandas-read grid means "empty"
        return None
    return json.dumps(value, default=str) if isinstance(value, list | dict) else str(value)


def _coerce(value: Any, kind: pa.DataType) -> Any:
    # Inputs arrive normalised, but a number given as "3.5" must still land in a float column.
    if value is None or value == "":
        return None
    if pa.types.is_floating(kind):
        return float(value)
    if pa.types.is_integer(kind):
        return int(float(value)) if isinstance(value, str) else int(value)
    return value


def rows_to_table(rows: list[dict[str, Any]], metadata: Mapping[str, str] | None = None) -> pa.Table:
    """Rows -> a table with the base schema plus one string column per carried column seen."""
    extra = list(dict.fromkeys(name for row in rows for name in row if name not in BASE_COLUMNS))
    schema = pa.schema([*MANIFEST_SCHEMA, *(pa.field(name, pa.string()) for name in extra)])
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if field.name in BASE_COLUMNS:
            values = [_coerce(value, field.type) for value in values]
        columns[field.name] = pa.array(values, type=field.type)
    table = pa.table(columns, schema=schema)
    return table.replace_schema_metadata(dict(metadata or {}))


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
            "promptgrid.version": promptgrid.__version__,
            "promptgrid.run_id": run_id,
            "promptgrid.worker_id": worker_id,
        }
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._last_flush = clock()
        self._closed = False

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def add(self, job: Job, outcome: JobOutcome, image_uri: str | None) -> None:
        """Buffer one outcome's row; commit a part when the buffer is full or the last commit is old."""
        if job.job_id != outcome.job_id:
            raise ValueError(f"outcome for {outcome.job_id!r} given with job {job.job_id!r}")
        row = outcome_row(job, outcome, image_uri, self.run_id)
        with self._lock:
            if self._closed:
                raise RuntimeError("the manifest writer is closed")
            self._rows.append(row)
            self.counts[row["status"]] += 1
            if len(self._rows) >= self.rows_per_part or self._flush_due():
                self._flush_locked()

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


def part_keys(sink: Sink) -> list[str]:
    """The manifest's committed parts, in name order."""
    return sorted(key for key in sink.list_keys(MANIFEST_PREFIX) if key.endswith(".parquet"))


def _read_part(sink: Sink, key: str, columns: Iterable[str] | None) -> pa.Table:
    columns = list(columns) if columns is not None else None
    if isinstance(sink, LocalSink):
        return pq.read_table(sink.local_path(key), columns=columns)
    return pq.read_table(pa.BufferReader(sink.get_bytes(key)), columns=columns)


def read_parts(sink: Sink, columns: Iterable[str] | None = None, keys: list[str] | None = None) -> pa.Table:
    """Every row of every part (or of `keys`), as one table with the unified schema.

    A compaction running meanwhile deletes parts only after committing their rows in a new part: a part
    that vanished is skipped and the listing taken again, until it shows nothing unread, so the reader
    still sees every job (rows of a compacted part may then appear twice; `latest_rows` folds them).
    """
    columns = list(columns) if columns is not None else None
    if keys is not None:
        return _concat([_read_part(sink, key, columns) for key in keys], columns)
    tables: dict[str, pa.Table] = {}
    for _ in range(_RELIST_ATTEMPTS):
        unread = [key for key in part_keys(sink) if key not in tables]
        found = _read_existing(sink, unread, columns)
        tables.update(found)
        if len(found) == len(unread):
            return _concat(list(tables.values()), columns)
    raise FileNotFoundError(f"{sink.root}: manifest parts kept vanishing while being read")


def _read_existing(sink: Sink, keys: list[str], columns: list[str] | None) -> dict[str, pa.Table]:
    def read(key: str) -> pa.Table | None:
        try:
            return _read_part(sink, key, columns)
        except FileNotFoundError:
            return None

    if not keys:
        return {}
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(keys))) as pool:
        found = dict(zip(keys, pool.map(read, keys), strict=True))
    return {key: table for key, table in found.items() if table is not None}


def _concat(tables: list[pa.Table], columns: list[str] | None) -> pa.Table:
    if not tables:
        fields = MANIFEST_SCHEMA if columns is None else [MANIFEST_SCHEMA.field(c) for c in columns]
        return pa.schema(fields).empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    return table.replace_schema_metadata(tables[-1].schema.metadata)


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per job_id: success over failure, then latest completed_at, then the row read last."""
    if table.num_rows == 0:
        return table
    is_success = pc.fill_null(pc.equal(table["status"], JobStatus.SUCCESS.value), False)
    completed = pc.fill_null(table["completed_at"].cast(pa.int64()), -(2**63))
    keys = pa.table(
        {
            "job_id": table["job_id"],
            "ok": is_success.cast(pa.int8()),
            "at": completed,
            "seq": pa.array(range(table.num_rows), pa.int64()),
        }
    )
    order = pc.sort_indices(
        keys, [("job_id", "ascending"), ("ok", "descending"), ("at", "descending"), ("seq", "descending")]
    )
    ids = pc.take(keys["job_id"], order).combine_chunks()
    first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return table.take(pc.filter(order, keep))


def read_manifest(sink: Sink) -> pa.Table:
    """The manifest as one consistent table: the latest row per job across all parts, sorted by job_id."""
    table = read_parts(sink)
    return latest_rows(table)


def latest_outcomes(sink: Sink) -> dict[str, tuple[str, str | None]]:
    """job_id -> (status, prediction_id) of the latest row; reads only those columns of each part."""
    table = latest_rows(read_parts(sink, columns=STATUS_COLUMNS))
    return dict(
        zip(
            table["job_id"].to_pylist(),
            zip(table["status"].to_pylist(), table["prediction_id"].to_pylist(), strict=True),
            strict=True,
        )
    )


def latest_status(sink: Sink) -> dict[str, str]:
    """job_id -> status of its latest row (cheap: reads only job_id, status and completed_at)."""
    table = latest_rows(read_parts(sink, columns=STATUS_COLUMNS[:3]))
    return dict(zip(table["job_id"].to_pylist(), table["status"].to_pylist(), strict=True))


def status_counts(sink: Sink) -> dict[str, int]:
    """How many jobs are in each status, by their latest row."""
    return dict(Counter(latest_status(sink).values()))


def compact(sink: Sink) -> int:
    """Rewrite all parts as one part of latest rows, then delete the parts read; returns the rows kept.

    The compacted part is committed before any old part is deleted, and parts written meanwhile by a
    running worker are left alone, so a reader sees the same latest view at every moment.
    """
    keys = part_keys(sink)
    if not keys:
        return 0
    table = latest_rows(read_parts(sink, keys=keys))
    metadata = dict(table.schema.metadata or {})
    metadata[b"promptgrid.compacted_from"] = str(len(keys)).encode()
    metadata[b"promptgrid.version"] = promptgrid.__version__.encode()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    key = manifest_part_key(f"compact-{stamp}", secrets.token_hex(3), 0)
    sink.put_bytes(key, table_to_parquet(table.replace_schema_metadata(metadata)), PARQUET_CONTENT_TYPE)
    for old in keys:
        if old != key:
            sink.delete(old)
    return table.num_rows


def save_spec(sink: Sink, text: str) -> None:
    """Keep the spec a run used beside its manifest: `spec.yaml`, plus `specs/<hash>.yaml` for history."""
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()[:16]
    sink.put_bytes(f"specs/{digest}.yaml", data, "application/yaml")
    sink.put_bytes(SPEC_KEY, data, "application/yaml")


def load_spec_text(sink: Sink) -> str:
    """The spec text saved by the latest run (FileNotFoundError when none was saved)."""
    return sink.get_bytes(SPEC_KEY).decode("utf-8")


def provenance(sink: Sink) -> dict[str, str]:
    """The key-value metadata (spec hash, version, run id) of the last part by name; empty without parts."""
    for key in reversed(part_keys(sink)):
        try:
            metadata = _read_part(sink, key, columns=["job_id"]).schema.metadata or {}
        except FileNotFoundError:  # compacted away since the listing
            continue
        return {k.decode(): v.decode() for k, v in metadata.items() if k.startswith(b"promptgrid.")}
    return {}
