"""WebDataset shards: `SPLIT/00000.tar`, ... holding `KEY.webp|jpg|png` (the image), `KEY.json` (its
manifest row) and `KEY.txt` (the prompt) per sample, beside each shard `SPLIT/00000.parquet` (every
sample's metadata) and `SPLIT/00000_stats.json` (what the shard counted): the layout img2dataset writes.

The tar itself is written by webdataset's `TarWriter`, so the `webdataset` library reads what it wrote;
a sample's key is its job id, which holds no dot (WebDataset splits a file name at the first one).
`KEY.json` leaves out the fields a row has no value for, and every field keeps one JSON type in every
shard (the manifest's columns are conformed to one schema first): a reader that takes its types from the
first shard, as Hugging Face's webdataset builder does, never meets a null it cannot cast.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from webdataset import TarWriter

from promptgrid.export.samples import SampleBatch, exported_names
from promptgrid.export.tally import Tally

CONTENT_TYPE = "application/x-tar"
PARQUET_TYPE = "application/vnd.apache.parquet"
JSON_TYPE = "application/json"
PHASH_FIELD = "phash"
KEY_FIELD = "key"
_SHARD = re.compile(r"^\w+(\.\w+)*/\d{5}\.tar$")


def shard_key(split: str, index: int) -> str:
    return f"{split}/{index:05d}.tar"


def is_shard_key(key: str) -> bool:
    return bool(_SHARD.match(key))


def data_files(split: str) -> str:
    return f"{split}/*.tar"


def sidecar_keys(key: str) -> list[str]:
    """The shard's metadata Parquet and stats file, named as img2dataset names them."""
    base = key.removesuffix(".tar")
    return [f"{base}.parquet", f"{base}_stats.json"]


def card_features(
    schema: pa.Schema, extensions: Iterable[str], with_phash: bool
) -> list[dict[str, Any]] | None:
    """The card's `dataset_info.features` as Hugging Face's webdataset builder yields a sample: an Image per
    image extension, `json` as a struct of every field `KEY.json` may hold, `txt`, `__key__`, `__url__`.

    Declared, they spare the builder inferring types from the first few samples (which would drop a field
    those samples lack, an image-to-image input say); None when a column has no plain JSON type."""
    names = exported_names(schema.names, (PHASH_FIELD,))
    fields: list[dict[str, Any]] = []
    for field in schema:
        dtype = _json_dtype(field.type)
        if dtype is None:
            return None
        fields.append({"name": names[field.name], "dtype": dtype})
    if with_phash:
        fields.append({"name": PHASH_FIELD, "dtype": "string"})
    listed: list[dict[str, Any]] = [{"name": extension, "dtype": "image"} for extension in sorted(extensions)]
    listed += [{"name": "json", "struct": fields}, {"name": "txt", "dtype": "string"}]
    return [*listed, {"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]


def _json_dtype(kind: pa.DataType) -> str | None:
    """The `datasets` dtype of a column's value once written to JSON and read back."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_temporal(kind):
        return "string"  # dates and times are written as ISO 8601 text
    if pa.types.is_binary(kind):
        return "string"  # written as hex
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind):
        return "int64"
    if pa.types.is_floating(kind):
        return "float64"
    return None


def row_json(row: dict[str, Any]) -> bytes:
    present = {name: value for name, value in row.items() if not _missing(value)}
    return json.dumps(present, default=_json_value, ensure_ascii=False, sort_keys=False).encode("utf-8")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class TarShard:
    """One tar shard being written to an open file, sample by sample, its metadata kept for the sidecar."""

    def __init__(self, handle: BinaryIO, mtime: float):
        self.handle = handle
        self._writer = TarWriter(handle, mtime=mtime)
        self._metadata: list[pa.Table] = []
        self.num_bytes = 0
        self.extensions: set[str] = set()

    def write(self, batch: SampleBatch) -> None:
        rows = batch.rows.to_pylist()
        names = exported_names(batch.rows.column_names, (PHASH_FIELD,)) if rows else {}
        for row, sample in zip(rows, batch.samples, strict=True):
            record = {names[name]: value for name, value in row.items()}
            if sample.phash is not None:
                record[PHASH_FIELD] = sample.phash
            entry: dict[str, Any] = {
                "__key__": sample.key,
                "json": row_json(record),
                "txt": str(row.get("prompt") or ""),
            }
            if sample.image is not None and sample.extension:
                entry[sample.extension] = sample.image
                self.extensions.add(sample.extension)
            self.num_bytes += sum(len(value) for name, value in entry.items() if name != "__key__")
            self._writer.write(entry)
        if rows:
            renamed = exported_names(batch.rows.column_names, (KEY_FIELD,))
            table = batch.rows.rename_columns([renamed[name] for name in batch.rows.column_names])
            keys = pa.array([sample.key for sample in batch.samples], pa.string())
            self._metadata.append(table.add_column(0, KEY_FIELD, keys))

    def size(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        self._writer.close()

    def sidecars(self, key: str, tally: Tally, duration_s: float) -> list[tuple[str, bytes, str]]:
        """The shard's metadata Parquet and its stats, img2dataset's fields first."""
        parquet_key, stats_key = sidecar_keys(key)
        buffer = io.BytesIO()
        if self._metadata:
            pq.write_table(pa.concat_tables(self._metadata), buffer, compression="zstd")
        stats = {
            "count": tally.rows + tally.duplicates + tally.unreadable,
            "successes": tally.rows,
            "failed_to_download": tally.unreadable,
            "failed_to_resize": 0,
            "duration": round(duration_s, 3),
            "status_dict": {
                name: count
                for name, count in (
                    ("success", tally.rows),
                    ("near_duplicate", tally.duplicates),
                    ("unreadable_or_mismatched", tally.unreadable),
                )
                if count
            },
            "images": tally.images,
            "bytes": tally.bytes,
        }
        return [
            (parquet_key, buffer.getvalue(), PARQUET_TYPE),
            (stats_key, json.dumps(stats, indent=1).encode("utf-8"), JSON_TYPE),
        ]
