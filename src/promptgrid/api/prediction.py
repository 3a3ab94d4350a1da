"""A prediction as the API reports it: a closed set of statuses, and answers read defensively."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from promptgrid.redact import scrub

_MESSAGE_LIMIT = 300


class PredictionStatus(StrEnum):
    """The closed set of states a prediction is in, older spellings folded in by `parse_status`."""

    CREATED = "created"
    PROCESSING = "processing"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # a status this client does not know: treated as not finished


TERMINAL = frozenset({PredictionStatus.SUCCESS, PredictionStatus.ERROR, PredictionStatus.CANCELLED})
_STATUS_ALIASES = {
    "created": PredictionStatus.CREATED,
    "queued": PredictionStatus.CREATED,
    "pending": PredictionStatus.CREATED,
    "starting": PredictionStatus.CREATED,
    "processing": PredictionStatus.PROCESSING,
    "running": PredictionStatus.PROCESSING,
    "success": PredictionStatus.SUCCESS,
    "succeeded": PredictionStatus.SUCCESS,
    "completed": PredictionStatus.SUCCESS,  # the Python docs page's word for success
    "error": PredictionStatus.ERROR,
    "failed": PredictionStatus.ERROR,
    "cancelled": PredictionStatus.CANCELLED,
    "canceled": PredictionStatus.CANCELLED,
}


def parse_status(raw: Any) -> PredictionStatus:
    return _STATUS_ALIASES.get(str(raw).strip().lower(), PredictionStatus.UNKNOWN)


@dataclass(frozen=True)
class Prediction:
    """One prediction as the API last reported it."""

    id: str
    status: PredictionStatus
    raw_status: str
    output_url: str | None = None  # the first output: what a single-image model returns
    error_code: str | None = None
    error_message: str | None = None
    retryable: bool | None = None
    predict_time_s: float | None = None
    cost_usd: float | None = None
    inputs: Mapping[str, Any] | None = None  # as the API echoes them back (what the create sent)
    output_urls: tuple[str, ...] = ()  # every output, in the API's order (an `output_type: array` model's)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


def parse_prediction(prediction_id: str, body: Mapping[str, Any]) -> Prediction:
    """Read a get answer defensively: output as a string, a list of them, or {url} items; errors as text or
    dict.

    Every text kept (status, error code and message) is scrubbed of the API key, which a careless API may
    echo back.
    """
    raw_status = scrub(str(body.get("status", "")))
    status = parse_status(raw_status)
    output = body.get("output")
    raw_metrics = body.get("metrics")
    metrics: Mapping[str, Any] = raw_metrics if isinstance(raw_metrics, Mapping) else {}
    raw_input = body.get("input")
    fields: dict[str, Any] = {
        "predict_time_s": _as_float(metrics.get("predict_time")),
        "cost_usd": _as_float(metrics.get("cost")),
        "inputs": raw_input if isinstance(raw_input, Mapping) else None,
    }
    if status is PredictionStatus.SUCCESS:
        urls = output_urls(output)
        fields["output_urls"] = urls
        fields["output_url"] = urls[0] if urls else None
    elif status is PredictionStatus.ERROR:
        fields.update(_error_detail(output, body))
    return Prediction(id=str(body.get("id") or prediction_id), status=status, raw_status=raw_status, **fields)


def output_urls(output: Any) -> tuple[str, ...]:
    """Every output URL of a success: a string, a list (an `output_type: array` model's `num_images`), or
    `{url}` items; anything else in the list is skipped rather than guessed at."""
    items = output if isinstance(output, list | tuple) else [output]
    return tuple(url for url in map(_output_url, items) if url is not None)


def _output_url(output: Any) -> str | None:
    if isinstance(output, Mapping):
        output = output.get("url") or output.get("uri")
    if isinstance(output, str) and output.strip().startswith(("http://", "https://")):
        return output.strip()
    return None


def _error_detail(output: Any, body: Mapping[str, Any]) -> dict[str, Any]:
    """The error of a failed prediction: `{error_code, error_message, retryable}`, the minimal `{error}`,
    or plain text; the message is kept whichever shape it came in."""
    if isinstance(output, Mapping):
        retryable = output.get("retryable")
        text = (
            output.get("error_message") or output.get("message") or output.get("error") or body.get("error")
        )
        return {
            "error_code": scrub(str(output.get("error_code") or "PREDICTION_ERROR")),
            "error_message": clip(scrub(str(text or ""))),
            "retryable": retryable if isinstance(retryable, bool) else None,
        }
    text = output if isinstance(output, str) else body.get("error") or body.get("logs") or ""
    return {"error_code": "PREDICTION_ERROR", "error_message": clip(scrub(str(text))), "retryable": None}


def _as_float(value: Any) -> float | None:
    try:
        return float(value) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def clip(text: str) -> str:
    """The text, cut to a length fit for a manifest cell or a log line."""
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT] + "…"
