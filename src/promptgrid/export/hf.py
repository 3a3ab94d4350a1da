"""Hugging Face shards: Parquet files that `datasets.load_dataset("parquet", ...)` reads with an `image`
column decoding to the picture.

`datasets` keeps its features in the Parquet schema's key-value metadata, under `huggingface`, as
`{"info": {"features": {...}}}`; an Image feature is a struct of `bytes` (the encoded file) and `path`.
With that entry the column decodes to a PIL image; without it, it would read as a plain struct. Every
shard of an export has the same schema, so `datasets` can take the features from any of them.

Row groups hold one batch of images (about a hundred, as `datasets` itself writes image data), so a
reader never has to load more than that at once, and neither does the writer.
"""

from __future__ import annotations

import json
import re
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from promptgrid.export.samples import SampleBatch, exported_names
from promptgrid.export.tally import Tally

IMAGE_COLUMN = "image"
PHASH_COLUMN = "phash"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
DATA_PREFIX = "data/"
CONTENT_TYPE = "application/vnd.apache.parquet"
_FLOATS = {16: "float16", 32: "float32", 64: "float64"}


_SHARD = re.compile(r"^data/\w+(\.\w+)*-\d{5}\.parquet$")


def shard_key(split: str, index: int) -> str:
    return f"{DATA_PREFIX}{split}-{index:05d}.parquet"


def is_shard_key(key: str) -> bool:
    return bool(_SHARD.match(key))


def data_files(split: str) -> str:
    """The split's shards as a pattern relative to the export: the card's `data_files` path."""
    return f"{DATA_PREFIX}{split}-*.parquet"


def datasets_dtype(kind: pa.DataType) -> str | None:
    """The `datasets.Value` dtype of an Arrow type, or None for a type left for `datasets` to infer."""
    if pa.types.is_floating(kind):
        return _FLOATS[kind.bit_width]
    if pa.types.is_timestamp(kind):
        return f"timestamp[{kind.unit}, tz={kind.tz}]" if kind.tz else f"timestamp[{kind.unit}]"
    if pa.types.is_boolean(kind):
        return "bool"
    if pa.types.is_integer(kind) or kind in (pa.string(), pa.large_string(), pa.binary(), pa.date32()):
        return str(kind).removesuffix("[day]")
    return None


def features(schema: pa.Schema) -> dict[str, Any]:
    """The `datasets` features of an export schema: Image for the image column, Value for plain types."""
    found: dict[str, Any] = {}
    for field in schema:
        if field.name == IMAGE_COLUMN:
            found[field.name] = {"_type": "Image"}
        elif (dtype := datasets_dtype(field.type)) is not None:
            found[field.name] = {"dtype": dtype, "_type": "Value"}
    return found


def export_schema(manifest: pa.Schema, with_phash: bool) -> pa.Schema:
    """The image first, then every exported manifest column (renamed where it clashes), then the pHash."""
    names = exported_names(manifest.names, (IMAGE_COLUMN, PHASH_COLUMN))
    fields = [pa.field(IMAGE_COLUMN, IMAGE_TYPE)]
    fields += [pa.field(names[field.name], field.type) for field in manifest]
    if with_phash:
        fields.append(pa.field(PHASH_COLUMN, pa.string()))
    schema = pa.schema(fields)
    metadata = {"huggingface": json.dumps({"info": {"features": features(schema)}})}
    return schema.with_metadata(metadata)


def card_features(schema: pa.Schema) -> list[dict[str, str]] | None:
    """The card's `dataset_info.features`; None when a column's type has no plain `datasets` dtype."""
    listed = []
    for field in schema:
        if field.name == IMAGE_COLUMN:
            listed.append({"name": field.name, "dtype": "image"})
        elif (dtype := datasets_dtype(field.type)) is not None:
            listed.append({"name": field.name, "dtype": dtype})
        else:
            return None
    return listed


class ParquetShard:
    """One Parquet shard being written to an open file: a row group per batch of samples."""

    def __init__(self, handle: BinaryIO, manifest: pa.Schema, with_phash: bool):
        self.handle = handle
        self.schema = export_schema(manifest, with_phash)
        self.with_phash = with_phash
        self._writer = pq.ParquetWriter(handle, self.schema, compression="zstd", use_dictionary=False)
        self.num_bytes = 0  # the rows as Arrow data, as `datasets` counts a split's `num_bytes`
        self.extensions: set[str] = set()  # the image column holds any format

    def write(self, batch: SampleBatch) -> None:
        if batch.rows.num_rows == 0:
            return
        names = [IMAGE_COLUMN, *self.schema.names[1 : 1 + batch.rows.num_columns]]
        paths = [sample.file_name for sample in batch.samples]
        images = pa.StructArray.from_arrays(
            [pa.array([sample.image for sample in batch.samples], pa.binary()), pa.array(paths, pa.string())],
            fields=list(IMAGE_TYPE),
            mask=pa.array([sample.image is None for sample in batch.samples]),  # a row without an image
        )
        columns = [images, *batch.rows.columns]
        if self.with_phash:
            names.append(PHASH_COLUMN)
            columns.append(pa.array([sample.phash for sample in batch.samples], pa.string()))
        table = pa.Table.from_arrays(columns, names=names).cast(self.schema)
        self._writer.write_table(table, row_group_size=table.num_rows)
        self.num_bytes += table.nbytes

    def sidecars(self, key: str, tally: Tally, duration_s: float) -> list[tuple[str, bytes, str]]:
        return []  # a Parquet shard is its own metadata

    def size(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        self._writer.close()
