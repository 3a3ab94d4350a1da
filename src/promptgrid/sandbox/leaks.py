"""A misbehaving API, for proving the key never lands anywhere: answers that echo the caller's key.

With `echo_key`, every error answer carries the key in its `error` and `details`, and a failed prediction
carries it inside its `error_code` and `error_message`, as a careless API might.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from promptgrid.sandbox.replies import Reply


def echo_key(reply: Reply, key: str) -> Reply:
    """The same answer with `key` written into its error texts and codes."""
    body: Any = reply.body
    if not isinstance(body, dict) or not key:
        return reply
    if reply.status >= 400:
        body = {**body, "error": f"{body.get('error', 'error')} (key {key})", "details": f"signed with {key}"}
    elif body.get("status") == "error" and isinstance(body.get("output"), dict):
        output = body["output"]
        body = {
            **body,
            "output": {
                **output,
                "error_code": f"{output.get('error_code')}_{key}",
                "error_message": f"{output.get('error_message')} [request key {key}]",
            },
        }
    return replace(reply, body=body)
