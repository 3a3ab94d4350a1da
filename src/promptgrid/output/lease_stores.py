"""Where output leases live, with the one atomic step each store offers: create-if-absent, replace-if-same.

- local folder: `lease/<name>.json`, every change made under an exclusive `flock` on `lease/<name>.lock`
  (the kernel drops the lock when its holder dies, so a killed run never leaves it locked);
- S3: `lease/<name>.json`, created with `If-None-Match: *` and replaced or deleted with `If-Match: <ETag>`,
  S3's conditional writes (also MinIO's and R2's), so two runs can never both believe they took it.

A store deals in bytes and versions (an ETag, or a local content hash); `promptgrid.output.lease`
decides what a lease means.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from typing import Protocol

from promptgrid.errors import InvalidInput
from promptgrid.output.sinks.base import Sink
from promptgrid.output.sinks.local import LocalSink
from promptgrid.output.sinks.s3 import S3Sink

LEASE_PREFIX = "lease/"
_SUFFIX = ".json"
# Codes S3 answers when a conditional write loses: the condition failed, or another write raced it.
_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


class LeaseStore(Protocol):
    def read(self, name: str) -> tuple[bytes, str] | None: ...
    def create(self, name: str, data: bytes) -> str | None: ...
    def replace(self, name: str, data: bytes, version: str) -> str | None: ...
    def delete(self, name: str, version: str) -> None: ...
    def names(self) -> list[str]: ...


def lease_store(sink: Sink) -> LeaseStore:
    if isinstance(sink, LocalSink):
        return LocalLeaseStore(sink)
    if isinstance(sink, S3Sink):
        return S3LeaseStore(sink)
    raise TypeError(f"no lease store for {sink!r}")


def _key(name: str) -> str:
    return f"{LEASE_PREFIX}{name}{_SUFFIX}"


def _names(keys: Iterator[str]) -> list[str]:
    return sorted(
        key[len(LEASE_PREFIX) : -len(_SUFFIX)]
        for key in keys
        if key.endswith(_SUFFIX) and "/" not in key[len(LEASE_PREFIX) :]
    )


class LocalLeaseStore:
    """Leases in a local output folder, each change made under the lease's own lock file."""

    def __init__(self, sink: LocalSink):
        self.sink = sink

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        lock = self.sink.local_path(f"{LEASE_PREFIX}{name}.lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _current(self, name: str) -> tuple[bytes, str] | None:
        try:
            data = self.sink.get_bytes(_key(name))
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()[:20]

    def read(self, name: str) -> tuple[bytes, str] | None:
        with self._locked(name):
            return self._current(name)

    def create(self, name: str, data: bytes) -> str | None:
        with self._locked(name):
            if self._current(name) is not None:
                return None
            return self._write(name, data)

    def replace(self, name: str, data: bytes, version: str) -> str | None:
        with self._locked(name):
            current = self._current(name)
            if current is None or current[1] != version:
                return None
            return self._write(name, data)

    def delete(self, name: str, version: str) -> None:
        with self._locked(name):
            current = self._current(name)
            if current is not None and current[1] == version:
                self.sink.delete(_key(name))

    def names(self) -> list[str]:
        return _names(self.sink.list_keys(LEASE_PREFIX))

    def _write(self, name: str, data: bytes) -> str:
        self.sink.put_bytes(_key(name), data, "application/json")
        return hashlib.sha256(data).hexdigest()[:20]


class S3LeaseStore:
    """Leases in a bucket, changed only by S3's conditional PUT and DELETE."""

    def __init__(self, sink: S3Sink):
        self.sink = sink
        self.client = sink.client

    def read(self, name: str) -> tuple[bytes, str] | None:
        try:
            answer = self.client.get_object(Bucket=self.sink.bucket, Key=self.sink.full_key(_key(name)))
        except self.client.exceptions.NoSuchKey:
            return None
        return answer["Body"].read(), str(answer["ETag"])

    def create(self, name: str, data: bytes) -> str | None:
        return self._put(name, data, IfNoneMatch="*")

    def replace(self, name: str, data: bytes, version: str) -> str | None:
        return self._put(name, data, IfMatch=version)

    def delete(self, name: str, version: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(
                Bucket=self.sink.bucket, Key=self.sink.full_key(_key(name)), IfMatch=version
            )
        except ClientError as exc:
            if _code(exc) not in _LOST_RACE | {"NoSuchKey", "404"}:
                raise  # someone else's lease now, or already gone: either way not ours to delete

    def names(self) -> list[str]:
        return _names(self.sink.list_keys(LEASE_PREFIX))

    def _put(self, name: str, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.put_object(
                Bucket=self.sink.bucket,
                Key=self.sink.full_key(_key(name)),
                Body=data,
                ContentType="application/json",
                **condition,
            )
        except ClientError as exc:
            code = _code(exc)
            if code in _LOST_RACE or (code in ("NoSuchKey", "404") and "IfMatch" in condition):
                return None
            if code in ("NoSuchBucket", "AccessDenied", "403", "AllAccessDisabled"):
                raise InvalidInput([f"output {self.sink.root}: cannot write there ({code})"]) from None
            raise
        return str(answer["ETag"])


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", {}) or {}
    return str(response.get("Error", {}).get("Code", ""))
