"""Every network read ends by an overall deadline, and a create is announced only once it really leaves.

The drip-fed output comes from the sandbox (one byte per interval, as a throttled storage host sends); the
drip-fed API answer is a scripted `httpx.MockTransport` stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from promptgrid.api.client import ApiClient
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.errors import TransportFailure
from promptgrid.models.check import check_input
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus
from tests.support.processes import free_port
from tests.support.sandbox import TEST_TIME_SCALE

MODEL = "stable-diffusion-3-5-large"
KEY = ApiKey("sk-deadline-test-key")


def job(n: int = 1) -> Job:
    inputs, errors = check_input(MODEL, {"prompt": "a slow river", "seed": n, "output_format": "png"})
    assert not errors
    return Job(job_id=f"job-{n}", model=MODEL, inputs=inputs)


async def test_a_drip_fed_output_ends_by_its_deadline_not_never(sandbox_factory):
    # One byte every 2 s (0.02 s at x100): a ~1 MB png would take hours, and no single read ever times out.
    sandbox = sandbox_factory(output_drip_s=2.0)
    limits = Limits(requests=600, window_s=60.0 / TEST_TIME_SCALE, max_in_flight=2)
    config = EngineConfig(limits=limits, fetch_deadline_s=0.4, fetch_retries=1).scaled(TEST_TIME_SCALE)
    async with ApiClient(sandbox.url, KEY) as client:
        engine = Engine(client, LocalBudget(limits), config)
        started = time.monotonic()
        outcome = await engine.run_job(job())
        took = time.monotonic() - started
    assert outcome.status is JobStatus.FAILED and outcome.error_code == "OUTPUT_FETCH_FAILED"
    assert "did not download within 0.4 s" in outcome.error_message
    # Two downloads of 0.4 s each, a backoff and the prediction itself: bounded, far from hours.
    assert took < 10, took
    assert sandbox.stats()["requests"]["output"] == 2


async def test_an_api_answer_that_drips_ends_by_the_request_deadline():
    async def drip() -> AsyncIterator[bytes]:
        for char in '{"status": "processing", "id": "p1"}':
            await asyncio.sleep(0.05)
            yield char.encode()

    class Dripping(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in drip():
                yield chunk

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Dripping()))
    async with ApiClient("http://api.test", KEY, transport=transport, deadline_s=0.3) as client:
        with pytest.raises(TransportFailure, match="no complete answer within 0.3 s"):
            await client.get("p1")


async def test_a_create_that_never_reached_a_server_is_never_announced():
    announced: list[str] = []

    async def announce() -> None:
        announced.append("sent")

    async with ApiClient(f"http://127.0.0.1:{free_port()}", KEY) as client:  # nothing listens there
        with pytest.raises(TransportFailure) as failure:
            await client.create(MODEL, "0.0.1", job().inputs, before_send=announce)
    assert failure.value.sent is False and announced == []


async def test_a_create_is_announced_once_just_before_the_server_sees_it(sandbox):
    seen: list[int] = []

    async def announce() -> None:
        seen.append(sandbox.stats()["requests"]["create"])

    async with ApiClient(sandbox.url, KEY) as client:
        await client.create(MODEL, "0.0.1", job().inputs, before_send=announce)
    assert seen == [0] and sandbox.stats()["requests"]["create"] == 1
