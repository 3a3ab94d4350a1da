"""Where output leases live: `lease/<name>.json`, changed only by the sink's conditional writes.

A local folder makes each change under an exclusive `flock` on `lease/<name>.lock` (the kernel drops the lock
when its holder dies, so a killed run never leaves it locked); S3 creates with `If-None-Match: *` and
replaces or deletes with `If-Match: <ETag>` (also MinIO's and R2's), so two runs can never both believe
they took it. A store deals in bytes and versions (an ETag, or a local content hash);
`promptgrid.output.lease` decides what a lease means.
"""

from __future__ import annotations

from collections.abc import Iterator

from promptgrid.output.sinks.base import Sink

LEASE_PREFIX = "lease/"
_SUFFIX = ".json"


class LeaseStore:
    """An output's leases by name, each read and changed atomically."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.writes = sink.conditional_writes()

    def read(self, name: str) -> tuple[bytes, str] | None:
        return self.writes.read(_key(name))

    def create(self, name: str, data: bytes) -> str | None:
        return self.writes.create(_key(name), data)

    def replace(self, name: str, data: bytes, version: str) -> str | None:
        return self.writes.replace(_key(name), data, version)

    def delete(self, name: str, version: str) -> None:
        self.writes.delete(_key(name), version)

    def names(self) -> list[str]:
        return _names(self.sink.list_keys(LEASE_PREFIX))


def lease_store(sink: Sink) -> LeaseStore:
    return LeaseStore(sink)


def _key(name: str) -> str:
    return f"{LEASE_PREFIX}{name}{_SUFFIX}"


def _names(keys: Iterator[str]) -> list[str]:
    return sorted(
        key[len(LEASE_PREFIX) : -len(_SUFFIX)]
        for key in keys
        if key.endswith(_SUFFIX) and "/" not in key[len(LEASE_PREFIX) :]
    )
