"""Downloading a prediction's output from hosted storage and proving it is an image.

Hosted outputs expire, so the engine fetches right after success. The download is streamed and capped, has
an overall deadline (a host that drips one byte at a time never trips a per-read timeout), is hashed as it
arrives, then decoded with Pillow in a worker thread (decoding a megapixel blocks for milliseconds, which
would delay every other prediction's poll). Pillow's limit on pixels refuses a decompression bomb before
decoding it. Storage is not the API: these requests do not count against the request budget.

A paid image is kept whatever its encoding and pixel size: Eachlabs publishes no sizes, so the real format,
width and height are recorded, and a size other than expected is a flag (`size_mismatch`), not a failure.
Only an empty, unreadable or non-image answer fails the job (OUTPUT_INVALID).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from promptgrid.defaults import DOWNLOAD_DEADLINE_S
from promptgrid.errors import FetchFailed
from promptgrid.models.catalog import expected_size

# promptgrid's names for Pillow's formats, where they differ from the lower-cased Pillow name.
FORMAT_NAMES = {"JPEG": "jpg", "TIFF": "tiff"}
EXPIRED_STATUSES = frozenset({403, 404, 410})
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class FetchedImage:
    """A downloaded image as it really is: its encoding and size read from the bytes, not the request."""

    data: bytes = b""
    sha256: str = ""
    format: str = ""
    width: int = 0
    height: int = 0
    size_mismatch: bool | None = None  # None when nothing said what size to expect

    @property
    def bytes(self) -> int:
        return len(self.data)


def expected_image(model: str, inputs: Mapping[str, Any]) -> tuple[int, int] | None:
    """The pixel size a prediction with these inputs should yield, when anything says (None otherwise)."""
    return expected_size(model, inputs)


async def fetch_output(
    storage: httpx.AsyncClient,
    url: str,
    *,
    size: tuple[int, int] | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    deadline_s: float = DOWNLOAD_DEADLINE_S,
) -> FetchedImage:
    """Download `url` and check it is an image; else raise FetchFailed (OUTPUT_EXPIRED, ...)."""
    try:
        async with asyncio.timeout(deadline_s):
            data, digest = await _download(storage, url, max_bytes)
    except TimeoutError:
        raise FetchFailed(
            "OUTPUT_FETCH_FAILED", f"the output did not download within {deadline_s:g} s", retryable=True
        ) from None
    image_format, width, height = await asyncio.to_thread(verify_image, data)
    mismatch = None if size is None else (width, height) != tuple(size)
    return FetchedImage(data, digest, image_format, width, height, mismatch)


async def _download(storage: httpx.AsyncClient, url: str, max_bytes: int) -> tuple[bytes, str]:
    try:
        async with storage.stream("GET", url) as response:
            if response.status_code in EXPIRED_STATUSES:
                raise FetchFailed("OUTPUT_EXPIRED", f"the output URL answered HTTP {response.status_code}")
            if not response.is_success:
                raise FetchFailed(
                    "OUTPUT_FETCH_FAILED",
                    f"the output URL answered HTTP {response.status_code}",
                    retryable=response.status_code >= 500 or response.status_code == 429,
                )
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchFailed(
                    "OUTPUT_TOO_LARGE", f"the output is {declared} bytes; the cap is {max_bytes}"
                )
            digest = hashlib.sha256()
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise FetchFailed("OUTPUT_TOO_LARGE", f"the output exceeds the cap of {max_bytes} bytes")
                digest.update(chunk)
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise FetchFailed(
            "OUTPUT_FETCH_FAILED", f"downloading the output: {type(exc).__name__}", retryable=True
        ) from None
    if received == 0:
        raise FetchFailed("OUTPUT_INVALID", "the output is empty")
    return b"".join(chunks), digest.hexdigest()


def image_format_name(pillow_format: str | None) -> str:
    """promptgrid's name for an encoding Pillow read (`JPEG` is `jpg`, as the API's `output_format` says)."""
    name = str(pillow_format or "")
    return FORMAT_NAMES.get(name, name.lower())


def verify_image(data: bytes) -> tuple[str, int, int]:
    """Decode `data` fully; return (format, width, height) or raise FetchFailed(OUTPUT_INVALID)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            return image_format_name(image.format), width, height
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FetchFailed("OUTPUT_INVALID", f"the output does not decode as an image: {exc}") from None
