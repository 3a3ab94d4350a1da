"""Engine benchmark: the engine against the sandbox at ×10 time, beside the seed page's plain loop.

For polls counted and not counted it prints images, 429s, duplicate creates, API requests per image and the
span from first to last API request against the floor the quota allows (requests needed at the allowed
rate), for the engine and for the seed page's loop (create, poll every second, ten at a time, no budget),
run in the same process against the same sandbox settings. Then the engine's own overhead: jobs per second
with the limits lifted and zero latency, against the bare HTTP calls it makes.

    .venv/bin/python benchmarks/engine_bench.py [--images 120] [--scale 10] [--overhead-jobs 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import time
from dataclasses import dataclass

import httpx
from PIL import Image

from promptgrid.sandbox.server import SandboxConfig, running_sandbox
from promptgrid.settings import ApiKey
from promptgrid.tasks.api.client import ApiClient
from promptgrid.tasks.engine.config import EngineConfig
from promptgrid.tasks.engine.engine import Engine
from promptgrid.tasks.models.check import check_input
from promptgrid.tasks.quota.base import Limits
from promptgrid.tasks.quota.local import LocalBudget
from promptgrid.types import Job, JobStatus

MODEL = "stable-diffusion-3-5-large"
KEY = ApiKey("sk-benchmark-key")


class RecordingTransport(httpx.AsyncHTTPTransport):
    """Notes when each API request leaves (output downloads are not API requests)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/"):
            self.sent.append(time.monotonic())
        return await super().handle_async_request(request)


@dataclass
class Figures:
    images: int
    throttled: int
    duplicates: int
    requests: int
    span_s: float
    floor_s: float

    def row(self, name: str, count: int) -> str:
        ratio = self.span_s / self.floor_s
        return (
            f"| {name:<24} | {self.images:>3}/{count} | {self.throttled:>5} | {self.duplicates:>4} | "
            f"{self.requests / count:>7.2f} | {self.span_s:>6.1f} | {self.floor_s:>5.1f} | {ratio:>9.2f}x |"
        )


def make_jobs(count: int) -> list[Job]:
    jobs = []
    for n in range(count):
        inputs, _ = check_input(MODEL, {"prompt": f"a lighthouse at dusk, take {n}", "seed": n})
        jobs.append(Job(job_id=f"job-{n}", model=MODEL, inputs=inputs))
    return jobs


async def run_engine(
    url: str, jobs: list[Job], limits: Limits, scale: float
) -> tuple[int, RecordingTransport]:
    transport = RecordingTransport()
    config = EngineConfig(limits=limits).scaled(scale)
    async with ApiClient(url, KEY, transport=transport) as client:
        engine = Engine(client, LocalBudget(config.limits), config)
        images = sum([outcome.status is JobStatus.SUCCESS async for outcome in engine.run(jobs)])
    return images, transport


async def run_seed_loop(
    url: str, jobs: list[Job], limits: Limits, scale: float
) -> tuple[int, RecordingTransport]:
    """The seed page's loop: create, then poll every (API) second until done; ten at a time, no budget."""
    transport = RecordingTransport()
    tick = 1.0 / scale
    queue = iter(jobs)
    images = 0
    async with ApiClient(url, KEY, transport=transport) as client:

        async def worker() -> None:
            nonlocal images
            for job in queue:
                got = await seed_one(client, job, tick)
                images += got

        await asyncio.gather(*(worker() for _ in range(limits.max_in_flight)))
    return images, transport


async def seed_one(client: ApiClient, job: Job, tick: float) -> int:
    headers = {"X-API-Key": KEY.reveal()}
    body = {"model": job.model, "version": job.version, "input": dict(job.inputs)}
    while True:  # a 429 on create created nothing: wait a second and try again
        answer = await client._http.post("/v1/prediction/", json=body, headers=headers)
        if answer.status_code == 200:
            break
        await asyncio.sleep(tick)
    pid = answer.json()["predictionID"]
    while True:
        await asyncio.sleep(tick)
        answer = await client._http.get(f"/v1/prediction/{pid}", headers=headers)
        if answer.status_code != 200:
            continue
        status = answer.json()["status"]
        if status == "success":
            output = await client.storage.get(answer.json()["output"])
            return int(output.status_code == 200)
        if status in ("error", "cancelled"):
            return 0


def measure(runner, jobs: list[Job], polls_count: bool, scale: float) -> Figures:
    limits = Limits(requests=60, window_s=60.0 / scale, max_in_flight=10, polls_count=polls_count)
    config = SandboxConfig(time_scale=scale, polls_count=polls_count, seed=1)
    with running_sandbox(config) as sandbox:
        images, transport = asyncio.run(runner(sandbox.url, jobs, limits, scale))
        stats = sandbox.stats()
    per_image = 2 if polls_count else 1
    floor = len(jobs) * per_image / limits.requests * limits.window_s
    return Figures(
        images=images,
        throttled=stats["throttled"],
        duplicates=stats["duplicate_creates"],
        requests=len(transport.sent),
        span_s=transport.sent[-1] - transport.sent[0],
        floor_s=floor,
    )


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, "PNG")
    return out.getvalue()


def instant_api() -> httpx.MockTransport:
    """An API with no limits and no latency: every prediction is done at the first poll."""
    ids = itertools.count()
    image = tiny_png()

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/out/"):
            return httpx.Response(200, content=image)
        if request.method == "POST":
            return httpx.Response(200, json={"status": "success", "predictionID": f"p{next(ids)}"})
        pid = path.rsplit("/", 1)[1]
        return httpx.Response(
            200, json={"id": pid, "status": "success", "output": f"http://127.0.0.1/out/{pid}"}
        )

    return httpx.MockTransport(handle)


async def engine_overhead(count: int) -> tuple[float, float]:
    """Jobs per second through the engine, and through its three HTTP calls made bare, one after another."""
    inputs, _ = check_input(
        MODEL, {"prompt": "x", "seed": 1, "output_format": "png", "image": "https://in.example/a.png"}
    )
    jobs = [Job(job_id=f"j{n}", model=MODEL, inputs=inputs) for n in range(count)]
    limits = Limits(requests=10**9, window_s=1.0, max_in_flight=256)
    config = EngineConfig(limits=limits).scaled(1000.0)
    async with ApiClient("http://127.0.0.1", KEY, transport=instant_api()) as client:
        engine = Engine(client, LocalBudget(limits), config)
        started = time.perf_counter()
        done = sum([o.status is JobStatus.SUCCESS async for o in engine.run(jobs)])
        engine_rate = done / (time.perf_counter() - started)
        started = time.perf_counter()
        for job in jobs[: count // 3]:
            pid = await client.create(job.model, job.version, job.inputs)
            prediction = await client.get(pid)
            await client.storage.get(prediction.output_url)
        bare_rate = (count // 3) / (time.perf_counter() - started)
    return engine_rate, bare_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--overhead-jobs", type=int, default=3000)
    args = parser.parse_args()
    jobs = make_jobs(args.images)
    window = 60 / args.scale
    print(f"{args.images} images, sandbox at x{args.scale:g}: 60 requests per {window:g} s, 10 in flight")
    print("| run                      | images  |   429 | dups | req/img | span s | floor | span/floor |")
    print("|--------------------------|---------|-------|------|---------|--------|-------|------------|")
    for polls_count in (True, False):
        label = "polls counted" if polls_count else "polls free"
        for name, runner in (("engine", run_engine), ("seed loop", run_seed_loop)):
            figures = measure(runner, jobs, polls_count, args.scale)
            print(figures.row(f"{name}, {label}", args.images), flush=True)
    engine_rate, bare_rate = asyncio.run(engine_overhead(args.overhead_jobs))
    print(
        f"\noverhead, limits lifted, zero latency, 8x8 png outputs: engine {engine_rate:,.0f} jobs/s; "
        f"the bare create+get+download calls in sequence {bare_rate:,.0f} jobs/s "
        f"(engine/bare {engine_rate / bare_rate:.2f}x)"
    )


if __name__ == "__main__":
    main()
