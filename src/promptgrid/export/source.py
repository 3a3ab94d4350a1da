"""The rows an export takes: each image's latest manifest row, picked by status and SQL, streamed in batches.

An image is a job's, or one of a `num_images` prediction's several (`output_index`); `image_ids` names
each once. Opening a source reads only a few columns of every part (job id, output index, status,
completion time) to decide which row of which part is each image's latest; the rows themselves are then
read part by part in record batches, so memory holds one batch of the manifest at a time, never the whole
of it. The parts listed at opening are the source's fingerprint: parts are immutable, so the same list
means the same rows in the same order. Each picked row's stamp (its status and completion time) tells an
incremental export whether the row a shard holds is still the image's latest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from promptgrid.errors import ExportFailed, InvalidInput
from promptgrid.locations import is_loopback_url
from promptgrid.output.manifest.locate import resolve_image_locations
from promptgrid.output.manifest.read import latest_rows, part_keys, part_source, read_each
from promptgrid.output.manifest.rows import image_id
from promptgrid.output.scores import join_scores, read_scores
from promptgrid.output.sinks import Sink
from promptgrid.types import JobStatus

_SELECT_COLUMNS = ["job_id", "status", "completed_at"]
_SPLIT_COLUMN = "split"  # a grid's split column, read up front to check its values before writing
_INDEX_COLUMN = "output_index"  # which of its prediction's images a row is (absent in older parts: 0)
_API_BASE = b"promptgrid.api_base"
_ROW = "__promptgrid_row"


@dataclass(frozen=True)
class ManifestSource:
    """An output's manifest as an export sees it: fixed parts, one schema, the rows picked in each part."""

    sink: Sink
    parts: tuple[str, ...]
    schema: pa.Schema
    picked: dict[int, np.ndarray]  # part index -> sorted row numbers of the latest rows with a wanted status
    total: int
    stamps: dict[str, str]  # image id (`image_ids`) -> stamp (status and completion time) of its picked row
    split_values: frozenset[str]  # the grid's `split` values among the picked rows
    from_sandbox: bool  # some part was written by a run against promptgrid's sandbox (on loopback)
    scores: pa.Table | None = None  # the images' scores (promptgrid score), joined onto every batch

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(self.parts).encode()).hexdigest()[:24]


def check_statuses(statuses: list[str]) -> list[str]:
    allowed = {status.value for status in JobStatus}
    unknown = sorted(set(statuses) - allowed)
    if unknown or not statuses:
        listed = ", ".join(unknown) or "(none)"
        raise InvalidInput([f"--status: unknown status {listed}; allowed: {', '.join(sorted(allowed))}"])
    return statuses


def open_source(sink: Sink, statuses: list[str]) -> ManifestSource:
    """Decide which rows an export takes; InvalidInput when the output has no manifest."""
    parts = tuple(part_keys(sink))
    if not parts:
        raise InvalidInput([f"{sink.root}: no manifest found (manifest/*.parquet); is this an output?"])
    found = read_each(sink, list(parts), lambda key: _read_head(sink, key))  # damaged: skipped, named
    parts = tuple(key for key in parts if key in found)
    heads = [found[key] for key in parts]
    if not heads:
        raise InvalidInput([f"{sink.root}: no readable manifest part; `promptgrid manifest check` says why"])
    keys = pa.concat_tables(
        [
            table.append_column("part", pa.array(np.full(table.num_rows, index, np.int32))).append_column(
                "row", pa.array(np.arange(table.num_rows, dtype=np.int64))
            )
            for index, (_, table) in enumerate(heads)
        ],
        promote_options="default",  # a part without a `split` column has it null
    )
    latest = latest_rows(keys).to_pydict()
    latest["job_id"] = image_ids(pa.table({name: latest[name] for name in _id_columns(latest)}))
    wanted = set(check_statuses(statuses))
    picked: dict[int, list[int]] = {}
    stamps: dict[str, str] = {}
    splits: set[str] = set()
    given = latest.get(_SPLIT_COLUMN, [None] * len(latest["job_id"]))
    for job, part, row, status, at, split in zip(
        latest["job_id"], latest["part"], latest["row"], latest["status"], latest["completed_at"], given,
        strict=True,
    ):  # fmt: skip
        if status in wanted:
            picked.setdefault(part, []).append(row)
            stamps[str(job)] = f"{status}@{at.isoformat() if at is not None else '-'}"
            if split is not None:
                splits.add(str(split))
    schema = unified_schema([schema for schema, _ in heads])
    scores = read_scores(sink)
    schema = schema if scores is None else join_scores(schema.empty_table(), scores).schema
    arrays = {part: np.array(sorted(rows), dtype=np.int64) for part, rows in picked.items()}
    sandbox = any(is_loopback_url(_api_base(schema)) for schema, _ in heads)
    total = sum(len(rows) for rows in arrays.values())
    return ManifestSource(sink, parts, schema, arrays, total, stamps, frozenset(splits), sandbox, scores)


def image_ids(rows: pa.Table) -> list[str]:
    """Each row's image id: its job id, or `<job_id>-<i>` for a prediction's image `output_index` i > 0
    (as its stored file is named), so every image is exported once and a job's first keeps its old id."""
    jobs = rows["job_id"].to_pylist()
    indexes = rows[_INDEX_COLUMN].to_pylist() if _INDEX_COLUMN in rows.column_names else [None] * len(jobs)
    return [image_id(str(job), index) for job, index in zip(jobs, indexes, strict=True)]


def _id_columns(columns: Mapping[str, Any]) -> list[str]:
    return ["job_id"] + ([_INDEX_COLUMN] if _INDEX_COLUMN in columns else [])


def _api_base(schema: pa.Schema) -> str | None:
    value = (schema.metadata or {}).get(_API_BASE)
    return value.decode("utf-8", "replace") if value else None


def _open_part(sink: Sink, key: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(part_source(sink, key))
    except FileNotFoundError:
        raise ExportFailed(
            f"{sink.root}: manifest part {key} vanished during the export (compacted meanwhile?); "
            "run the export again"
        ) from None


def _read_head(sink: Sink, key: str) -> tuple[pa.Schema, pa.Table]:
    part = _open_part(sink, key)
    names = part.schema_arrow.names
    extra = [name for name in (_SPLIT_COLUMN, _INDEX_COLUMN) if name in names]
    columns = _SELECT_COLUMNS + extra
    return part.schema_arrow, part.read(columns=columns)


def unified_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for every part: columns in order of first appearance; a type the parts disagree on is
    promoted (int32 and int64 -> int64), or else read as text. Image locations are always present."""
    by_name: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            by_name.setdefault(field.name, []).append(field.type)
    fields = [pa.field(name, _common_type(name, types)) for name, types in by_name.items()]
    names = [field.name for field in fields]
    if "image_key" not in names:
        at = names.index("image_uri") + 1 if "image_uri" in names else len(fields)
        fields.insert(at, pa.field("image_key", pa.string()))
    return pa.schema(fields)


def _common_type(name: str, types: list[pa.DataType]) -> pa.DataType:
    if all(kind == types[0] for kind in types):
        return types[0]
    try:
        schemas = [pa.schema([pa.field(name, kind)]) for kind in types]
        return pa.unify_schemas(schemas, promote_options="permissive").field(name).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.string()


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table with exactly `schema`'s columns, in its order and types (missing ones null)."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table[field.name]
            columns.append(column if column.type == field.type else column.cast(field.type, safe=False))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def check_where(schema: pa.Schema, where: str | None) -> None:
    """Bind `where` against the manifest's columns before anything is written; InvalidInput when it fails."""
    if where:
        filter_where(schema.empty_table(), where)


def filter_where(table: pa.Table, where: str | None) -> pa.Table:
    """The rows matching an SQL condition on their columns (DuckDB, as backfill's --where); types kept."""
    if not where:
        return table
    import duckdb

    numbered = table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    with duckdb.connect() as db:
        db.register("manifest", numbered)
        try:
            rows = db.sql(f'SELECT "{_ROW}" FROM manifest WHERE ({where}) ORDER BY 1').fetchnumpy()[_ROW]
        except duckdb.Error as exc:
            raise InvalidInput([f"--where {where!r}: {exc}"]) from None
    return table.take(pa.array(np.asarray(rows, dtype=np.int64)))


@dataclass(frozen=True)
class RowBatch:
    """Rows that passed the filter, and how many picked rows were examined to find them."""

    rows: pa.Table
    examined: int


def iter_batches(source: ManifestSource, where: str | None, batch_rows: int = 1024) -> Iterator[RowBatch]:
    """The picked rows, part by part in manifest order, image locations resolved, conformed to the source's
    schema, `where` applied batch by batch (so it sees one row at a time: a condition, not an aggregate)."""
    for index, key in enumerate(source.parts):
        picked = source.picked.get(index)
        if picked is None or not len(picked):
            continue
        part = _open_part(source.sink, key)
        offset = 0
        for batch in part.iter_batches(batch_size=batch_rows):
            end = offset + batch.num_rows
            local = picked[(picked >= offset) & (picked < end)] - offset
            offset = end
            if not len(local):
                continue
            table = pa.Table.from_batches([batch]).take(pa.array(local))
            table = resolve_image_locations(table, source.sink.root)
            if source.scores is not None:
                table = join_scores(table, source.scores)
            table = conform(table, source.schema)
            yield RowBatch(filter_where(table, where), len(local))
