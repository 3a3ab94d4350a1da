"""Reading the manifest back: every part, unified, folded into one latest row per job.

Parts from different runs differ only by which carried string columns they add, so they unify:
`read_parts` does it here, DuckDB with `read_parquet(..., union_by_name=true)`, pyarrow.dataset with
`pa.unify_schemas` of the parts' schemas.

Image locations are resolved as each part is read: `image_key` (relative to the output root) is filled
in for older parts, and `image_uri` points where the image is now, wherever the output was moved.

"Latest" per job: a success always wins over a failure (a success must never be shadowed, and its image
exists); among rows of the same kind the latest `completed_at` wins, then the part written last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from promptgrid.tasks.output.keys import MANIFEST_PREFIX
from promptgrid.tasks.output.manifest.locate import IMAGE_COLUMNS, resolve_image_locations
from promptgrid.tasks.output.manifest.rows import MANIFEST_SCHEMA, STATUS_COLUMNS
from promptgrid.tasks.output.sinks import LocalSink, Sink
from promptgrid.types import JobStatus

_READ_THREADS = 8
_RELIST_ATTEMPTS = 20


def part_keys(sink: Sink) -> list[str]:
    """The manifest's committed parts, in name order."""
    return sorted(key for key in sink.list_keys(MANIFEST_PREFIX) if key.endswith(".parquet"))


def _read_part(sink: Sink, key: str, columns: Iterable[str] | None) -> pa.Table:
    """One part, its image locations resolved against where the output is now (see `locate`)."""
    columns = list(columns) if columns is not None else None
    # Parts written before `image_key` existed lack it: read them whole, then resolve and pick.
    wanted = None if columns is None or IMAGE_COLUMNS & set(columns) else columns
    if isinstance(sink, LocalSink):
        table = pq.read_table(sink.local_path(key), columns=wanted)
    else:
        table = pq.read_table(pa.BufferReader(sink.get_bytes(key)), columns=wanted)
    table = resolve_image_locations(table, sink.root)
    return table if columns is None or wanted is not None else table.select(columns)


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


def provenance(sink: Sink) -> dict[str, str]:
    """The key-value metadata (spec hash, version, run id) of the last part by name; empty without parts."""
    for key in reversed(part_keys(sink)):
        try:
            metadata = _read_part(sink, key, columns=["job_id"]).schema.metadata or {}
        except FileNotFoundError:  # compacted away since the listing
            continue
        return {k.decode(): v.decode() for k, v in metadata.items() if k.startswith(b"promptgrid.")}
    return {}
