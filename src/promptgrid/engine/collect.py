"""Turning a finished prediction into its job's outcome: the error it ended with, or its image, fetched.

The output is fetched right after success (hosted outputs expire), outside the budget (storage is not the
API); 5xx and network failures are retried `fetch_retries` times, anything else ends the job. A paid image
is kept whatever its format and size: the outcome records what it really is (promptgrid.api.fetch).
"""

from __future__ import annotations

import asyncio

import httpx

from promptgrid.api.fetch import FetchedImage, expected_image, fetch_output
from promptgrid.api.prediction import Prediction, PredictionStatus
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.retry import JobEnded, backoff_s, ended_by_error, failed
from promptgrid.errors import FetchFailed
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus


async def collect(
    storage: httpx.AsyncClient, config: EngineConfig, job: Job, prediction: Prediction, outcome: JobOutcome
) -> None:
    """Fill `outcome` from a finished prediction: its image, or a JobEnded saying why there is none."""
    if prediction.status is PredictionStatus.ERROR:
        raise ended_by_error(prediction)
    if prediction.status is PredictionStatus.CANCELLED:
        raise JobEnded(JobStatus.CANCELLED, ErrorCode.PREDICTION_CANCELLED, "cancelled at the API")
    if prediction.output_url is None:
        raise failed(ErrorCode.OUTPUT_MISSING, "the prediction succeeded without an output URL")
    image = await fetch_image(storage, config, prediction.output_url, job)
    outcome.status = JobStatus.SUCCESS
    outcome.image, outcome.sha256, outcome.bytes = image.data, image.sha256, image.bytes
    outcome.image_format, outcome.width, outcome.height = image.format, image.width, image.height
    outcome.size_mismatch = image.size_mismatch


async def fetch_image(storage: httpx.AsyncClient, config: EngineConfig, url: str, job: Job) -> FetchedImage:
    size = expected_image(job.model, job.inputs)
    for attempt in range(config.fetch_retries + 1):
        try:
            return await fetch_output(
                storage, url, size=size, max_bytes=config.output_max_bytes, deadline_s=config.fetch_deadline_s
            )
        except FetchFailed as exc:
            if not exc.retryable or attempt == config.fetch_retries:
                raise failed(exc.code, exc.message) from None
            await asyncio.sleep(backoff_s(attempt, config.retry_backoff_s, config.max_backoff_s))
    raise AssertionError("unreachable: the last attempt returns or raises")
