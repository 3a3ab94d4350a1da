"""WebDataset shards: tar files `00000.tar`, ... holding `KEY.webp|jpg|png` (the image), `KEY.json` (its
manifest row) and `KEY.txt` (the prompt) per sample, the layout img2dataset writes.

The tar itself is written by webdataset's `TarWriter`, so the `webdataset` library reads what it wrote;
a sample's key is its job id, which holds no dot (WebDataset splits a file name at the first one).
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from typing import Any, BinaryIO

from webdataset import TarWriter

from promptgrid.export.samples import SampleBatch, exported_names

CONTENT_TYPE = "application/x-tar"
PHASH_FIELD = "phash"
_SHARD = re.compile(r"^\d{5}\.tar$")


def shard_key(index: int) -> str:
    return f"{index:05d}.tar"


def is_shard_key(key: str) -> bool:
    return bool(_SHARD.match(key))


def row_json(row: dict[str, Any]) -> bytes:
    return json.dumps(row, default=_json_value, ensure_ascii=False, sort_keys=False).encode("utf-8")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class TarShard:
    """One tar shard being written to an open file, sample by sample."""

    def __init__(self, handle: BinaryIO, mtime: float):
        self.handle = handle
        self._writer = TarWriter(handle, mtime=mtime)

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
            self._writer.write(entry)

    def size(self) -> int:
        return self.handle.tell()

    def close(self) -> None:
        self._writer.close()
