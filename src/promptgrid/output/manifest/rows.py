"""The manifest's columns, declared once, and the row a job's outcome becomes.

The base columns are `MANIFEST_SCHEMA`: the SD3.5 family's inputs have typed columns of their own (`cfg`,
`steps`, ...), which any model's input of that name and type fills too. Every job's inputs are also kept
exactly as sent, as canonical JSON in `inputs` (backfill rebuilds jobs from it). An input without a base
column gets a column `input_<name>` after the base columns: a double for numbers, a boolean, or a string
(JSON for lists and objects), so `--where "input_guidance > 3"` works on any model's inputs.

A grid's carried columns vary from grid to grid: each is appended as a string column under its own name
(`carried_<name>` if it would shadow a base column or an input column), and the original typed values are
kept as JSON in the `carried` column. A prompt rendered from a template adds its variables the same way
(all of them also as JSON in `variables`, the template in `template`). Parts from different runs therefore
differ only by which columns they add, so they unify; parts written before a column existed read it as null.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from promptgrid.redact import scrub_any
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
        ("model", pa.string()),  # promptgrid's name for the model (the dashed slug)
        ("resolved_model", pa.string()),  # the slug the create was sent with: the one the API knows
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
        ("width", pa.int32()),  # the image's real size and format, read from its bytes
        ("height", pa.int32()),
        ("image_format", pa.string()),
        ("size_mismatch", pa.bool_()),  # the real size differs from the expected one (null: none expected)
        ("inputs", pa.string()),  # every input as sent, canonical JSON
        ("carried", pa.string()),  # the grid's carried columns as one JSON object, values typed
        ("template", pa.string()),  # the template the prompt was rendered from, if any
        ("variables", pa.string()),  # the template's variables as one JSON object of text values
        # Which of its prediction's images the row is (0..n-1; `num_images` > 1 makes n rows); parts
        # written before this column read it as null, which means 0.
        ("output_index", pa.int32()),
    ]
)
BASE_COLUMNS = tuple(MANIFEST_SCHEMA.names)
# The typed input columns (the SD3.5 family's inputs, the manifest's first models).
INPUT_COLUMNS = (
    *("prompt", "aspect_ratio", "cfg", "steps", "seed", "image", "prompt_strength", "output_format"),
    "output_quality",
)
STATUS_COLUMNS = ("job_id", "status", "completed_at", "prediction_id")
_OUTCOME_FIELDS = (
    *("error_code", "error_message", "prediction_id", "attempts", "api_requests", "queued_at"),
    *("submitted_at", "completed_at", "predict_time_s", "cost_usd", "sha256", "bytes", "width", "height"),
    *("image_format", "size_mismatch"),
)
_IMAGE_FIELDS = ("sha256", "bytes", "width", "height", "image_format", "size_mismatch")
INPUT_PREFIX = "input_"


def image_id(job_id: str, output_index: int | None = 0) -> str:
    """An image's id: its job id, or `<job_id>-<i>` for its prediction's image i > 0 (as its file is named),
    so every image of a `num_images` job is told apart and a job's first image keeps the job's id."""
    return f"{job_id}-{int(output_index)}" if output_index else str(job_id)


def row_image_id(row: Mapping[str, Any]) -> str:
    """The image id of a manifest row (a row without `output_index` is its job's first image)."""
    return image_id(str(row["job_id"]), row.get("output_index"))


def carried_column_name(name: str) -> str:
    """The column for a carried grid column: its own name unless a base or input column may use it."""
    name = str(name)
    reserved = name in BASE_COLUMNS or name.startswith(("carried_", INPUT_PREFIX))
    return f"carried_{name}" if reserved else name


def _fits(value: Any, kind: pa.DataType) -> bool:
    """Whether an input's value belongs in a typed base column without losing anything."""
    if pa.types.is_string(kind):
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if pa.types.is_floating(kind):
        return True
    bits = kind.bit_width - 1
    return isinstance(value, int) and -(2**bits) <= value < 2**bits


def _input_columns(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Each input under its base column where it fits, else under `input_<name>`."""
    columns: dict[str, Any] = {}
    for name, value in inputs.items():
        if name in INPUT_COLUMNS and (value is None or _fits(value, MANIFEST_SCHEMA.field(name).type)):
            columns[name] = value
        else:
            columns[INPUT_PREFIX + name] = value
    return columns


def outcome_row(
    job: Job,
    outcome: JobOutcome,
    image_uri: str | None,
    run_id: str,
    image_key: str | None = None,
    output_index: int = 0,
) -> dict[str, Any]:
    """One manifest row: the outcome, the job's inputs, and its carried columns (flattened and as JSON).

    `output_index` picks which of the outcome's images the row describes. A prediction's cost is split
    evenly over its images' rows, so the column still sums to what was billed.
    """
    row: dict[str, Any] = {"run_id": run_id, "job_id": job.job_id, "status": JobStatus(outcome.status).value}
    for name in _OUTCOME_FIELDS:
        row[name] = getattr(outcome, name)
    if output_index:
        image = outcome.output_image(output_index)
        row.update({name: getattr(image, name) for name in _IMAGE_FIELDS})
    count = outcome.output_count
    if count > 1 and outcome.cost_usd is not None:
        row["cost_usd"] = outcome.cost_usd / count
    row["output_index"] = output_index
    for name in ("queued_at", "submitted_at", "completed_at"):
        row[name] = _as_utc(row[name])
    row.update(model=job.model, version=job.version, image_uri=image_uri, image_key=image_key)
    row.update(resolved_model=outcome.model_slug)
    row.update(_input_columns(job.inputs))
    row["inputs"] = json.dumps(dict(job.inputs), sort_keys=True, ensure_ascii=False, default=str)
    row["carried"] = json.dumps(dict(job.carried), default=str, ensure_ascii=False) if job.carried else None
    for name, value in job.carried.items():
        row[carried_column_name(name)] = _as_text(value)
    row["template"] = job.template
    row["variables"] = json.dumps(dict(job.variables), ensure_ascii=False) if job.variables else None
    for name, value in job.variables.items():  # a grid column that filled a variable holds the same text
        row[carried_column_name(name)] = value
    # The key may be anywhere a grid, a wildcard file or the API put text: never into the manifest.
    return {name: scrub_any(value) for name, value in row.items()}


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


def _input_column_type(values: list[Any]) -> pa.DataType:
    present = [value for value in values if value is not None]
    if present and all(isinstance(value, bool) for value in present):
        return pa.bool_()
    if present and all(isinstance(value, int | float) and not isinstance(value, bool) for value in present):
        return pa.float64()
    return pa.string()


def _as_input_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def rows_to_table(rows: list[dict[str, Any]], metadata: Mapping[str, str] | None = None) -> pa.Table:
    """Rows -> a table with the base schema plus the input and carried columns the rows have."""
    extra = list(dict.fromkeys(name for row in rows for name in row if name not in BASE_COLUMNS))
    fields = []
    for name in extra:
        kind = _input_column_type([row.get(name) for row in rows]) if name.startswith(INPUT_PREFIX) else None
        fields.append(pa.field(name, kind or pa.string()))
    schema = pa.schema([*MANIFEST_SCHEMA, *fields])
    columns = {}
    for field in schema:
        values = [row.get(field.name) for row in rows]
        if field.name in BASE_COLUMNS:
            values = [_coerce(value, field.type) for value in values]
        elif pa.types.is_floating(field.type):
            values = [None if value is None else float(value) for value in values]
        elif field.name.startswith(INPUT_PREFIX) and pa.types.is_string(field.type):
            values = [_as_input_text(value) for value in values]
        columns[field.name] = pa.array(values, type=field.type)
    table = pa.table(columns, schema=schema)
    return table.replace_schema_metadata(dict(metadata or {}))
