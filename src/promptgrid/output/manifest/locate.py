"""Where a manifest row's image is now: its key relative to the output root, resolved against the root.

A row records `image_key` (e.g. `images/<model>/<prompt-slug>/<job_id>.webp`) beside the absolute
`image_uri` it was written to. Readers resolve the key against wherever the output lives now, so a folder
that was moved, copied or synced to another bucket still finds its images. Rows written before `image_key`
existed have only the absolute URI: their key is what follows the output root when the output has not
moved, and otherwise the tail of the URI in the image layout (`images/<model>/<slug>/<file>`).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from promptgrid.output.keys import IMAGES_PREFIX

IMAGE_COLUMNS = frozenset({"image_uri", "image_key"})
# images/<model>/<prompt-slug>/<file>: the layout `keys.image_key` has always written.
_LAYOUT_SEGMENTS = 4
_IMAGES_SEGMENT = IMAGES_PREFIX.rstrip("/")


def key_under_root(root: str, uri: str | None) -> str | None:
    """The key of `uri` inside the output at `root`, or None when the URI lies elsewhere."""
    if not uri:
        return None
    prefix = root.rstrip("/") + "/"
    return uri[len(prefix) :] if uri.startswith(prefix) and len(uri) > len(prefix) else None


def legacy_image_key(root: str, uri: str | None) -> str | None:
    """A key for a row written with an absolute URI only: relative to `root`, else from the image layout."""
    key = key_under_root(root, uri)
    if key is not None or not uri:
        return key
    segments = uri.replace("\\", "/").split("/")
    if len(segments) > _LAYOUT_SEGMENTS and segments[-_LAYOUT_SEGMENTS] == _IMAGES_SEGMENT:
        return "/".join(segments[-_LAYOUT_SEGMENTS:])
    if _IMAGES_SEGMENT in segments[:-1]:  # some other depth: from the last `images` folder on
        last = len(segments) - 1 - segments[::-1].index(_IMAGES_SEGMENT)
        return "/".join(segments[last:])
    return None


def resolve_image_locations(table: pa.Table, root: str) -> pa.Table:
    """`image_key` filled in for every row that has an image, and `image_uri` pointed at `root` + key.

    The stored `image_uri` says where an image was written; after this it says where it is now.
    """
    names = table.column_names
    if not IMAGE_COLUMNS & set(names):
        return table
    uris = table["image_uri"] if "image_uri" in names else pa.nulls(table.num_rows, pa.string())
    keys = table["image_key"] if "image_key" in names else pa.nulls(table.num_rows, pa.string())
    if keys.null_count and uris.null_count < table.num_rows:
        missing = pc.and_(pc.is_null(keys), pc.is_valid(uris))
        if pc.any(missing).as_py():
            derived = [
                key if key is not None else legacy_image_key(root, uri)
                for key, uri in zip(keys.to_pylist(), uris.to_pylist(), strict=True)
            ]
            keys = pa.chunked_array([pa.array(derived, pa.string())])
    resolved = pc.binary_join_element_wise(root.rstrip("/") + "/", keys, "")
    # A row whose key could not be recovered keeps the URI it was written with.
    resolved = pc.if_else(pc.is_valid(keys), resolved, uris)
    table = _set_column(table, "image_key", keys, after="image_uri")
    return _set_column(table, "image_uri", resolved, after=None)


def _set_column(table: pa.Table, name: str, values: pa.ChunkedArray, after: str | None) -> pa.Table:
    field = pa.field(name, pa.string())
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), field, values)
    position = table.column_names.index(after) + 1 if after in table.column_names else table.num_columns
    return table.add_column(position, field, values)
