"""What keeps an export from saying where it was made: no absolute path of the output, no bucket URI.

By default the `image_uri` column (the image's absolute location) is left out, `image_key` names the
image inside the export (`KEY.webp`, as the shard holds it), and any text that still carries the output's
location (an input staged inside the output, the spec's `output:`) has it cut to a relative form. An
opt-in keeps the source locations as the manifest has them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

PRIVATE_COLUMNS = ("image_uri",)
KEY_COLUMN = "image_key"
HIDDEN = "<output>"


@dataclass(frozen=True)
class Privacy:
    """The locations to hide (longest first) and whether to keep the source's columns as they are."""

    roots: tuple[str, ...]
    keep_source_uris: bool = False

    @classmethod
    def of(cls, root: str, keep_source_uris: bool = False) -> Privacy:
        return cls(_spellings(root), keep_source_uris)

    def schema(self, schema: pa.Schema) -> pa.Schema:
        """The exported columns: the source's, without those that locate the source."""
        if self.keep_source_uris:
            return schema
        return pa.schema([field for field in schema if field.name not in PRIVATE_COLUMNS])

    def rows(self, rows: pa.Table, image_names: Sequence[str | None]) -> pa.Table:
        """`rows` as exported: private columns dropped, image keys relative to the export, text scrubbed."""
        if self.keep_source_uris:
            return rows
        rows = rows.drop_columns([name for name in PRIVATE_COLUMNS if name in rows.column_names])
        if KEY_COLUMN in rows.column_names:
            at = rows.column_names.index(KEY_COLUMN)
            rows = rows.set_column(at, KEY_COLUMN, pa.array(list(image_names), pa.string()))
        for at, field in enumerate(rows.schema):
            if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
                rows = rows.set_column(at, field, self._scrub_column(rows.column(at)))
        return rows

    def text(self, value: str) -> str:
        if self.keep_source_uris:
            return value
        for root in self.roots:
            value = value.replace(root, HIDDEN)
        return value

    def _scrub_column(self, column: pa.ChunkedArray) -> pa.ChunkedArray:
        for root in self.roots:
            column = pc.replace_substring(column, root, HIDDEN)
        return column


def _spellings(root: str) -> tuple[str, ...]:
    """The ways text may spell a location: as given, resolved, as a file URI; a bucket by its URI too."""
    found = {root.rstrip("/")}
    if root.startswith("s3://"):
        found.add("s3://" + root.removeprefix("s3://").split("/", 1)[0])
    else:
        path = Path(root).expanduser()
        for spelled in (path.absolute(), Path(os.path.realpath(path))):
            found |= {str(spelled), spelled.as_uri()}
    return tuple(sorted((text for text in found if len(text) > 1), key=len, reverse=True))
