"""Where a run's outputs go: the one small interface every sink implements, and the keys it accepts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, runtime_checkable

TEMP_PREFIX = ".tmp-"  # a leading dot: pyarrow.dataset and `*.parquet` globs skip files being written


@runtime_checkable
class Sink(Protocol):
    """Where a run's outputs go. Sync methods: async callers use `asyncio.to_thread`."""

    root: str

    def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] = {}
    ) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list_keys(self, prefix: str) -> Iterator[str]: ...
    def uri(self, key: str) -> str: ...
    def url_for_reading(self, key: str, expires_s: int = 3600) -> str: ...
    def delete(self, key: str) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could leave the output or mean different things to different stores."""
    parts = key.split("/")
    if not key or "\\" in key or "\x00" in key or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"unsafe storage key {key!r}")
    return key
