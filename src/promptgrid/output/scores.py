"""The scores table stored in an output: `scores/*.parquet` parts written, read back and joined onto rows.

A part holds one scorer's rows: the image's key (`job_id`, `output_index`, and the `sha256` of the bytes
that were scored), `scorer`, `scorer_version`, `scored_at`, then the scorer's metric columns. Parts are
immutable and uniquely named, so a crash loses at most the part being written. Reading keeps, per image
and scorer, the row scored last, and lays the scorers side by side: one wide row per image.

Rows are joined on the image's key including its hash, so a score never outlives the image it describes:
an image stored again (another success of the same job) is unscored until `promptgrid score` runs again.
A manifest without `output_index` (one image per job) joins as output 0.
"""

from __future__ import annotations

import io
import secrets
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from promptgrid.output.sinks import Sink

SCORES_PREFIX = "scores/"
IMAGE_KEY = ("job_id", "output_index", "sha256")
META_COLUMNS = (*IMAGE_KEY, "scorer", "scorer_version", "scored_at")
# Stored for the scorers' own use (near-duplicate groups are derived from it), not joined onto rows: an
# export with `--dedup` adds a `phash` column of its own.
HIDDEN_COLUMNS = ("phash",)
_ROW = "__promptgrid_row"


def score_part_key(scorer: str, suffix: str | None = None) -> str:
    """A new part's key: the scorer, then a UTC stamp and a random token (or a given suffix)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    return f"{SCORES_PREFIX}{scorer}-{suffix or stamp + '-' + secrets.token_hex(4)}.parquet"


def write_score_part(sink: Sink, key: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    sink.put_bytes(key, buffer.getvalue(), "application/vnd.apache.parquet")


def score_part_keys(sink: Sink) -> list[str]:
    return sorted(key for key in sink.list_keys(SCORES_PREFIX) if key.endswith(".parquet"))


def read_score_rows(sink: Sink) -> pa.Table | None:
    """Every part's rows, the latest per image and scorer; None when the output has no scores."""
    tables = []
    for key in score_part_keys(sink):
        try:
            tables.append(pq.read_table(io.BytesIO(sink.get_bytes(key))))
        except (OSError, ValueError, pa.ArrowException):
            continue  # a part written half (a crash): its images are simply scored again
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="permissive")
    order = pc.sort_indices(table, [("scored_at", "descending")])
    table = table.take(order)
    seen: set[tuple[object, ...]] = set()
    keep = []
    for image in zip(*(table[name].to_pylist() for name in (*IMAGE_KEY, "scorer")), strict=True):
        keep.append(image not in seen)
        seen.add(image)
    return table.filter(pa.array(keep))


def wide_scores(rows: pa.Table) -> pa.Table:
    """One row per image, each scorer's metric columns side by side (scorer bookkeeping left out)."""
    wide: pa.Table | None = None
    for scorer in sorted(set(rows["scorer"].to_pylist())):
        part = rows.filter(pc.equal(rows["scorer"], scorer))
        metrics = [name for name in part.column_names if name not in (*META_COLUMNS, *HIDDEN_COLUMNS)]
        metrics = [name for name in metrics if part[name].null_count < part.num_rows]
        part = part.select([*IMAGE_KEY, *metrics])
        wide = part if wide is None else wide.join(part, list(IMAGE_KEY), join_type="full outer")
    assert wide is not None
    return wide


def read_scores(sink: Sink) -> pa.Table | None:
    """The output's scores, one wide row per image; None when nothing was scored yet."""
    rows = read_score_rows(sink)
    return None if rows is None else wide_scores(rows)


def with_scores(table: pa.Table, sink: Sink) -> pa.Table:
    """Manifest rows with their images' score columns appended (null where unscored), order kept.

    A score column named like a manifest column is added as `score_<name>`. Without scores, the table
    comes back as it was.
    """
    scores = read_scores(sink)
    return table if scores is None else join_scores(table, scores)


def join_scores(table: pa.Table, scores: pa.Table) -> pa.Table:
    """`with_scores` with the scores already read (an export joins every batch against one reading)."""
    renamed = [
        f"score_{name}" if name in table.column_names and name not in IMAGE_KEY else name
        for name in scores.column_names
    ]
    scores = scores.rename_columns(renamed)
    left = table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    if "output_index" not in left.column_names:
        left = left.append_column("output_index", pa.array(np.zeros(table.num_rows, np.int64)))
    # An image without a recorded hash was scored under "" (promptgrid.score.stage.row_key).
    hashes = pc.fill_null(left["sha256"].cast(pa.string()), "")
    left = left.set_column(left.column_names.index("sha256"), "sha256", hashes)
    left = left.select([*IMAGE_KEY, _ROW]).cast(
        pa.schema([scores.schema.field(name) for name in IMAGE_KEY] + [pa.field(_ROW, pa.int64())])
    )
    joined = left.join(scores, list(IMAGE_KEY), join_type="left outer").sort_by(_ROW)
    metrics = [name for name in scores.column_names if name not in IMAGE_KEY]
    for name in metrics:
        table = table.append_column(name, joined[name])
    return table


def metric_columns(table: pa.Table, manifest_columns: list[str]) -> list[str]:
    """The numeric score columns `with_scores` added to a table of manifest rows."""
    return [
        field.name
        for field in table.schema
        if field.name not in manifest_columns
        and (pa.types.is_floating(field.type) or pa.types.is_integer(field.type))
    ]


def score_names(scores: pa.Table | None) -> list[str]:
    """The metric columns of a wide scores table (none without one)."""
    return [] if scores is None else [name for name in scores.column_names if name not in IMAGE_KEY]


def describe_scores(scores: pa.Table | None) -> list[str]:
    """A Markdown table of each numeric score's count, mean, min and max, for a dataset card."""
    if scores is None:
        return []
    lines = [
        f"Scores of the source output's {scores.num_rows} scored images (`promptgrid score`):",
        "",
        "| score | images | mean | min | max |",
        "|---|---|---|---|---|",
    ]
    for name in metric_columns(scores, list(IMAGE_KEY)):
        column = scores[name].drop_null()
        if len(column):
            mean, low, high = pc.mean(column).as_py(), pc.min(column).as_py(), pc.max(column).as_py()
            lines.append(f"| `{name}` | {len(column)} | {mean:.4g} | {low:.4g} | {high:.4g} |")
    return lines
