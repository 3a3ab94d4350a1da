"""The manifest's columns, declared once, and the row a job's outcome becomes.

The base columns are `MANIFEST_SCHEMA`. A grid's carried columns vary from grid to grid: each is appended
after the base columns as a string column under its own name (`carried_<name>` if it would shadow a base
column), and the original typed values are kept as JSON in the `carried` column. A prompt rendered from a
template adds its variables the same way (all of them also as JSON in `variables`, the template in
`template`). Parts from different runs therefore differ only by which string columns they add, so they unify.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from promptgrid.tasks.models.catalog import INPUT_NAMES
from promptgrid.types import Job, JobOutcome, JobStatus

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
        ("image_uri", pa.string()),  # where the image was written (absolute)
        ("image_key", pa.string()),  # the image's key inside the output, resolved against where it is now
        ("sha256", pa.string()),
        ("bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("carried", pa.string()),  # the grid's carried columns as one JSON object, values typed
        ("template", pa.string()),  # the template the prompt was rendered from, if any
        ("variables", pa.string()),  # the template's variables as one JSON object of text values
    ]
)
BASE_COLUMNS = tuple(MANIFEST_SCHEMA.names)
STATUS_COLUMNS = ("job_id", "status", "completed_at", "prediction_id")
_OUTCOME_FIELDS = (
    *("error_code", "error_message", "prediction_id", "attempts", "api_requests", "queued_at"),
    *("submitted_at", "completed_at", "predict_time_s", "cost_usd", "sha256", "bytes", "width", "height"),
)
assert set(INPUT_NAMES) <= set(BASE_COLUMNS), "every model input has a manifest column"


def carried_column_name(name: str) -> str:
    """The manifest column for a carried grid column: its own name unless a base column already has it."""
    name = str(name)
    return f"carried_{name}" if name in BASE_COLUMNS or name.startswith("carried_") else name


def outcome_row(
    job: Job, outcome: JobOutcome, image_uri: str | None, run_id: str, image_key: str | None = None
) -> dict[str, Any]:
    """One manifest row: the outcome, the job's inputs, and its carried columns (flattened and as JSON)."""
    row: dict[str, Any] = {"run_id": run_id, "job_id": job.job_id, "status": JobStatus(outcome.status).value}
    for name in _OUTCOME_FIELDS:
        row[name] = getattr(outcome, name)
    for name in ("queued_at", "submitted_at", "completed_at"):
        row[name] = _as_utc(row[name])
    row.update(model=job.model, version=job.version, image_uri=image_uri, image_key=image_key)
    for name in INPUT_NAMES:
        row[name] = job.inputs.get(name)
    row["carried"] = json.dumps(dict(job.carried), default=str, ensure_ascii=False) if job.carried else None
    for name, value in job.carried.items():
        row[carried_column_name(name)] = _as_text(value)
    row["template"] = job.template
    row["variables"] = json.dumps(dict(job.variables), ensure_ascii=False) if job.variables else None
    for name, value in job.variables.items():  # a grid column that filled a variable holds the same text
        row[carried_column_name(name)] = value
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
