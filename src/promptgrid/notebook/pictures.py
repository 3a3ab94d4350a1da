"""Pictures from a manifest: one job's stored image, and contact sheets drawn by the report's own code."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from PIL import Image, UnidentifiedImageError

from promptgrid.errors import InvalidInput
from promptgrid.locations import split_s3_uri
from promptgrid.output.manifest.rows import row_image_id
from promptgrid.output.sinks import Sink, open_sink
from promptgrid.report.layout import build_grids, sweep_params
from promptgrid.report.sheets import draw_contact_sheet
from promptgrid.report.thumbnails import thumbnail_pixels
from promptgrid.types import JobStatus


class ManifestRow(Protocol):
    """A manifest row: a row of `read_manifest`'s DataFrame (`df.iloc[0]`, `df.loc[...]`) or a plain dict."""

    def items(self) -> Iterable[tuple[Any, Any]]: ...


SHEET_GAP_PX = 12  # between the sheets of several prompts, stacked top to bottom
READ_THREADS = 4  # images come from a folder or S3: a few reads in flight keep it moving
_UNREADABLE = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


class _ImageReader:
    """Reads images by their resolved `image_uri`: a local path, or s3://bucket/key through one client per
    bucket (configured by the standard AWS chain, as the run's output was)."""

    def __init__(self) -> None:
        self._buckets: dict[str, Sink] = {}
        self._lock = threading.Lock()

    def read(self, uri: str) -> bytes:
        if not uri.startswith("s3://"):
            return Path(uri.removeprefix("file://")).read_bytes()
        bucket, key = split_s3_uri(uri)
        with self._lock:
            if bucket not in self._buckets:
                self._buckets[bucket] = open_sink(f"s3://{bucket}")
            sink = self._buckets[bucket]
        return sink.get_bytes(key)


def open_image(row: ManifestRow) -> Image.Image:
    """The stored picture of one manifest row, e.g. `open_image(df.iloc[0])`, read from wherever the output
    is now (a folder or S3). Shows inline in Jupyter.

    Raises InvalidInput for a row without an image (its status and error code say why); a stored image that
    has gone missing raises the store's FileNotFoundError.
    """
    values = _as_dict(row)
    uri = values.get("image_uri")
    if values.get("status") != JobStatus.SUCCESS or not uri:
        reason = values.get("error_code") or values.get("error_message") or "no image recorded"
        job, status = values.get("job_id"), values.get("status")
        raise InvalidInput([f"job {job}: status {status} has no image ({reason})"])
    with Image.open(io.BytesIO(_ImageReader().read(str(uri)))) as image:
        image.load()
        return image.copy()


def contact_sheet(
    df: pd.DataFrame, rows: str | None = None, cols: str | None = None, *, tile_px: int = 160
) -> Image.Image:
    """A contact sheet of the DataFrame's jobs, drawn as `promptgrid report` draws its PNG sheets.

    `cols` is the parameter laid out across and `rows` the one down (any swept input such as `cfg` or
    `steps`, `seed`, or a grid column); left out, they are the first parameters that vary, as in the report.
    Each cell holds the jobs that share those two values side by side (seeds, other swept values); a job
    without an image is a box naming its status and error code. With several prompts in the DataFrame, one
    sheet per prompt is stacked top to bottom. So its width follows the values of `cols` and its height the
    values of `rows` (times the prompts). Filter the DataFrame first to draw a subset.
    """
    _check_axes(list(map(str, df.columns)), rows, cols)
    records = _records(df)
    if not records:
        raise InvalidInput(["contact_sheet: the DataFrame has no rows to draw"])
    thumbnails = _thumbnails(records)
    sheets = []
    for grid in build_grids(records, cols, rows):
        with Image.open(io.BytesIO(draw_contact_sheet(grid, thumbnails, tile_px))) as drawn:
            sheets.append(drawn.convert("RGB"))
    return _stack(sheets)


def _check_axes(columns: Sequence[str], rows: str | None, cols: str | None) -> None:
    allowed = sweep_params(columns)
    problems = [
        f"contact_sheet: {argument}={name!r} is not a parameter in the manifest; choose one of: "
        f"{', '.join(allowed)}"
        for argument, name in (("cols", cols), ("rows", rows))
        if name is not None and name not in allowed
    ]
    if cols is not None and cols == rows:
        problems.append(f"contact_sheet: rows and cols both name {cols!r}; choose two different parameters")
    if problems:
        raise InvalidInput(problems)


def _as_dict(row: ManifestRow) -> dict[str, Any]:
    return {str(name): None if _missing(value) else value for name, value in row.items()}


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array is a value, never "missing"
        return False


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as dicts, pandas' missing markers (NA, NaN, NaT) as None, as the report's rows have them."""
    return [_as_dict(row) for _, row in df.astype(object).iterrows()]


def _thumbnails(records: list[dict[str, Any]]) -> dict[str, Image.Image]:
    """Each successful job's picture at thumbnail size; one that cannot be read is left out (and drawn as a
    box saying so)."""
    reader = _ImageReader()
    done = [row for row in records if row.get("status") == JobStatus.SUCCESS and row.get("image_uri")]

    def load(row: dict[str, Any]) -> Image.Image | None:
        try:
            return thumbnail_pixels(reader.read(str(row["image_uri"])))
        except _UNREADABLE:
            return None

    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        pictures = list(pool.map(load, done))
    return {row_image_id(row): picture for row, picture in zip(done, pictures, strict=True) if picture}


def _stack(sheets: list[Image.Image]) -> Image.Image:
    if len(sheets) == 1:
        return sheets[0]
    width = max(sheet.width for sheet in sheets)
    height = sum(sheet.height for sheet in sheets) + SHEET_GAP_PX * (len(sheets) - 1)
    stacked = Image.new("RGB", (width, height), (255, 255, 255))
    top = 0
    for sheet in sheets:
        stacked.paste(sheet, (0, top))
        top += sheet.height + SHEET_GAP_PX
    return stacked
