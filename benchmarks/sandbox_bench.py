"""Figures for the sandbox's own speed: requests per second by kind and render cost, against a baseline.

Run `python benchmarks/sandbox_bench.py`. The server runs as `promptgrid sandbox` in its own process
(in-process it would share the client's GIL). The baseline is the cheapest round trip the same server
makes (a 401, refused before any work), measured in the same run, so the ratios hold on any machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx

from promptgrid.models.catalog import ASPECT_RATIOS
from promptgrid.sandbox.render import render, render_key

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


def _poll_loop(url: str, count: int, results: multiprocessing.Queue) -> None:
    with httpx.Client(base_url=url, timeout=10, headers={"X-API-Key": "bench"}) as client:
        prediction_id = client.post("/v1/prediction/", json=BODY).json()["predictionID"]
        results.put(_rate(count, lambda i: client.get(f"/v1/prediction/{prediction_id}")))


def parallel_get_rate(url: str, clients: int = 4, count: int = 500) -> float:
    """Polls per second summed over `clients` client processes (one client process cannot saturate it)."""
    results: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_poll_loop, args=(url, count, results)) for _ in range(clients)]
    for worker in workers:
        worker.start()
    rates = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates)


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
        parallel = parallel_get_rate(url)
    baseline = rates["baseline (401)"]
    print("sandbox requests per second (one client, sequential, keep-alive; limits lifted):")
    for kind, rate in rates.items():
        print(f"  {kind:<15} {rate:8.0f}/s  {rate / baseline:5.2f}x baseline")
    print(f"  get, 4 clients  {parallel:8.0f}/s  {parallel / baseline:5.2f}x baseline (summed)")
    print("render, 1024x1024, uncached (median ms):")
    for fmt, ms in render_costs().items():
        print(f"  {fmt:<5} {ms:6.1f} ms")


if __name__ == "__main__":
    main()
