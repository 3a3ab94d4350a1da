"""The records that move between promptgrid's stages: a job going in, its outcome coming out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    """How a job ended. Every outcome the engine returns carries one of these."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Job:
    """One image to generate.

    `inputs` are the model's inputs, validated and normalised (see promptgrid.models.check_input), the
    seed always fixed. `job_id` is a hash of model, version and inputs, so the same image asked for twice
    is one job. `carried` holds the grid's other columns, passed to the manifest untouched.
    """

    job_id: str
    model: str
    inputs: Mapping[str, Any]
    version: str = "0.0.1"
    carried: Mapping[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class JobOutcome:
    """What became of one job: the manifest row's source, and the image bytes on success."""

    job_id: str
    status: JobStatus
    error_code: str | None = None
    error_message: str | None = None
    prediction_id: str | None = None
    attempts: int = 0
    api_requests: int = 0
    queued_at: datetime | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    predict_time_s: float | None = None
    cost_usd: float | None = None
    image: bytes | None = field(default=None, repr=False)
    image_format: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
