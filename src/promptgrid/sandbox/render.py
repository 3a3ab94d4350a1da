"""The sandbox's stand-in images: cheap, deterministic in the inputs, plainly marked as sandbox renders."""

from __future__ import annotations

import hashlib
import io
import json
import textwrap
import threading
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# Pillow's names for our output formats, and encoder settings chosen for speed: the sandbox must keep up
# with hundreds of fetches a second on two cores, and the pixels carry no meaning.
_PIL_FORMATS = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}


def render_key(model: str, inputs: Mapping[str, Any], size: tuple[int, int]) -> str:
    """A hash of everything that decides the image: model, every input (the seed resolved) and pixel size."""
    blob = json.dumps(
        {"model": model, "inputs": dict(inputs), "size": list(size)}, sort_keys=True, default=str
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _palette(key: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    raw = bytes.fromhex(key[:12])
    return (raw[0], raw[1], raw[2]), (raw[3], raw[4], raw[5])


def _caption(inputs: Mapping[str, Any]) -> list[str]:
    prompt = str(inputs.get("prompt", ""))
    lines = textwrap.wrap(prompt, width=48)[:6] or [""]
    details = "  ".join(
        f"{name} {value}" for name, value in inputs.items() if name not in ("prompt", "image")
    )
    return [*lines, *textwrap.wrap(details, width=64)[:3]]


def draw_image(key: str, inputs: Mapping[str, Any], size: tuple[int, int]) -> Image.Image:
    """A colour field and band derived from the hash, the word SANDBOX, the prompt and seed written on it."""
    width, height = size
    background, accent = _palette(key)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    band = height // 4
    offset = int(key[12:16], 16) % max(height - band, 1)
    draw.rectangle((0, offset, width, offset + band), fill=accent)
    ink = (255, 255, 255) if sum(background) < 384 else (0, 0, 0)
    scale = max(min(width, height) // 16, 12)
    draw.text((scale, scale), "SANDBOX", fill=ink, font=_font(scale * 2))
    small = _font(max(scale // 2, 10))
    y = scale * 4
    for line in _caption(inputs):
        draw.text((scale, y), line, fill=ink, font=small)
        y += int(scale * 0.75)
    return image


def encode_image(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=1)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=0)
    else:
        image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def render(key: str, inputs: Mapping[str, Any], size: tuple[int, int]) -> bytes:
    """The encoded image for one prediction (blocking: call it from a worker thread)."""
    fmt = str(inputs.get("output_format") or "webp")
    raw_quality = inputs.get("output_quality")
    quality = int(raw_quality if raw_quality is not None else 90)
    return encode_image(draw_image(key, inputs, size), fmt, quality)


class RenderCache:
    """Encoded images by render key, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return data

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


def image_size(data: bytes) -> tuple[int, int]:
    """The pixel size of an encoded image (reads the header only); raises if it is not an image."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format not in ("JPEG", "PNG", "WEBP"):
            raise ValueError(f"unsupported image format {image.format}")
        return image.size
