"""Turning a finished prediction into its job's outcome: the error it ended with, or its images, fetched.

The output is fetched right after success (hosted outputs expire), outside the budget (storage is not the
API); 5xx and network failures are retried `fetch_retries` times, anything else ends the job. A paid image
is kept whatever its format and size: the outcome records what it really is (promptgrid.api.fetch).

A model with `output_type: array` returns several outputs (`num_images`), each billed: every one is fetched
and checked, the first into the outcome's image fields, the rest into `more_images`. One that cannot be
fetched ends the job as a single image would, naming which output it was.
"""

from __future__ import annotations

import asyncio

import httpx

from promptgrid.api.fetch import FetchedImage, expected_image, fetch_output
from promptgrid.api.prediction import Prediction, PredictionStatus
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.retry import JobEnded, backoff_s, ended_by_error, failed
from promptgrid.errors import FetchFailed
from promptgrid.types import ErrorCode, Job, JobOutcome, JobStatus, OutputImage


async def collect(
    storage: httpx.AsyncClient, config: EngineConfig, job: Job, prediction: Prediction, outcome: JobOutcome
) -> None:
    """Fill `outcome` from a finished prediction: its images, or a JobEnded saying why there are none."""
    if prediction.status is PredictionStatus.ERROR:
        raise ended_by_error(prediction)
    if prediction.status is PredictionStatus.CANCELLED:
        raise JobEnded(JobStatus.CANCELLED, ErrorCode.PREDICTION_CANCELLED, "cancelled at the API")
    urls = prediction.output_urls or ((prediction.output_url,) if prediction.output_url else ())
    if not urls:
        raise failed(ErrorCode.OUTPUT_MISSING, "the prediction succeeded without an output URL")
    images = [
        await fetch_image(storage, config, url, job, index, len(urls)) for index, url in enumerate(urls)
    ]
    outcome.status = JobStatus.SUCCESS
    first = images[0]
    outcome.image, outcome.sha256, outcome.bytes = first.data, first.sha256, first.bytes
    outcome.image_format, outcome.width, outcome.height = first.format, first.width, first.height
    outcome.size_mismatch = first.size_mismatch
    outcome.more_images = [_output_image(image) for image in images[1:]]


def _output_image(image: FetchedImage) -> OutputImage:
    return OutputImage(
        image.data, image.format, image.sha256, image.bytes, image.width, image.height, image.size_mismatch
    )


async def fetch_image(
    storage: httpx.AsyncClient, config: EngineConfig, url: str, job: Job, index: int = 0, count: int = 1
) -> FetchedImage:
    size = expected_image(job.model, job.inputs)
    for attempt in range(config.fetch_retries + 1):
        try:
            return await fetch_output(
                storage, url, size=size, max_bytes=config.output_max_bytes, deadline_s=config.fetch_deadline_s
            )
        except FetchFailed as exc:
            if not exc.retryable or attempt == config.fetch_retries:
                which = f"output {index + 1} of {count}: " if count > 1 else ""
                raise failed(exc.code, which + exc.message) from None
            await asyncio.sleep(backoff_s(attempt, config.retry_backoff_s, config.max_backoff_s))
    raise AssertionError("unreachable: the last attempt returns or raises")
