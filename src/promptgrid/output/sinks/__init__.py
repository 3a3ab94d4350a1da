"""Output sinks: one small interface (`base.Sink`) over a local folder and an S3 (or S3-compatible) bucket.

Writes are atomic (no reader ever sees half an object) and verified (a local write is checked by size after
fsync; an S3 PUT by Content-MD5 and ETag).
"""

from __future__ import annotations

import os
import urllib.parse

from promptgrid.errors import InvalidInput
from promptgrid.output.sinks.base import Sink
from promptgrid.output.sinks.local import LocalSink
from promptgrid.output.sinks.s3 import S3Sink, parse_s3_uri

__all__ = ["LocalSink", "S3Sink", "Sink", "open_sink"]


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
