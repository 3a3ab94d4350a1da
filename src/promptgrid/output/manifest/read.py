"""Reading the manifest back: every part, unified, folded into one latest row per image (per job and
`output_index`: a `num_images` prediction makes several), or per job for status reads.

Parts from different runs differ only by which carried string columns they add, so they unify:
`read_parts` does it here, DuckDB with `read_parquet(..., union_by_name=true)`, pyarrow.dataset with
`pa.unify_schemas` of the parts' schemas.

Image locations are resolved as each part is read: `image_key` (relative to the output root) is filled
in for older parts, and `image_uri` points where the image is now, wherever the output was moved.

"Latest" per image (or job): a success always wins over a failure (a success must never be shadowed, and
its image exists); among rows of the same kind the latest `completed_at` wins, then the part written last.

A part that cannot be read (truncated, zero bytes, garbage) is damaged: it is skipped and reported to
`on_damaged` (by default a warning naming it), so no reader ever stops on it. Moving it aside and
recovering its jobs is `promptgrid.output.recovery`'s.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from promptgrid.output.keys import MANIFEST_PREFIX
from promptgrid.output.manifest.locate import IMAGE_COLUMNS, resolve_image_locations
from promptgrid.output.manifest.rows import MANIFEST_SCHEMA, STATUS_COLUMNS
from promptgrid.output.sinks import Sink
from promptgrid.types import JobStatus

_READ_THREADS = 8
_RELIST_ATTEMPTS = 20
_logger = logging.getLogger("promptgrid.manifest")
_warned: set[tuple[str, str]] = set()
T = TypeVar("T")


class DamagedPart(NamedTuple):
    """A manifest part that does not read as Parquet, and what the reader said."""

    key: str
    reason: str


OnDamaged = Callable[[DamagedPart], None]


def warn_damaged(root: str) -> OnDamaged:
    """The default: warn once per part and process, naming it and the command that repairs it."""

    def warn(part: DamagedPart) -> None:
        if (root, part.key) not in _warned:
            _warned.add((root, part.key))
            _logger.warning(
                "manifest part %s/%s is damaged (%s) and was skipped; "
                "`promptgrid manifest check --repair %s` moves it aside and recovers its jobs",
                root,
                part.key,
                part.reason,
                root,
            )

    return warn


def part_keys(sink: Sink) -> list[str]:
    """The manifest's committed parts, in name order."""
    return sorted(key for key in sink.list_keys(MANIFEST_PREFIX) if key.endswith(".parquet"))


def part_source(sink: Sink, key: str) -> Path | pa.BufferReader:
    """What pyarrow reads a part from: its local file (read in place), or its bytes fetched once."""
    path = sink.local_path(key)
    return path if path is not None else pa.BufferReader(sink.get_bytes(key))


def _read_part(sink: Sink, key: str, columns: Iterable[str] | None) -> pa.Table:
    """One part, its image locations resolved against where the output is now (see `locate`)."""
    columns = list(columns) if columns is not None else None
    # Parts written before `image_key` existed lack it: read them whole, then resolve and pick.
    wanted = None if columns is None or IMAGE_COLUMNS & set(columns) else columns
    table = pq.read_table(part_source(sink, key), columns=wanted)
    table = resolve_image_locations(table, sink.root)
    return table if columns is None or wanted is not None else table.select(columns)


def read_parts(
    sink: Sink,
    columns: Iterable[str] | None = None,
    keys: list[str] | None = None,
    on_damaged: OnDamaged | None = None,
) -> pa.Table:
    """Every row of every readable part (or of `keys`), as one table with the unified schema.

    A compaction running meanwhile deletes parts only after committing their rows in a new part: a part
    that vanished is skipped and the listing taken again, until it shows nothing unread, so the reader
    still sees every job (rows of a compacted part may then appear twice; `latest_rows` folds them).
    Damaged parts are skipped and reported to `on_damaged`.
    """
    columns = list(columns) if columns is not None else None
    report = on_damaged or warn_damaged(sink.root)
    if keys is not None:
        found = _read_existing(sink, keys, columns, report)
        return _concat([found[key] for key in keys if key in found], columns)
    tables: dict[str, pa.Table] = {}
    damaged: set[str] = set()

    def note(part: DamagedPart) -> None:
        damaged.add(part.key)
        report(part)

    for _ in range(_RELIST_ATTEMPTS):
        unread = [key for key in part_keys(sink) if key not in tables and key not in damaged]
        found = _read_existing(sink, unread, columns, note)
        tables.update(found)
        if len(found) == len([key for key in unread if key not in damaged]):
            return _concat(list(tables.values()), columns)
    raise FileNotFoundError(f"{sink.root}: manifest parts kept vanishing while being read")


def read_keys(sink: Sink, keys: list[str], on_damaged: OnDamaged) -> dict[str, pa.Table]:
    """The parts among `keys` that read, whole; the others reported to `on_damaged`."""
    return _read_existing(sink, keys, None, on_damaged)


def _read_existing(
    sink: Sink, keys: list[str], columns: list[str] | None, on_damaged: OnDamaged
) -> dict[str, pa.Table]:
    return read_each(sink, keys, lambda key: _read_part(sink, key, columns), on_damaged)


def read_each(
    sink: Sink, keys: list[str], read: Callable[[str], T], on_damaged: OnDamaged | None = None
) -> dict[str, T]:
    """`read(key)` of each part among `keys` (several at a time), for every reader of parts: a part that
    vanished meanwhile is left out; one that does not read as Parquet (truncated, zero bytes, garbage) is
    left out and reported to `on_damaged` (by default a warning naming it), never raised."""

    def attempt(key: str) -> T | DamagedPart | None:
        try:
            return read(key)
        except FileNotFoundError:
            return None
        except (pa.ArrowException, OSError) as exc:  # truncated, empty, or not Parquet at all
            return DamagedPart(key, f"{type(exc).__name__}: {exc}")

    if not keys:
        return {}
    report = on_damaged or warn_damaged(sink.root)
    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(keys))) as pool:
        found = dict(zip(keys, pool.map(attempt, keys), strict=True))
    results: dict[str, T] = {}
    for key, result in found.items():
        if isinstance(result, DamagedPart):
            report(result)
        elif result is not None:
            results[key] = result
    return results


def _concat(tables: list[pa.Table], columns: list[str] | None) -> pa.Table:
    if not tables:
        fields = MANIFEST_SCHEMA if columns is None else [MANIFEST_SCHEMA.field(c) for c in columns]
        return pa.schema(fields).empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    return table.replace_schema_metadata(tables[-1].schema.metadata)


def latest_rows(table: pa.Table, per_image: bool = True) -> pa.Table:
    """One row per image, (job_id, output_index), where the table has `output_index` (null reads as 0) and
    `per_image`; else one per job_id. Success over failure, then latest completed_at, then the row read last.
    """
    if table.num_rows == 0:
        return table
    is_success = pc.fill_null(pc.equal(table["status"], JobStatus.SUCCESS.value), False)
    completed = pc.fill_null(table["completed_at"].cast(pa.int64()), -(2**63))
    by_image = per_image and "output_index" in table.column_names
    index = pc.fill_null(table["output_index"], 0) if by_image else pa.nulls(table.num_rows, pa.int32())
    keys = pa.table(
        {
            "job_id": table["job_id"],
            "index": pc.fill_null(index.cast(pa.int32()), 0),
            "ok": is_success.cast(pa.int8()),
            "at": completed,
            "seq": pa.array(range(table.num_rows), pa.int64()),
        }
    )
    order = pc.sort_indices(
        keys,
        [
            *(("job_id", "ascending"), ("index", "ascending"), ("ok", "descending")),
            *(("at", "descending"), ("seq", "descending")),
        ],
    )
    ids = pc.take(keys["job_id"], order).combine_chunks()
    indexes = pc.take(keys["index"], order).combine_chunks()
    first = pc.or_(
        pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)),
        pc.not_equal(indexes.slice(1), indexes.slice(0, len(indexes) - 1)),
    )
    keep = pa.concat_arrays([pa.array([True]), first.fill_null(True)])
    return table.take(pc.filter(order, keep))


def read_manifest(sink: Sink) -> pa.Table:
    """The manifest as one consistent table: the latest row per image across all parts, sorted by job_id
    and output_index."""
    table = read_parts(sink)
    return latest_rows(table)


def latest_outcomes(sink: Sink) -> dict[str, tuple[str, str | None]]:
    """job_id -> (status, prediction_id) of the latest row; reads only those columns of each part."""
    table = latest_rows(read_parts(sink, columns=STATUS_COLUMNS), per_image=False)
    return dict(
        zip(
            table["job_id"].to_pylist(),
            zip(table["status"].to_pylist(), table["prediction_id"].to_pylist(), strict=True),
            strict=True,
        )
    )


def latest_status(sink: Sink, on_damaged: OnDamaged | None = None) -> dict[str, str]:
    """job_id -> status of its latest row (cheap: reads only job_id, status and completed_at)."""
    table = latest_rows(read_parts(sink, columns=STATUS_COLUMNS[:3], on_damaged=on_damaged), per_image=False)
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
        except (pa.ArrowException, OSError):  # damaged: the read that needs its rows warns about it
            continue
        return {k.decode(): v.decode() for k, v in metadata.items() if k.startswith(b"promptgrid.")}
    return {}
