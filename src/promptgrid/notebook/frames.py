"""An output's manifest as a pandas DataFrame: one row per image by default, every column typed.

The rows are the manifest reader's (`tasks.output.manifest.read`): every part unified, each job's latest row
chosen as `manifest show` counts it, image locations resolved against where the output is now. Columns keep
their manifest types as pandas' nullable ones (a missing `steps` is `<NA>`, not a float NaN), and a grid's
own columns get back their types (the manifest stores them as text, beside a JSON copy of a Parquet grid's
typed values): a column whose values are all numbers or booleans is one, any other stays text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from promptgrid.errors import InvalidInput
from promptgrid.output.manifest.read import latest_rows, part_keys, read_parts
from promptgrid.output.manifest.rows import BASE_COLUMNS, carried_column_name
from promptgrid.output.scores import with_scores
from promptgrid.output.sinks import open_sink
from promptgrid.run_summary import RunSummary
from promptgrid.spec.schema import SweepSpec
from promptgrid.types import JobStatus

# Where a manifest is: an output (folder or s3://bucket/prefix), the spec naming it, or a run's summary.
OutputSource: TypeAlias = str | os.PathLike[str] | SweepSpec | RunSummary

_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_PANDAS_TYPES: dict[pa.DataType, Any] = {
    pa.string(): pd.StringDtype(),
    pa.large_string(): pd.StringDtype(),
    pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(),
    pa.float64(): pd.Float64Dtype(),
    pa.bool_(): pd.BooleanDtype(),
}


def read_manifest(
    output: OutputSource,
    *,
    latest: bool = True,
    status: str | Iterable[str] | None = None,
    scores: bool = False,
) -> pd.DataFrame:
    """The manifest of an output as a DataFrame: with `latest` (the default) one row per image (a job, or
    one of a `num_images` job's images by `output_index`), its latest.

    `output` is a folder, `s3://bucket/prefix`, a loaded spec (its `output`) or `run`'s summary. A job's
    latest row is the one `promptgrid manifest show` counts (a success wins over failures, then the latest);
    `latest=False` gives every row ever written, retries included. `status` keeps jobs whose (latest) status
    is the one named, or any of several: "success", "failed", "timed_out", "cancelled".

    Columns: the job (`job_id`, `model`, `prompt`, `cfg`, `steps`, `seed`, ... as pandas nullable types),
    the outcome (`status`, `error_code`, `error_message`, `attempts`, `api_requests`), timings (`queued_at`,
    `submitted_at`, `completed_at` in UTC, `predict_time_s`), the image (`image_uri` where it is now,
    `image_key` inside the output, `sha256`, `bytes`, `width`, `height`), then the grid's own columns;
    with `scores`, each image's score columns (`promptgrid score`; docs/scores.md), null where unscored.
    """
    root = _output_of(output)
    wanted = _statuses(status)
    sink = open_sink(root)
    if not part_keys(sink):
        raise InvalidInput([f"{root}: no manifest found (manifest/*.parquet); run the spec first"])
    table = read_parts(sink)
    if latest:
        table = latest_rows(table)
    if wanted is not None:
        table = table.filter(pc.is_in(table["status"], value_set=pa.array(wanted, pa.string())))
    if scores:
        table = with_scores(table, sink)
    frame = table.to_pandas(types_mapper=_PANDAS_TYPES.get)
    return _typed_grid_columns(frame)


def _output_of(output: OutputSource) -> str:
    if isinstance(output, RunSummary | SweepSpec):
        return output.output
    return os.fspath(output)


def _statuses(status: str | Iterable[str] | None) -> list[str] | None:
    if status is None:
        return None
    wanted = [status] if isinstance(status, str) else list(status)
    allowed = [member.value for member in JobStatus]
    unknown = [value for value in wanted if value not in allowed]
    if unknown:
        shown = ", ".join(repr(value) for value in unknown)
        raise InvalidInput([f"status {shown} is not a job status; expected one of {', '.join(allowed)}"])
    return wanted


def _typed_grid_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Each of the grid's own columns (and template variables) as a number or boolean where all its values
    are: the types a Parquet grid gave (kept in the `carried` JSON), or numbers written as text in a CSV."""
    typed: dict[str, list[Any]] = {}
    if "carried" in frame.columns and frame["carried"].notna().any():
        decoded = [json.loads(text) if isinstance(text, str) else {} for text in frame["carried"]]
        for name in dict.fromkeys(name for values in decoded for name in values):
            typed[carried_column_name(name)] = [values.get(name) for values in decoded]
    for column in [str(name) for name in frame.columns if name not in BASE_COLUMNS]:
        values = [_as_number(value) for value in typed.get(column, frame[column].tolist())]
        dtype = _dtype_of(values)
        if dtype is None:
            continue
        try:
            frame[column] = pd.array(values, dtype=cast(Any, dtype))  # the stubs overload each literal
        except (TypeError, ValueError, OverflowError):  # e.g. an integer beyond 64 bits: kept as text
            continue
    return frame


def _as_number(value: Any) -> Any:
    """Text that is plainly a number (`12`, `-0.5`, `1e3`; not `007` or ` 12`) as that number."""
    if isinstance(value, str):
        if _INTEGER.fullmatch(value):
            return int(value)
        if _DECIMAL.fullmatch(value):
            return float(value)
    return None if value is pd.NA or (isinstance(value, float) and value != value) else value


def _dtype_of(values: list[Any]) -> str | None:
    """A nullable pandas type that holds every value as it is; None to keep the column as text."""
    present = [value for value in values if value is not None]
    if not present:
        return None
    if all(isinstance(value, bool) for value in present):
        return "boolean"
    if any(isinstance(value, bool) for value in present):
        return None
    if all(isinstance(value, int) for value in present):
        return "Int64"
    if all(isinstance(value, int | float) for value in present):
        return "Float64"
    return None
