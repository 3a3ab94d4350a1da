"""A misbehaving API, for proving the key never lands anywhere: answers that echo the caller's key.

With `echo_key`, every error answer carries the key in its `error` and `details`, and a failed prediction
carries it inside its `error_code` and `error_message`, as a careless API might: as sent, percent-encoded,
and inside base64 at each of the three alignments to base64's 3-byte groups (`Authorization: Basic
base64(user:key)` is one of them), in the standard and the URL-safe alphabet.
"""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import replace
from typing import Any

from promptgrid.sandbox.replies import Reply


def key_spellings(key: str) -> tuple[str, str]:
    """Two texts holding `key`: as sent and percent-encoded; then in base64, at each alignment."""
    plain = f"key {key}, in a URL {urllib.parse.quote(key, safe='')}"
    basic = base64.b64encode(f"sk:{key}".encode()).decode()  # the key at offset 3: aligned
    shifted = base64.b64encode(f"user:{key}".encode()).decode()  # offset 5: two bytes into a group
    urlsafe = base64.urlsafe_b64encode(f"@{key}!".encode()).decode()  # offset 1: one byte into a group
    return plain, f"Authorization: Basic {basic}, Basic {shifted}, token {urlsafe}"


def echo_key(reply: Reply, key: str) -> Reply:
    """The same answer with `key` written into its error texts and codes, in every spelling above."""
    body: Any = reply.body
    if not isinstance(body, dict) or not key:
        return reply
    plain, encoded = key_spellings(key)
    if reply.status >= 400:
        body = {**body, "error": f"{body.get('error', 'error')} ({plain})", "details": f"signed: {encoded}"}
    elif body.get("status") == "error" and isinstance(body.get("output"), dict):
        output = body["output"]
        body = {
            **body,
            "output": {
                **output,
                "error_code": f"{output.get('error_code')}_{key}",
                "error_message": f"{output.get('error_message')} [request {plain}; {encoded}]",
            },
        }
    return replace(reply, body=body)
