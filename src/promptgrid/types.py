"""The records that move between promptgrid's stages: a job going in, its outcome coming out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from promptgrid.defaults import MODEL_VERSION


class JobStatus(StrEnum):
    """How a job ended. Every outcome the engine returns carries one of these."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class ErrorCode(StrEnum):
    """Why a job did not succeed: the manifest's `error_code`, what backfill's `--where` filters on.

    The first group is promptgrid's own; the second is what the API itself reports for a failed prediction
    (passed through as the API wrote it, so a code not listed here may still appear). docs/errors.md
    explains each one and what to do about it.
    """

    # promptgrid's own
    CREATE_OUTCOME_UNKNOWN = "CREATE_OUTCOME_UNKNOWN"
    CREATE_FAILED = "CREATE_FAILED"
    PAYMENT_REQUIRED = "PAYMENT_REQUIRED"
    AUTHENTICATION_FAILED = "AUTHENTICATION_FAILED"
    INPUT_REJECTED = "INPUT_REJECTED"
    INPUT_PREPARATION_FAILED = "INPUT_PREPARATION_FAILED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    PREDICTION_NOT_FOUND = "PREDICTION_NOT_FOUND"
    PREDICTION_ERROR = "PREDICTION_ERROR"
    PREDICTION_CANCELLED = "PREDICTION_CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    OUTPUT_MISSING = "OUTPUT_MISSING"
    OUTPUT_EXPIRED = "OUTPUT_EXPIRED"
    OUTPUT_FETCH_FAILED = "OUTPUT_FETCH_FAILED"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    OUTPUT_INVALID = "OUTPUT_INVALID"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    STALLED = "STALLED"
    # the API's
    INPUT_VALIDATION_ERROR = "INPUT_VALIDATION_ERROR"
    INPUT_DOWNLOAD_ERROR = "INPUT_DOWNLOAD_ERROR"
    PROVIDER_REJECTED = "PROVIDER_REJECTED"
    PROVIDER_RATE_LIMIT = "PROVIDER_RATE_LIMIT"
    PROVIDER_SERVER_ERROR = "PROVIDER_SERVER_ERROR"
    NETWORK_ERROR = "NETWORK_ERROR"
    EXECUTION_TIMEOUT = "EXECUTION_TIMEOUT"


@dataclass(frozen=True, slots=True)
class Job:
    """One image to generate.

    `model` is promptgrid's name for the model (the dashed slug, whichever spelling the spec used; the slug
    sent is the one the API knows, resolved before the first create). `inputs` are the model's inputs,
    validated and normalised against its schema (promptgrid.models), the seed fixed where the model
    has one. `job_id` is a hash of model, version and inputs, so the same image asked for twice is one
    job. `carried` holds the grid's other columns, passed to the manifest untouched. A prompt rendered
    from a template keeps the template and the value of each variable it used.
    """

    job_id: str
    model: str
    inputs: Mapping[str, Any]
    version: str = MODEL_VERSION
    carried: Mapping[str, Any] = field(default_factory=dict)
    variables: Mapping[str, str] = field(default_factory=dict)
    template: str | None = None


@dataclass(slots=True)
class OutputImage:
    """One image of a prediction, fetched and checked: its bytes and what they really are."""

    image: bytes | None = field(default=None, repr=False)
    image_format: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    size_mismatch: bool | None = None


@dataclass(slots=True)
class JobOutcome:
    """What became of one job: the manifest row's source, and the image bytes on success."""

    job_id: str
    status: JobStatus
    error_code: str | None = None  # an ErrorCode, or a code the API reported
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
    image_format: str | None = None  # the real encoding, read from the bytes
    sha256: str | None = None
    bytes: int | None = None
    width: int | None = None  # the real pixel size, read from the bytes
    height: int | None = None
    size_mismatch: bool | None = None  # None when nothing said what size to expect
    model_slug: str | None = None  # the slug the create was sent with (the API's spelling)
    # An `output_type: array` model's outputs after the first (`num_images` > 1); the first is the image
    # fields above, so a one-image outcome reads as before. Each image becomes a manifest row of its own.
    more_images: list[OutputImage] = field(default_factory=list)

    @property
    def output_count(self) -> int:
        """How many manifest rows this outcome makes: one per image (a failure: one)."""
        return 1 + len(self.more_images)

    def output_image(self, index: int) -> OutputImage:
        """Image `index` of this outcome (0: the one in the fields above)."""
        if index > 0:
            return self.more_images[index - 1]
        return OutputImage(
            self.image,
            self.image_format,
            self.sha256,
            self.bytes,
            self.width,
            self.height,
            self.size_mismatch,
        )
