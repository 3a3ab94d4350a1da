"""Where a run's outputs go: the one small interface every sink implements, what each can do, and its keys.

Each backend says once what it can do, so no caller asks for a sink's class: a local folder has paths and
appends lines to a file; a bucket has neither, but presigns links another machine can fetch. Both offer
conditional writes (what two runs racing for a lease need) and publishing a finished file in one step.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

TEMP_PREFIX = ".tmp-"  # a leading dot: pyarrow.dataset and `*.parquet` globs skip files being written


class LineLog(Protocol):
    """An append-only file of lines: each `write` lands whole, `sync` makes what was written durable."""

    def write(self, line: bytes) -> None: ...
    def sync(self) -> None: ...
    def close(self) -> None: ...


class ConditionalWrites(Protocol):
    """Objects changed only if they are as last read; a version is an ETag or a content hash."""

    def read(self, key: str) -> tuple[bytes, str] | None: ...
    def create(self, key: str, data: bytes) -> str | None:
        """Write `key` only if it does not exist: its version, or None when another write got there first."""
        ...

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        """Write `key` only if it is still at `version`: the new version, or None when it is not."""
        ...

    def delete(self, key: str, version: str) -> None:
        """Delete `key` only if it is still at `version`; otherwise leave it."""
        ...


@runtime_checkable
class Sink(Protocol):
    """Where a run's outputs go. Sync methods: async callers use `asyncio.to_thread`."""

    root: str
    folder: Path | None  # the local folder holding the output; None for a remote store

    def put_bytes(
        self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] = {}
    ) -> str: ...
    def put_file(self, path: Path, key: str, content_type: str) -> None:
        """Publish a finished local file at `key` in one step (the file may be moved, not copied)."""
        ...

    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is none."""
        ...

    def list_keys(self, prefix: str) -> Iterator[str]: ...
    def uri(self, key: str) -> str: ...
    def url_for_reading(self, key: str, expires_s: int = 3600) -> str:
        """A URL this user can open (a file:// URL, or a presigned one)."""
        ...

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        """A URL another machine can fetch for `expires_s` seconds, or None where the store has none."""
        ...

    def delete(self, key: str) -> None: ...
    def local_path(self, key: str) -> Path | None:
        """Where `key` is on this machine's file system, or None for a remote store."""
        ...

    def line_log(self, key: str) -> LineLog | None:
        """An append-only file at `key`, opened on first write; None where objects are written whole only
        (then write one object per record)."""
        ...

    def conditional_writes(self) -> ConditionalWrites: ...


def check_key(key: str) -> str:
    """Refuse keys that could leave the output or mean different things to different stores."""
    parts = key.split("/")
    if not key or "\\" in key or "\x00" in key or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"unsafe storage key {key!r}")
    return key
