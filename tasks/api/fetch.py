"""Downloading a prediction's output from hosted storage and proving it is the image that was asked for.

Hosted outputs expire, so the engine fetches right after success. The download is streamed and capped, hashed
as it arrives, then decoded with Pillow in a worker thread (decoding a megapixel blocks for milliseconds,
which would delay every other prediction's poll). The header is checked before the pixels are decoded, so a
huge or mislabelled file is refused without decoding it. Storage is not the API: these requests do not count
against the request budget.
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

from promptgrid.errors import FetchFailed
from promptgrid.tasks.models.catalog import output_size

# Pillow's names for the formats the API can produce.
PILLOW_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}
EXPIRED_STATUSES = frozenset({403, 404, 410})
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class FetchedImage:
    data: bytes = b""
    sha256: str = ""
    format: str = ""
    width: int = 0
    height: int = 0

    @property
    def bytes(self) -> int:
        return len(self.data)


def expected_image(inputs: Mapping[str, Any]) -> tuple[str, tuple[int, int] | None]:
    """The format and pixel size a prediction with these inputs must yield (size None for image-to-image)."""
    return str(inputs.get("output_format") or "webp"), output_size(inputs)


async def fetch_output(
    storage: httpx.AsyncClient,
    url: str,
    *,
    output_format: str,
    size: tuple[int, int] | None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FetchedImage:
    """Download `url` and verify it; else raise FetchFailed (OUTPUT_EXPIRED, OUTPUT_TOO_LARGE, ...)."""
    data, digest = await _download(storage, url, max_bytes)
    image = await asyncio.to_thread(verify_image, data, output_format, size)
    return FetchedImage(data=data, sha256=digest, format=output_format, width=image[0], height=image[1])


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


def verify_image(data: bytes, output_format: str, size: tuple[int, int] | None) -> tuple[int, int]:
    """Decode `data` fully; return (width, height) or raise FetchFailed(OUTPUT_INVALID)."""
    want = PILLOW_FORMATS.get(output_format, output_format.upper())
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != want:
                raise FetchFailed("OUTPUT_INVALID", f"the output is {image.format}, expected {want}")
            if size is not None and image.size != tuple(size):
                got = "x".join(map(str, image.size))
                raise FetchFailed(
                    "OUTPUT_INVALID", f"the output is {got} pixels, expected {size[0]}x{size[1]}"
                )
            image.load()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise FetchFailed("OUTPUT_INVALID", f"the output does not decode as an image: {exc}") from None
