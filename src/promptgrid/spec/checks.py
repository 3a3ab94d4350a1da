"""Checking every grid cell and spec value against the models' input schemas before anything is sent.

Each input column is checked against every model of the study that has that input: per distinct value with
the model's schema when it has few of them, and with vectorised range checks when it has many (a seed per
row) and the schema says no more than a numeric range, so a million-row grid is checked in seconds.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from promptgrid.errors import InvalidInput
from promptgrid.models.schema import ModelSchema
from promptgrid.spec.grid import (
    GridBatch,
    GridContext,
    csv_batches,
    parquet_batches,
    read_layout,
)
from promptgrid.spec.problems import ProblemLog, describe_problem, display_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Above this many distinct values per batch a column is checked with vectorised ranges, not value by value.
FEW_VALUES = 2048
# Inputs whose allowed range differs within a family (SD3.5 Turbo's steps: 1-10), so a message says whose.
MODEL_SPECIFIC = ("steps",)
_LOOPBACK_HOSTS = ("localhost",)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_image_ref(ref: Any, base_dir: Path) -> str | None:
    """None when `ref` is a usable image reference, else what is allowed.

    https URLs (http only on loopback, for testing), s3://bucket/key URIs, and existing local jpeg, png or
    webp files (relative to the spec file) are allowed.
    """
    allowed = (
        "an https:// URL, an s3://bucket/key URI, or an existing local .jpg/.jpeg/.png/.webp file "
        "(relative to the spec file)"
    )
    if not isinstance(ref, str) or not ref.strip():
        return allowed
    try:
        parts = urlsplit(ref)
    except ValueError:  # e.g. an unclosed [ in an IPv6 host
        return allowed
    if parts.scheme == "https" or parts.scheme == "http":
        host = parts.hostname or ""
        if not host or (parts.scheme == "http" and not _is_loopback(host)):
            return allowed + "; http:// only for 127.0.0.1/localhost"
        return None
    if parts.scheme == "s3":
        return None if parts.netloc and parts.path.strip("/") else allowed
    if parts.scheme and len(parts.scheme) > 1:  # a one-letter scheme is a Windows drive, i.e. a path
        return allowed
    path = Path(ref) if Path(ref).is_absolute() else base_dir / ref
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return allowed
    try:
        exists = path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        exists = False
    return None if exists else f"{allowed}; {display_path(path)} does not exist"


def check_value(models: Sequence[ModelSchema], name: str, raw: Any, base_dir: Path) -> tuple[Any, str | None]:
    """One input value, normalised (None when absent), and what is allowed when it is bad for any model of
    the study that has the input.

    Absent means None, or "" for an input no model requires. The image reference is kept as written.
    """
    owners = [model for model in models if name in model.properties]
    if raw is None or (isinstance(raw, str) and raw == "" and not any(name in m.required for m in owners)):
        return None, None
    if name == "image":
        return raw, check_image_ref(raw, base_dir)
    value = None
    for model in owners:
        value, allowed = model.check_value(name, raw)
        if allowed is not None:
            suffix = f" (model {model.slug})" if len(models) > 1 or name in MODEL_SPECIFIC else ""
            return None, allowed + suffix
    if isinstance(value, float) and value == 0:
        value = 0.0  # -0.0 and 0.0 must give the same job id
    return value, None


def _plain(column: pa.Array) -> pa.Array:
    """Dictionary columns decoded, decimals as floats: the forms check_input understands."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_decimal(column.type):
        column = pc.cast(column, pa.float64())
    return column


def _bad_rows(mask: pa.Array) -> list[int]:
    rows: list[int] = pc.indices_nonzero(mask).to_pylist()
    return rows


def _check_prompts(column: pa.Array, ctx: GridContext, normalise: bool) -> tuple[list[Any] | None, list[int]]:
    """Prompts, vectorised: none empty or only spaces, none outside the lengths any model's schema sets."""
    if pa.types.is_null(column.type):
        return [None] * len(column), list(range(len(column)))
    bad = pc.or_kleene(pc.is_null(column), pc.equal(pc.utf8_trim_whitespace(column), ""))
    lengths = pc.utf8_length(column)
    for model in ctx.owners("prompt"):
        prompt = model.properties["prompt"]
        if isinstance(prompt.get("minLength"), int):
            bad = pc.or_kleene(bad, pc.less(lengths, prompt["minLength"]))
        if isinstance(prompt.get("maxLength"), int):
            bad = pc.or_kleene(bad, pc.greater(lengths, prompt["maxLength"]))
    return column.to_pylist() if normalise else None, _bad_rows(bad.fill_null(True))


def _prompt_allowed(ctx: GridContext) -> str:
    owners = ctx.owners("prompt")
    texts = dict.fromkeys(model.allowed("prompt") for model in owners)
    return " and ".join(texts) if texts else "a non-empty string"


def _numeric_limits(models: Sequence[ModelSchema], name: str) -> tuple[float, float, bool] | None:
    """The range every model having the input accepts (the narrowest), and whether it must be an integer;
    None when some schema says more than a range (then values are checked one by one)."""
    ranges = [model.numeric_range(name) for model in models if name in model.properties]
    if not ranges or any(found is None for found in ranges):
        return None
    known = [found for found in ranges if found is not None]
    low = max(low for low, _, _ in known)
    high = min(high for _, high, _ in known)
    return low, high, any(integer for _, _, integer in known)


def _check_many_numbers(column: pa.Array, name: str, ctx: GridContext) -> tuple[list[Any], list[int]] | None:
    """Vectorised check of a column with many distinct values; None when it is not all numbers."""
    limits = _numeric_limits(ctx.models, name)
    if ctx.is_text(name) or limits is None:
        return None
    try:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.if_else(pc.equal(column, ""), pa.scalar(None, column.type), column)
        numbers = pc.cast(column, pa.float64(), safe=False)
    except pa.ArrowException:
        return None
    low, high, integer = limits
    bad = pc.or_(pc.is_nan(numbers), pc.or_(pc.less(numbers, low), pc.greater(numbers, high)))
    if integer:
        bad = pc.or_(bad, pc.not_equal(numbers, pc.floor(numbers)))
    if integer:
        # NaN and infinity are bad rows already; their value is never used.
        values = [int(v) if v is not None and math.isfinite(v) else None for v in numbers.to_pylist()]
    else:  # adding 0.0 turns -0.0 into 0.0, as check_value does
        values = [None if v is None else v + 0.0 for v in numbers.to_pylist()]
    return values, _bad_rows(bad.fill_null(False))


def _allowed(ctx: GridContext, name: str, raw: Any) -> str:
    return check_value(ctx.models, name, raw, ctx.base_dir)[1] or "a valid value"


def _check_few_values(
    column: pa.Array, distinct: pa.Array, name: str, ctx: GridContext, normalise: bool
) -> tuple[list[Any] | None, dict[int, str]]:
    """Check each distinct value once with check_input, then map verdicts back onto the rows vectorised."""
    verdicts = [check_value(ctx.models, name, raw, ctx.base_dir) for raw in distinct.to_pylist()]
    index = pc.index_in(column, value_set=distinct)  # a null cell finds the null among the distinct values
    values: list[Any] | None = None
    if normalise:
        values = pc.take(pa.array([value for value, _ in verdicts]), index).to_pylist()
    problems: dict[int, str] = {}
    if any(allowed for _, allowed in verdicts):
        for row, position in enumerate(index.to_pylist()):
            allowed = verdicts[position][1]
            if allowed is not None:
                problems[row] = allowed
    return values, problems


def _check_each(column: pa.Array, name: str, ctx: GridContext) -> tuple[list[Any], dict[int, str]]:
    """Check value by value (remembering verdicts): many distinct image references, or numbers as odd text."""
    verdicts: dict[Any, tuple[Any, str | None]] = {}
    values, problems = [], {}
    for row, raw in enumerate(column.to_pylist()):
        key = (type(raw), raw)
        if key not in verdicts:
            verdicts[key] = check_value(ctx.models, name, raw, ctx.base_dir)
        value, allowed = verdicts[key]
        if allowed is not None:
            problems[row] = allowed
        values.append(value)
    return values, problems


def _check_column(
    column: pa.Array, name: str, ctx: GridContext, normalise: bool = True
) -> tuple[list[Any] | None, dict[int, str]]:
    """Normalised values of one input column (None when not asked to `normalise`) and, for bad rows, what
    is allowed."""
    column = _plain(column)
    if name == "prompt":
        values, bad = _check_prompts(column, ctx, normalise)
        bad = [] if ctx.template else bad  # an empty cell takes the spec's template
        allowed = _prompt_allowed(ctx)
        return values, {row: allowed for row in bad}
    distinct = pc.unique(column)
    if len(distinct) <= FEW_VALUES:
        return _check_few_values(column, distinct, name, ctx, normalise)
    checked = _check_many_numbers(column, name, ctx)
    if checked is None:
        return _check_each(column, name, ctx)
    values, bad = checked
    raws = column.take(pa.array(bad, pa.int64())).to_pylist() if bad else []
    return values, {row: _allowed(ctx, name, raw) for row, raw in zip(bad, raws, strict=True)}


def check_batch(
    batch: GridBatch, columns: dict[str, pa.Array], ctx: GridContext, log: ProblemLog, normalise: bool = True
) -> None:
    """Fill `batch.inputs` with normalised input values; each bad cell is logged as a problem."""
    bad_cells: list[tuple[int, str, str]] = []
    for name, column in columns.items():
        if name not in ctx.input_names:
            continue
        values, problems = _check_column(column, name, ctx, normalise)
        if normalise:
            assert values is not None  # every check returns the values when asked to normalise
            batch.inputs[name] = values
        bad_cells.extend((row, name, allowed) for row, allowed in problems.items())
    for row, name, allowed in sorted(bad_cells):
        raw = _plain(columns[name])[row].as_py()
        log.add(describe_problem(f"{ctx.display} {batch.label(row)}", name, raw, allowed))


def iter_grid(
    ctx: GridContext,
    batch_size: int = 50_000,
    *,
    carried: bool = True,
    log: ProblemLog | None = None,
    normalise: bool = True,
) -> Iterator[GridBatch]:
    """The grid's rows in batches, inputs checked and (unless `normalise` is False) normalised.

    With `log`, problems are collected there and reading goes on; without, the first bad batch raises
    InvalidInput (the spec was checked already, so that means the file changed under us).
    """
    layout = read_layout(ctx)
    collect = log if log is not None else ProblemLog()
    wanted = layout.columns if carried else layout.input_columns
    if layout.kind == "csv":
        unit, batches = "line", csv_batches(ctx, layout, batch_size, collect)
    else:
        unit, batches = "row", parquet_batches(ctx, wanted, batch_size)
    rows = 0
    for numbers, columns in batches:
        batch = GridBatch(numbers, unit, {})
        check_batch(batch, columns, ctx, collect, normalise)
        rows += len(batch)
        if log is None:
            collect.raise_if_any()
        if carried:
            batch.carried = {name: columns[name].to_pylist() for name in layout.carried_columns}
        yield batch
    if rows == 0 and collect.total == 0:
        collect.add(f"{ctx.display}: the grid has a header but no data rows")
    if log is None:
        collect.raise_if_any()


def validate_grid(ctx: GridContext, log: ProblemLog) -> int:
    """Check every row of the grid, adding each problem to `log`; the number of rows read."""
    try:
        return sum(len(batch) for batch in iter_grid(ctx, carried=False, log=log, normalise=False))
    except InvalidInput as exc:
        for problem in exc.problems:
            log.add(problem)
        log.total += exc.total - len(exc.problems)
        return 0
