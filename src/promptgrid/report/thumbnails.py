"""The report's thumbnails: made once per job from the stored image, cached under report/thumbs/."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from typing import Any

from PIL import Image, UnidentifiedImageError

from promptgrid.output.keys import safe_token
from promptgrid.output.manifest.locate import key_under_root
from promptgrid.output.manifest.rows import row_image_id
from promptgrid.output.sinks.base import Sink
from promptgrid.types import JobStatus

THUMBS_PREFIX = "report/thumbs/"
THUMB_MAX_PX = 256
THUMB_QUALITY = 80

# What reading or decoding a stored image can raise: a missing file or object (FileNotFoundError is an
# OSError), a store's own error, a truncated or foreign file.
_UNREADABLE = (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


def thumb_key(job_id: str) -> str:
    return f"{THUMBS_PREFIX}{safe_token(job_id)}.webp"


def image_key_of(sink: Sink, row: Mapping[str, Any]) -> str | None:
    """The sink key of a row's image: its `image_key` (relative to wherever the output is now), or for a
    table that did not come through the manifest reader, its `image_uri` when that lies inside this output."""
    key = row.get("image_key")
    return str(key) if key else key_under_root(sink.root, row.get("image_uri"))


def thumbnail_pixels(image_bytes: bytes) -> Image.Image:
    """The image shrunk to at most 256 px on its longest side: what a contact sheet's tile is drawn from."""
    with Image.open(io.BytesIO(image_bytes)) as original:
        original.draft("RGB", (THUMB_MAX_PX, THUMB_MAX_PX))  # JPEGs decode at a reduced size: much faster
        image = original.convert("RGBA" if original.mode in ("RGBA", "LA", "P") else "RGB")
    image.thumbnail((THUMB_MAX_PX, THUMB_MAX_PX))
    return image


def make_thumbnail(image_bytes: bytes) -> tuple[bytes, Image.Image]:
    """A WebP at most 256 px on its longest side, and its pixels for drawing contact sheets."""
    image = thumbnail_pixels(image_bytes)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=THUMB_QUALITY, method=4)
    return buffer.getvalue(), image


class ThumbnailCache:
    """Thumbnails under report/thumbs/<job_id>.webp; one listing up front answers "made already?" for all."""

    def __init__(self, sink: Sink, pool: Executor):
        self.sink = sink
        self.pool = pool
        self.existing = set(sink.list_keys(THUMBS_PREFIX))
        self.made = 0
        self._lock = threading.Lock()

    def thumbnails_for(
        self, rows: Iterable[Mapping[str, Any]], need_pixels: bool
    ) -> dict[str, Image.Image | str | None]:
        """For each successful row: its thumbnail's pixels (or None when not needed), or why there is none.

        Missing thumbnails are made from the stored images on the pool; cached ones are read back only when
        their pixels are needed (for contact sheets).
        """
        done = [row for row in rows if row.get("status") == JobStatus.SUCCESS]
        futures = {row_image_id(row): self.pool.submit(self._thumbnail, row, need_pixels) for row in done}
        return {job_id: future.result() for job_id, future in futures.items()}

    def _thumbnail(self, row: Mapping[str, Any], need_pixels: bool) -> Image.Image | str | None:
        key = thumb_key(row_image_id(row))
        if key in self.existing:
            if not need_pixels:
                return None
            try:
                return _decode(self.sink.get_bytes(key))
            except _UNREADABLE:
                pass  # a damaged or vanished cached thumbnail is simply made again
        try:
            source = image_key_of(self.sink, row)
            if source is None:
                return f"the image {row.get('image_uri')!r} is not inside this output"
            data, image = make_thumbnail(self.sink.get_bytes(source))
        except _UNREADABLE as exc:
            return f"the image could not be read: {type(exc).__name__}"
        self.sink.put_bytes(key, data, "image/webp", {"job_id": str(row["job_id"])})
        with self._lock:
            self.existing.add(key)
            self.made += 1
        return image


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()
