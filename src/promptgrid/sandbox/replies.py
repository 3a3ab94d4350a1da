"""The sandbox's answers as data: a status, a JSON body and headers, or a dropped connection."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reply:
    """One answer: HTTP status, JSON body and headers, or `drop` to close the connection unanswered (after
    `hold_s` seconds of silence)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    hold_s: float = 0.0


def error(status: int, text: str, /, **extra: Any) -> Reply:
    return Reply(status, {"error": text, **extra})


def _format_seconds(seconds: float) -> str:
    # Fractional seconds: at a time scale of 100 a whole-second Retry-After would waste most of a window.
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def throttled(seconds: float, details: str, retry_after: bool = True) -> Reply:
    """A 429 in the API's shape; with `retry_after`, it says (header and body) when to come back."""
    body: dict[str, Any] = {"status": 429, "error": "too many requests", "details": details}
    if not retry_after:
        return Reply(429, body)
    # Rounded up to the millisecond: a client that waits exactly this long must be admitted.
    seconds = max(math.ceil(seconds * 1000) / 1000, 0.001)
    body["retry_after"] = round(seconds, 3)
    return Reply(429, body, {"Retry-After": _format_seconds(seconds)})
