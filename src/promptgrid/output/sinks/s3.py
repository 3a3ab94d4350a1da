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
from typing import Any, TypeAlias

from promptgrid.errors import InvalidInput, StorageError
from promptgrid.locations import split_s3_uri
from promptgrid.output.sinks.base import check_key

PRESIGN_MAX_S = 7 * 24 * 3600  # the longest lifetime S3 allows for a presigned URL

# boto3 builds its clients at run time and ships no type information, so a client is Any at this boundary.
S3Client: TypeAlias = Any


class S3Sink:
    """A bucket and key prefix, reached through boto3's standard configuration chain."""

    def __init__(self, bucket: str, prefix: str = "", client: S3Client | None = None):
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
