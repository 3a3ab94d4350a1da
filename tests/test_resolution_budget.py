"""A run's model lookups are requests of its key: they go through the key's budget like every other request.

Against the sandbox and a real redis-server: a spec with a shared quota (`api.quota_url`) and a stated cap
sees its lookups entered in the key's shared window, and held back while another process of the key is
paused by a 429.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio

from promptgrid.engine.resolution import resolve_and_check
from promptgrid.quota.base import Limits
from promptgrid.quota.factory import quota_namespace
from promptgrid.quota.shared import RedisBudget
from promptgrid.runs.source import parse_source
from promptgrid.settings import ApiKey
from tests.support.processes import running_redis_server
from tests.support.sandbox import TEST_TIME_SCALE

pytestmark = [pytest.mark.integration, pytest.mark.needs("redis-server")]

KEY = "sk-lookup-test"


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with running_redis_server() as url:
        yield url


def spec_for(tmp_path: Path, base_url: str, quota_url: str, rate_limit: str) -> dict:
    (tmp_path / "prompts.csv").write_text("prompt\na lighthouse\n")
    return {
        "name": "lookups",
        "model": "stable-diffusion-3-5-large",
        "prompts": str(tmp_path / "prompts.csv"),
        "seeds": [1],
        "output": str(tmp_path / "out"),
        "api": {"base_url": base_url, "rate_limit": rate_limit, "quota_url": quota_url},
    }


async def test_lookups_are_counted_in_the_keys_shared_window(tmp_path, sandbox, redis_url, monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    spec = parse_source(spec_for(tmp_path, sandbox.url, redis_url, "60/60s"))
    _, resolution = await resolve_and_check(spec, time_scale=TEST_TIME_SCALE)
    assert resolution.models and not resolution.missing
    lookups = sum(sandbox.stats()["requests"].get(endpoint, 0) for endpoint in ("model", "openapi"))
    window = f"promptgrid:quota:{quota_namespace(ApiKey(KEY))}:window"
    client = redis.asyncio.Redis.from_url(redis_url)
    assert lookups >= 1 and await client.zcard(window) == lookups
    await client.aclose()


async def test_lookups_wait_out_a_pause_another_process_of_the_key_met(
    tmp_path, sandbox, redis_url, monkeypatch
):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY + "-paused")
    other = RedisBudget(Limits.auto(), redis_url, quota_namespace(ApiKey(KEY + "-paused")))
    await other.on_throttled(0.4, "poll")  # the engine of another run of the key met a 429
    spec = parse_source(spec_for(tmp_path, sandbox.url, redis_url, "auto"))
    started = time.monotonic()
    await asyncio.wait_for(resolve_and_check(spec, time_scale=TEST_TIME_SCALE), 10)
    assert time.monotonic() - started >= 0.35
    await other.aclose()
