"""Output sinks: one small interface over a local folder and an S3 (or S3-compatible) bucket.

Writes are atomic (no reader ever sees half an object) and verified (a local write is checked by size
after fsync; an S3 PUT carries Content-MD5, which the store checks, and its ETag is compared). S3 is
configured only through the standard AWS chain (credentials, region, AWS_ENDPOINT_URL[_S3]), so MinIO, R2
and other S3-compatible stores work with no code change.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

from promptgrid.errors import InvalidInput
from tasks.keys import image_key

__all__ = ["LocalSink", "S3Sink", "Sink", "StorageError", "image_key", "open_sink", "check_key"]

PRESIGN_MAX_S = 7 * 24 * 3600  # the longest lifetime S3 allows for a presigned URL
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TEMP_PREFIX = ".tmp-"  # a leading dot: pyarrow.dataset and `*.parquet` globs skip files being written


class StorageError(Exception):
    """A write the store did not confirm as written (size or checksum mismatch)."""


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


class LocalSink:
    """A folder on this machine; each write goes to a temp file in the same folder, fsynced, then renamed."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path).expanduser().resolve()
        self.root = str(self.path)

    def __repr__(self) -> str:
        return f"LocalSink({self.root!r})"

    def local_path(self, key: str) -> Path:
        return self.path.joinpath(*check_key(key).split("/"))

    def put_bytes(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] = {}) -> str:
        # content_type and metadata are implied by the extension and the manifest for local files.
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=_TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
                written = os.fstat(handle.fileno()).st_size
            if written != len(data):
                raise StorageError(f"{target}: wrote {written} bytes of {len(data)}")
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)  # so the rename itself survives a power cut
        return str(target)

    def get_bytes(self, key: str) -> bytes:
        return self.local_path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def list_keys(self, prefix: str) -> Iterator[str]:
        folder = self.path.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.path
        if not folder.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.path).as_posix()
            for name in sorted(filenames):
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(_TEMP_PREFIX) and key.startswith(prefix):
                    yield key

    def uri(self, key: str) -> str:
        return str(self.local_path(key))

    def url_for_reading(self, key: str, expires_s: int = 3600) -> str:
        return self.local_path(key).as_uri()

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def append_line(self, key: str, line: bytes) -> None:
        """Append one record and fsync it: the journal's durable write for a local output."""
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Sink:
    """A bucket and key prefix, reached through boto3's standard configuration chain."""

    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client if client is not None else make_s3_client()

    def __repr__(self) -> str:
        return f"S3Sink({self.root!r})"

    def full_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str] = {}) -> str:
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        answer = self.client.put_object(
            Bucket=self.bucket,
            Key=self.full_key(key),
            Body=data,
            ContentType=content_type,
            ContentMD5=base64.b64encode(md5).decode("ascii"),
            Metadata={_ascii(name.lower()): _ascii(value) for name, value in metadata.items()},
        )
        etag = str(answer.get("ETag", "")).strip('"')
        # A KMS-encrypted object's ETag is not its MD5; Content-MD5 was still checked by the store.
        if answer.get("ServerSideEncryption") != "aws:kms" and etag and "-" not in etag and etag != md5.hex():
            raise StorageError(f"{self.uri(key)}: store answered ETag {etag}, expected {md5.hex()}")
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.uri(key)) from None
        return answer["Body"].read()

    def head(self, key: str) -> dict | None:
        """The object's headers (ContentType, Metadata, ContentLength, ETag), or None when absent."""
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def list_keys(self, prefix: str) -> Iterator[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
            for item in page.get("Contents", []):
                yield item["Key"][start:]

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.full_key(key)}"

    def url_for_reading(self, key: str, expires_s: int = 3600) -> str:
        return presign_get(self.client, self.bucket, self.full_key(key), expires_s)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))


def make_s3_client():
    """A boto3 S3 client from the standard chain; botocore itself honours AWS_ENDPOINT_URL[_S3]."""
    import boto3
    from botocore.config import Config

    # SigV4 presigned URLs: the legacy V2 form is refused by R2 and newer regions.
    config = Config(
        signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32
    )
    return boto3.session.Session().client("s3", config=config)


def presign_get(client, bucket: str, key: str, expires_s: int = 3600) -> str:
    """A GET URL for one object that stops working after `expires_s` seconds (1 s to 7 days)."""
    if not 1 <= expires_s <= PRESIGN_MAX_S:
        raise ValueError(f"presigned URL lifetime must be 1 to {PRESIGN_MAX_S} seconds, not {expires_s}")
    return client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s)
    )


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (bucket, "some/prefix"); InvalidInput for a bucketless or odd URI."""
    rest = uri[len("s3://") :] if uri.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise InvalidInput([f"output {uri!r}: expected s3://BUCKET/PREFIX with a valid bucket name"])
    if any(part in (".", "..") for part in prefix.split("/")):
        raise InvalidInput([f"output {uri!r}: the prefix must not contain '.' or '..' segments"])
    return bucket, prefix.strip("/")


def open_sink(output: str | os.PathLike[str]) -> Sink:
    """`s3://bucket/prefix` -> S3Sink; a folder path (or file:// URI) -> LocalSink."""
    text = os.fspath(output)
    if not text.strip():
        raise InvalidInput(["output is empty: give a folder or s3://bucket/prefix"])
    if text.startswith("s3://"):
        bucket, prefix = parse_s3_uri(text)
        return S3Sink(bucket, prefix)
    if text.startswith("file://"):
        return LocalSink(urllib.parse.unquote(urllib.parse.urlparse(text).path))
    if "://" in text:
        raise InvalidInput([f"output {text!r}: only a local folder or s3://bucket/prefix is supported"])
    return LocalSink(text)


def _ascii(text: str) -> str:
    # S3 user metadata travels in HTTP headers, which only carry ASCII.
    return urllib.parse.quote(str(text), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")
