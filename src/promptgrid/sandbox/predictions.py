"""Predictions the sandbox holds, whose status follows from the clock, and the counters it reports."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from promptgrid.sandbox.faults import Fate

TERMINAL = frozenset({"success", "error", "cancelled"})


def input_hash(model: str, inputs: Mapping[str, Any]) -> str:
    """What was asked for (canonical model, normalised inputs): equal hashes are duplicate creates."""
    blob = json.dumps({"model": model, "inputs": dict(inputs)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Prediction:
    """One prediction. Its status is not stored but read off the clock, so nobody has to poll it forward."""

    id: str
    owner: str
    model: str
    raw_input: Mapping[str, Any]
    inputs: dict[str, Any]
    created_at: float
    fate: Fate
    output_format: str
    size: tuple[int, int] | None  # None until an image-to-image input has been fetched
    input_failure: str | None = None
    input_pending: bool = False
    cancelled_at: float | None = None  # when a cancel takes effect (later than asked, when it is ignored)
    cancel_ignored: bool = False
    logs: list[str] = field(default_factory=list)
    outputs: int = 0  # an `output_type: array` model's `num_images` (0: a model answering one URL)

    @property
    def images(self) -> int:
        """How many images a success makes, each billed."""
        return max(self.outputs, 1)

    def output_value(self, base_url: str) -> str | list[str]:
        """A success's `output`: one URL, or an array model's list of them (`<id>.<index>.<format>`)."""
        if not self.outputs:
            return f"{base_url}/outputs/{self.id}.{self.output_format}"
        return [f"{base_url}/outputs/{self.id}.{index}.{self.output_format}" for index in range(self.outputs)]

    @property
    def started_at(self) -> float:
        return self.created_at + self.fate.queue_s

    @property
    def finished_at(self) -> float:
        return self.started_at + self.fate.run_s

    @property
    def latency_s(self) -> float:
        return self.fate.queue_s + self.fate.run_s

    @property
    def drawn_end(self) -> str:
        """How the draw ends, for a benchmark's floor: success; retry or final (an error a client runs
        again or not); never, or held (never, and its cancel ignored: the slot is held on a while)."""
        if self.fate.never_finishes:
            return "held" if self.cancel_ignored else "never"
        if self.input_failure or self.fate.error_code:
            return "retry" if self.fate.retryable and not self.input_failure else "final"
        return "success"

    def status(self, now: float) -> str:
        if self.cancelled_at is not None and now >= self.cancelled_at:
            return "cancelled"
        if now < self.started_at:
            return "created"
        if self.fate.never_finishes or now < self.finished_at or self.input_pending:
            return "processing"
        if self.input_failure or self.fate.error_code:
            return "error"
        return "success"

    def error_output(self) -> dict[str, Any]:
        if self.input_failure:
            return {
                "error_code": "INPUT_DOWNLOAD_ERROR",
                "error_message": f"Could not download the input image: {self.input_failure}",
                "retryable": False,
            }
        messages = {
            "PROVIDER_SERVER_ERROR": "The model provider failed while generating the image.",
            "PROVIDER_RATE_LIMIT": "The model provider is rate limiting requests; try again later.",
            "PROVIDER_REJECTED": "The model provider rejected the request (content filter).",
        }
        code = self.fate.error_code or "PROVIDER_SERVER_ERROR"
        return {
            "error_code": code,
            "error_message": messages.get(code, "The prediction failed."),
            "retryable": self.fate.retryable,
        }

    def output_expired(self, now: float, lifetime: float) -> bool:
        return now >= self.finished_at + lifetime


@dataclass
class Counters:
    """What the stats endpoint reports; `reset` starts them over without touching limits or predictions."""

    requests: Counter[str] = field(default_factory=Counter)
    responses: Counter[int | str] = field(default_factory=Counter)  # by HTTP status, and "dropped"
    faults: Counter[str] = field(default_factory=Counter)
    throttled: int = 0
    throttled_by: Counter[str] = field(default_factory=Counter)  # "rate" or "concurrency"
    payment_required: int = 0
    cancels_ignored: int = 0
    creates: int = 0
    creates_per_input: Counter[str] = field(default_factory=Counter)
    max_window_requests: int = 0
    max_in_flight: int = 0
    predictions: list[Prediction] = field(default_factory=list)

    def record_create(self, prediction: Prediction, digest: str, in_flight: int) -> None:
        self.creates += 1
        self.creates_per_input[digest] += 1
        self.max_in_flight = max(self.max_in_flight, in_flight)
        self.predictions.append(prediction)

    def snapshot(self, now: float) -> dict[str, Any]:
        by_status = Counter(p.status(now) for p in self.predictions)
        succeeded = [p.latency_s for p in self.predictions if p.status(now) == "success"]
        return {
            "requests": {
                kind: self.requests[kind]
                for kind in ("create", "get", "cancel", "executions", "output", "model", "openapi")
            },
            "throttled": self.throttled,
            "throttled_by": {reason: self.throttled_by[reason] for reason in ("rate", "concurrency")},
            "payment_required": self.payment_required,
            "cancels_ignored": self.cancels_ignored,
            # Sandbox seconds from create to success, for floors: images x mean latency / slots.
            "mean_success_latency_s": sum(succeeded) / len(succeeded) if succeeded else None,
            # Every prediction's drawn latency in creation order: what a client with no lag would have met.
            "latencies_s": [p.latency_s for p in self.predictions],
            "drawn_ends": [p.drawn_end for p in self.predictions],
            "max_window_requests": self.max_window_requests,
            "max_in_flight": self.max_in_flight,
            "creates": self.creates,
            "duplicate_creates": sum(n - 1 for n in self.creates_per_input.values() if n > 1),
            "creates_per_input": dict(self.creates_per_input),
            "predictions_by_status": {
                status: by_status[status]
                for status in ("created", "processing", "success", "error", "cancelled")
            },
            # Status codes sit beside "dropped", so sort them as text.
            "responses": {
                str(code): n for code, n in sorted(self.responses.items(), key=lambda item: str(item[0]))
            },
            "faults": dict(self.faults),
        }
