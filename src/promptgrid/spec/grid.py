"""Reading prompt grids (CSV or Parquet) in batches of columns, each row numbered as a person finds it.

A row is named `line N` of a CSV file as an editor counts it (header = line 1, quoted multi-line fields
counted), `row N` (1-based) of a Parquet file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from promptgrid.errors import InvalidInput
from promptgrid.models.schema import NUMERIC, ModelSchema, names_of
from promptgrid.spec.problems import ProblemLog, display_path

if TYPE_CHECKING:
    from _csv import Reader as CsvReader

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class GridContext:
    """What checking a grid needs from its spec: the file, the models rows run on, where images live."""

    path: Path
    models: tuple[ModelSchema, ...]
    base_dir: Path
    template: bool = False  # the spec has a template: the prompt column is optional, an empty cell uses it

    @property
    def display(self) -> str:
        return display_path(self.path)

    @property
    def input_names(self) -> tuple[str, ...]:
        """A column of one of these names is an input (of the models that have it); any other is carried."""
        return names_of(self.models)

    def owners(self, name: str) -> tuple[ModelSchema, ...]:
        """The models that have this input."""
        return tuple(model for model in self.models if name in model.properties)

    def is_text(self, name: str) -> bool:
        return any(model.is_text(name) for model in self.owners(name))


@dataclass
class GridBatch:
    """Consecutive rows of a grid: normalised input values (None = not set) and the carried columns."""

    numbers: Sequence[int]  # per row: the CSV line or the Parquet row number, as a person counts
    unit: str  # "line" or "row"
    inputs: dict[str, list[Any]]
    carried: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numbers)

    def label(self, row: int) -> str:
        return f"{self.unit} {self.numbers[row]}"


@dataclass(frozen=True)
class GridLayout:
    """A grid's columns, split into model inputs and columns carried into the manifest."""

    columns: tuple[str, ...]
    kind: str  # "csv" or "parquet"
    input_names: tuple[str, ...] = ()

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(name for name in self.columns if name in self.input_names)

    @property
    def carried_columns(self) -> tuple[str, ...]:
        return tuple(name for name in self.columns if name not in self.input_names)


def read_layout(ctx: GridContext) -> GridLayout:
    """The grid's columns, after checking the file exists, is a known format, and has a usable header."""
    shown = ctx.display
    if not ctx.path.is_file():
        reason = "is a directory" if ctx.path.is_dir() else "does not exist"
        raise InvalidInput([f"{shown}: the prompts file {reason}"])
    suffix = ctx.path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        columns, kind = _csv_header(ctx), "csv"
    elif suffix in PARQUET_SUFFIXES:
        columns, kind = _parquet_header(ctx), "parquet"
    else:
        known = "expected .csv, .tsv or .parquet"
        raise InvalidInput([f"{shown}: unknown grid format {suffix or '(none)'!r}; {known}"])
    log = ProblemLog()
    _check_columns(shown, columns, log, prompt_needed=not ctx.template)
    log.raise_if_any()
    return GridLayout(tuple(columns), kind, ctx.input_names)


def _check_columns(shown: str, columns: Sequence[str], log: ProblemLog, prompt_needed: bool = True) -> None:
    seen: set[str] = set()
    for number, name in enumerate(columns, 1):
        if not str(name).strip():
            log.add(f"{shown}: column {number} has no name")
        elif name in seen:
            log.add(f"{shown}: column {name!r} appears more than once")
        seen.add(name)
    if "prompt" not in columns and prompt_needed:
        found = ", ".join(repr(name) for name in columns)
        near = any(str(name).strip().lower() == "prompt" for name in columns)
        hint = "; names are exact: lower case, no spaces" if near else ""
        log.add(f"{shown}: no 'prompt' column (found {found}); the grid needs one prompt per row{hint}")


def _open_csv(ctx: GridContext) -> io.TextIOWrapper:
    # utf-8-sig: spreadsheets often save a byte-order mark, which must not become part of the first name.
    return open(ctx.path, encoding="utf-8-sig", newline="")


def _csv_reader(handle: io.TextIOWrapper, ctx: GridContext) -> CsvReader:
    # strict: a quote left open swallows the rest of the file as one field; say so instead.
    return csv.reader(handle, delimiter=CSV_SUFFIXES[ctx.path.suffix.lower()], strict=True)


def _csv_header(ctx: GridContext) -> list[str]:
    try:
        with _open_csv(ctx) as handle:
            for record in _csv_reader(handle, ctx):
                if record:
                    return record
    except UnicodeDecodeError:
        _raise_encoding_problems(ctx)
    except csv.Error as exc:
        raise InvalidInput([f"{ctx.display} line 1: cannot read the header ({exc})"]) from None
    raise InvalidInput([f"{ctx.display}: the file is empty; expected a header line with a 'prompt' column"])


def _raise_encoding_problems(ctx: GridContext) -> None:
    log = ProblemLog()
    with open(ctx.path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                byte = line[exc.start]
                log.add(
                    f"{ctx.display} line {number}: byte 0x{byte:02x} at position {exc.start + 1} is not "
                    "UTF-8; save the file as UTF-8"
                )
    if not log.total:
        log.add(f"{ctx.display}: the file is not valid UTF-8; save it as UTF-8")
    log.raise_if_any()


def csv_batches(
    ctx: GridContext, layout: GridLayout, batch_size: int, log: ProblemLog
) -> Iterator[tuple[Sequence[int], dict[str, pa.Array]]]:
    """Batches of (line numbers, {column: arrow strings}); records with the wrong field count are problems."""
    width = len(layout.columns)
    lines: list[int] = []
    records: list[list[str]] = []
    try:
        with _open_csv(ctx) as handle:
            reader = _csv_reader(handle, ctx)
            header_seen = False
            for start, record in _numbered_records(reader):
                if not header_seen:
                    header_seen = True
                elif len(record) != width:
                    log.add(
                        f"{ctx.display} line {start}: {len(record)} fields, but the header has {width} "
                        "(quote fields that contain the delimiter)"
                    )
                else:
                    lines.append(start)
                    records.append(record)
                if len(records) >= batch_size:
                    yield lines, _string_columns(layout.columns, records)
                    lines, records = [], []
    except UnicodeDecodeError:
        _raise_encoding_problems(ctx)
    except csv.Error as exc:
        log.add(f"{ctx.display} {exc}")
    if records:
        yield lines, _string_columns(layout.columns, records)


def _numbered_records(reader: CsvReader) -> Iterator[tuple[int, list[str]]]:
    """Non-blank records with the line each starts on (a quoted field may span several lines)."""
    last_line = 0
    try:
        for record in reader:
            start, last_line = last_line + 1, reader.line_num
            if record:
                yield start, record
    except csv.Error as exc:
        hint = "; is a quote left open?" if "end of data" in str(exc) else ""
        raise csv.Error(
            f"line {last_line + 1}: cannot read the record starting there ({exc}{hint})"
        ) from None


def _string_columns(columns: Sequence[str], records: list[list[str]]) -> dict[str, pa.Array]:
    return {name: pa.array([record[i] for record in records], pa.string()) for i, name in enumerate(columns)}


def _parquet_file(ctx: GridContext) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(ctx.path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput([f"{ctx.display}: not a readable Parquet file ({exc})"]) from None


def _parquet_header(ctx: GridContext) -> list[str]:
    schema = _parquet_file(ctx).schema_arrow
    log = ProblemLog()
    for column in schema:
        expected = _type_problem(ctx, column.name, column.type)
        if expected:
            log.add(f"{ctx.display}, column {column.name}: has type {column.type}; expected {expected}")
    log.raise_if_any()
    names: list[str] = list(schema.names)
    return names


def _type_problem(ctx: GridContext, name: str, kind: pa.DataType) -> str | None:
    """What an input column's Parquet type should be instead, or None when it can hold the input."""
    if name not in ctx.input_names or (pa.types.is_null(kind) and name != "prompt"):
        return None
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if ctx.is_text(name):
        return None if text else "text"
    kinds = frozenset().union(*(model.kinds[name] for model in ctx.owners(name))) - {"null"}
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    if kinds and kinds <= NUMERIC:
        return None if numeric or text else "numbers"
    if kinds == {"boolean"}:
        return None if pa.types.is_boolean(kind) or text else "true/false values"
    return None


def parquet_batches(
    ctx: GridContext, columns: Sequence[str], batch_size: int
) -> Iterator[tuple[Sequence[int], dict[str, pa.Array]]]:
    source = _parquet_file(ctx)
    if source.metadata.num_rows == 0:
        raise InvalidInput([f"{ctx.display}: the grid has no data rows"])
    first = 0
    try:
        for batch in source.iter_batches(batch_size=batch_size, columns=list(columns)):
            numbers = range(first + 1, first + batch.num_rows + 1)
            first += batch.num_rows
            yield numbers, {name: batch.column(name) for name in columns}
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput([f"{ctx.display} after row {first}: the file is damaged ({exc})"]) from None
