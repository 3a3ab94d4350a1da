"""A sink in an S3 (or S3-compatible) bucket, configured only through the standard AWS chain.

Credentials, region and AWS_ENDPOINT_URL[_S3] come from the environment or AWS config, so MinIO, R2 and other
S3-compatible stores work with no code change. A PUT carries Content-MD5, which the store checks, and its
ETag is compared.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from promptgrid.errors import InvalidInput, StorageError
from promptgrid.locations import split_s3_uri
from promptgrid.output.sinks.base import check_key

PRESIGN_MAX_S = 7 * 24 * 3600  # the longest lifetime S3 allows for a presigned URL
# Codes S3 answers when a conditional write loses: the condition failed, or another write raced it.
_LOST_RACE = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})

# boto3 builds its clients at run time and ships no type information, so a client is Any at this boundary.
S3Client: TypeAlias = Any


class S3Sink:
    """A bucket and key prefix, reached through boto3's standard configuration chain."""

    def __init__(self, bucket: str, prefix: str = "", client: S3Client | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client if client is not None else make_s3_client()
        self.folder: Path | None = None

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

    def put_file(self, path: Path, key: str, content_type: str) -> None:
        """One upload (multipart for a large file): S3 shows the object only once it has completed."""
        self.client.upload_file(
            str(path), self.bucket, self.full_key(key), ExtraArgs={"ContentType": content_type}
        )

    def get_bytes(self, key: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(self.uri(key)) from None
        data: bytes = answer["Body"].read()
        return data

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's headers (ContentType, Metadata, ContentLength, ETag), or None when absent."""
        from botocore.exceptions import ClientError

        try:
            headers: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return headers

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def size(self, key: str) -> int | None:
        head = self.head(key)
        return int(head["ContentLength"]) if head is not None else None

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

    def presigned_url(self, key: str, expires_s: int = 3600) -> str | None:
        return presign_get(self.client, self.bucket, self.full_key(key), expires_s)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    def local_path(self, key: str) -> None:
        return None

    def line_log(self, key: str) -> None:
        return None  # an object is written whole: one object per record instead

    def conditional_writes(self) -> S3ConditionalWrites:
        return S3ConditionalWrites(self)


class S3ConditionalWrites:
    """Conditional writes by S3's own (also MinIO's and R2's): create with `If-None-Match: *`, replace and
    delete with `If-Match: <ETag>`, so of two racing writers exactly one wins."""

    def __init__(self, sink: S3Sink):
        self.sink = sink
        self.client = sink.client

    def read(self, key: str) -> tuple[bytes, str] | None:
        try:
            answer = self.client.get_object(Bucket=self.sink.bucket, Key=self.sink.full_key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        return answer["Body"].read(), str(answer["ETag"])

    def create(self, key: str, data: bytes) -> str | None:
        return self._put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, version: str) -> str | None:
        return self._put(key, data, IfMatch=version)

    def delete(self, key: str, version: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.sink.bucket, Key=self.sink.full_key(key), IfMatch=version)
        except ClientError as exc:
            if _code(exc) not in _LOST_RACE | {"NoSuchKey", "404"}:
                raise  # someone else's object now, or already gone: either way not ours to delete

    def _put(self, key: str, data: bytes, **condition: str) -> str | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.put_object(
                Bucket=self.sink.bucket,
                Key=self.sink.full_key(key),
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


def make_s3_client() -> S3Client:
    """A boto3 S3 client from the standard chain; botocore itself honours AWS_ENDPOINT_URL[_S3]."""
    import boto3
    from botocore.config import Config

    # SigV4 presigned URLs: the legacy V2 form is refused by R2 and newer regions.
    config = Config(
        signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32
    )
    return boto3.session.Session().client("s3", config=config)


def presign_get(client: S3Client, bucket: str, key: str, expires_s: int = 3600) -> str:
    """A GET URL for one object that stops working after `expires_s` seconds (1 s to 7 days)."""
    if not 1 <= expires_s <= PRESIGN_MAX_S:
        raise ValueError(f"presigned URL lifetime must be 1 to {PRESIGN_MAX_S} seconds, not {expires_s}")
    url: str = client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=int(expires_s)
    )
    return url


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (bucket, "some/prefix"); InvalidInput for a bucketless or odd URI."""
    try:
        return split_s3_uri(uri)
    except ValueError as exc:
        raise InvalidInput([f"output {exc}"]) from None


def _ascii(text: str) -> str:
    # S3 user metadata travels in HTTP headers, which only carry ASCII.
    return urllib.parse.quote(str(text), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")
