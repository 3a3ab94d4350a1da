"""Where a run's things live, checked alike everywhere: its output (a folder or s3://), its quota's Redis."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
QUOTA_URL_SCHEMES = ("redis", "rediss", "unix")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (bucket, "some/prefix"); ValueError for a bucketless or odd URI."""
    rest = uri[len("s3://") :] if uri.startswith("s3://") else ""
    bucket, _, prefix = rest.partition("/")
    if not S3_BUCKET.match(bucket):
        raise ValueError(f"{uri!r} names no valid bucket; expected s3://bucket/prefix")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ValueError(f"{uri!r}: the prefix must not contain '.' or '..' segments")
    return bucket, prefix.strip("/")


def check_output(value: str) -> str:
    """A local folder, file:// URI or s3://bucket/prefix; ValueError for anything else."""
    if not value.strip():
        raise ValueError("the output location is empty: give a folder or s3://bucket/prefix")
    if value.startswith("s3://"):
        split_s3_uri(value)
    elif _URI_SCHEME.match(value) and not value.startswith("file://"):
        raise ValueError(f"{value!r} is not a local folder or s3://bucket/prefix")
    return value


def check_quota_url(url: str) -> str:
    """A Redis URL (redis://, rediss:// or unix://); ValueError naming it without its password."""
    parts = urlsplit(url)
    if parts.scheme not in QUOTA_URL_SCHEMES or not (parts.hostname or parts.path):
        raise ValueError(
            f"expected a redis://host:port/db, rediss:// or unix:// URL, got {redact_url(url)!r}"
        )
    return url


def redact_url(url: str) -> str:
    """The URL with any user name or password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


def is_loopback_url(url: str | None) -> bool:
    """Whether the URL names this machine: where promptgrid's sandbox runs, and the real API never does."""
    if not url:
        return False
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")
