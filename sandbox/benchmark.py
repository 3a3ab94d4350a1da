"""Figures for the sandbox's own speed: requests per second by kind and render cost, against a baseline.

Run `python -m sandbox.benchmark`. The server runs as `promptgrid sandbox` in its own process (in-process it
would share the client's GIL). The baseline is the cheapest round trip the same server makes (a 401, refused
before any work), measured in the same run, so the ratios hold on any machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx

from promptgrid.models import ASPECT_RATIOS
from sandbox.render import render, render_key

UNLIMITED = ["--time-scale", "100", "--rate-limit", "1000000000", "--max-in-flight", "1000000000"]
BODY = {"model": "stable-diffusion-3-5-large", "version": "0.0.1", "input": {"prompt": "a benchmark kite"}}


def _rate(count: int, call: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for index in range(count):
        call(index)
    return count / (time.perf_counter() - started)


def sequential_rates(url: str, count: int = 500) -> dict[str, float]:
    """Requests per second from one keep-alive client, one request at a time."""
    with httpx.Client(base_url=url, timeout=10) as client:
        keyed = {"X-API-Key": "bench"}
        client.get("/v1/prediction/warmup")
        prediction_id = client.post("/v1/prediction/", json=BODY, headers=keyed).json()["predictionID"]

        def create(i: int) -> object:
            body = {**BODY, "input": {**BODY["input"], "seed": i}}
            return client.post("/v1/prediction/", json=body, headers=keyed)

        return {
            "baseline (401)": _rate(count, lambda i: client.get("/v1/prediction/x")),
            "get": _rate(count, lambda i: client.get(f"/v1/prediction/{prediction_id}", headers=keyed)),
            "create": _rate(count, create),
        }


async def concurrent_get_rate(url: str, count: int = 2000, concurrency: int = 32) -> float:
    """Polls per second with `concurrency` requests in the air (what a large run's poller does)."""
    keyed = {"X-API-Key": "bench"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits, headers=keyed) as client:
        prediction_id = (await client.post("/v1/prediction/", json=BODY)).json()["predictionID"]
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                await client.get(f"/v1/prediction/{prediction_id}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def render_costs(repeats: int = 10) -> dict[str, float]:
    """Milliseconds to draw and encode one 1024x1024 image, by format (uncached)."""
    costs = {}
    for fmt in ("webp", "jpg", "png"):
        samples = []
        for seed in range(repeats):
            inputs = {"prompt": "a benchmark kite", "seed": seed, "output_format": fmt, "output_quality": 90}
            key = render_key("m", inputs, ASPECT_RATIOS["1:1"])
            started = time.perf_counter()
            render(key, inputs, ASPECT_RATIOS["1:1"])
            samples.append((time.perf_counter() - started) * 1000)
        costs[fmt] = statistics.median(samples)
    return costs


@contextlib.contextmanager
def sandbox_process(options: list[str]) -> Iterator[str]:
    """`promptgrid sandbox` on a free port; yields its URL, interrupts it at the end."""
    command = [sys.executable, "-m", "promptgrid.cli", "sandbox", "--port", "0", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().split()[-1]
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


def main() -> None:
    with sandbox_process(UNLIMITED) as url:
        rates = sequential_rates(url)
        concurrent = asyncio.run(concurrent_get_rate(url))
    baseline = rates["baseline (401)"]
    print("sandbox requests per second (one client, sequential, keep-alive; limits lifted):")
    for kind, rate in rates.items():
        print(f"  {kind:<15} {rate:8.0f}/s  {rate / baseline:5.2f}x baseline")
    print(f"  get, 32 concurrent {concurrent:5.0f}/s  {concurrent / baseline:5.2f}x baseline")
    print("render, 1024x1024, uncached (median ms):")
    for fmt, ms in render_costs().items():
        print(f"  {fmt:<5} {ms:6.1f} ms")


if __name__ == "__main__":
    main()
