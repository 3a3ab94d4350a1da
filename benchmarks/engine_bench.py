"""Engine benchmark: the engine against the sandbox at x10 time, beside the seed page's plain loop, per case.

A case is a latency spread (lognormal sigma 0.1, 0.25, 0.5, and 0.25 with a heavy tail: 10% of predictions
take up to 5x longer), a limit model and a fault mix:

- page-counted: the model page's 60 requests per window (6 s at x10), polls counted, 10 in flight per key;
- page-free: the same with polls free of the limit;
- docs: the documentation's: no request-rate limit, 10 concurrent executions per organisation, 429s that
  speak of concurrent executions, no Retry-After;
- docs-held: the same with 3 of the 10 slots held by other keys of the organisation;
- 402: the docs model with a 402 for every create while 5 are in flight.

The engine runs as a spec would by default (`rate_limit: auto`, `max_concurrent: 10`), told nothing of the
limit model, on this process's own budget, or with `--budget redis` on a RedisBudget (the budget of a spec
with `api.quota_url`) kept in a throwaway redis-server on loopback. Beside it, in the same process and
against a fresh sandbox with the same settings, the seed page's loop: create (again a second later if
refused), poll every second, ten at a time, no budget; it gives a prediction up at the API's own 300 s
timeout. The sandbox runs in its own process.

For each run: images, 429s, 402s, duplicate creates, API requests per image, the span from first to last API
request, the floor (the larger of images x mean latency / slots available, and the requests the rate limit
needs at its rate: 2 per image when polls count, 1 when not), and the engine's span against the loop's;
under each engine row, the request cap it adopted. Under a fault mix the span ends when the predictions that
never finish have been given up (the engine: its deadline, then the watch after a cancel the API may ignore;
the loop: the API's 300 s), which no client can know sooner; so each fault case also gives the time to the
last image in hand, the figure that compares with the floor. Where polls count, the floor is that of a
client polling each prediction; the engine sees most ends in the executions listing instead (one request
for all in flight), so it can go under it: under such rows, the floor with one request per image (the
creates alone) too. Each case also gives the time a client with no lag would take on the draws each run met
(`ideal_last_image_s`): the floor plus what the batch's last predictions add, which no client can avoid,
since a prediction's latency is not known before it runs. Under a fault mix that client also runs retryable
errors again and knows at once a prediction that never finishes, so its time to the last image bounds the
engine's (and the loop's, which gives failures up); and the time to as many images as the engine and the
loop both got.

    .venv/bin/python benchmarks/engine_bench.py                      # every case (~20 min)
    .venv/bin/python benchmarks/engine_bench.py --spreads 0.25 --models docs,docs-held --faults none
    .venv/bin/python benchmarks/engine_bench.py --budget redis --models page-counted --faults none
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import io
import itertools
import json
import os
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial

import httpx
from PIL import Image
from support import redis_process, sandbox_process

from promptgrid.api.client import ApiClient
from promptgrid.engine.config import EngineConfig, WatchPolicy
from promptgrid.engine.engine import Engine
from promptgrid.models.check import check_input
from promptgrid.quota.base import Budget, Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.quota.shared import RedisBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus

MODEL = "stable-diffusion-3-5-large"
KEY = ApiKey("sk-benchmark-key")
API_TIMEOUT_S = 300.0  # the API's own timeout for a prediction: where the seed loop gives up

SPREADS: dict[str, tuple[str, ...]] = {
    "0.1": ("--latency-sigma", "0.1"),
    "0.25": ("--latency-sigma", "0.25"),
    "0.5": ("--latency-sigma", "0.5"),
    "tail": ("--latency-sigma", "0.25", "--latency-tail-rate", "0.1", "--latency-tail-factor", "5"),
}
MODELS: dict[str, tuple[str, ...]] = {
    "page-counted": ("--limit-model", "page"),
    "page-free": ("--limit-model", "page", "--no-polls-count"),
    "docs": ("--limit-model", "docs", "--no-retry-after"),
    "docs-held": ("--limit-model", "docs", "--no-retry-after", "--held-by-others", "3"),
    "402": ("--limit-model", "docs", "--no-retry-after", "--payment-limit", "5"),
}
FAULTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "mix": (
        *("--get-5xx-rate", "0.05", "--create-5xx-rate", "0.02", "--error-rate", "0.05"),
        *("--never-finish-rate", "0.02", "--cancel-ignored-rate", "0.5", "--url-lifetime-s", "60"),
    ),
}
SLOTS = {"page-counted": 10, "page-free": 10, "docs": 10, "docs-held": 7, "402": 5}


class RecordingTransport(httpx.AsyncHTTPTransport):
    """Notes when each API request leaves (output downloads are not API requests), and when each image was in
    hand."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[float] = []
        self.stored: list[float] = []  # when each image was in hand (noted by the runner)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v1/"):
            self.sent.append(time.monotonic())
        return await super().handle_async_request(request)


@dataclass
class Figures:
    images: int
    throttled: int
    payment: int
    duplicates: int
    requests: int
    span_s: float
    floor_s: float
    last_image_s: float  # from the first API request to the last image in hand
    images_at_s: list[float]  # from the first API request to each image in hand, in order
    creates_floor_s: float | None = None  # where polls count: the floor with one request per image
    adopted: str | None = None
    ideal_s: float | None = None  # a client with no lag on the draws this run met, to its last image

    def row(self, case: str, runner: str, count: int, against: Figures | None = None) -> str:
        versus = f"{self.span_s / against.span_s:>10.2f}x" if against else " " * 11
        ratio = self.span_s / self.floor_s
        return (
            f"| {case:<24} | {runner:<9} | {self.images:>3}/{count} | {self.throttled:>5} | "
            f"{self.payment:>4} | {self.duplicates:>4} | {self.requests / count:>7.2f} | "
            f"{self.span_s:>6.1f} | {self.floor_s:>5.1f} | {ratio:>9.2f}x | {versus} |"
        )


HEADER = (
    "| case                     | runner    | images  |   429 |  402 | dups | req/img | span s | floor | "
    "span/floor | engine/loop |\n"
    "|--------------------------|-----------|---------|-------|------|------|---------|--------|-------|"
    "------------|-------------|"
)


def make_jobs(count: int) -> list[Job]:
    jobs = []
    for n in range(count):
        inputs, _ = check_input(
            MODEL, {"prompt": f"a lighthouse at dusk, take {n}", "seed": n, "output_format": "jpg"}
        )
        jobs.append(Job(job_id=f"job-{n}", model=MODEL, inputs=inputs))
    return jobs


Ran = tuple[int, RecordingTransport, str | None]  # images, the requests sent, the cap adopted


async def run_engine(url: str, jobs: list[Job], scale: float, quota_url: str | None = None) -> Ran:
    """The engine as a spec runs it by default: `rate_limit: auto`, 10 in flight; its quota shared through
    the Redis at `quota_url` when given (a fresh namespace per run)."""
    transport = RecordingTransport()
    config = EngineConfig(limits=Limits.auto(max_in_flight=10)).scaled(scale)
    budget: Budget = LocalBudget(config.limits)
    if quota_url is not None:
        budget = RedisBudget(config.limits, quota_url, namespace=f"bench-{time.monotonic_ns()}")
    try:
        async with ApiClient(url, KEY, transport=transport) as client:
            engine = Engine(client, budget, config)
            async for outcome in engine.run(jobs):
                if outcome.status is JobStatus.SUCCESS:
                    transport.stored.append(time.monotonic())
    finally:
        await budget.aclose()
    return len(transport.stored), transport, engine.stats.adopted_limit


async def run_seed_loop(url: str, jobs: list[Job], scale: float) -> Ran:
    """The seed page's loop: create, then poll every (API) second until done; ten at a time, no budget."""
    transport = RecordingTransport()
    tick = 1.0 / scale
    queue = iter(jobs)
    async with ApiClient(url, KEY, transport=transport) as client:

        async def worker() -> None:
            for job in queue:
                if await seed_one(client, job, tick, API_TIMEOUT_S / scale):
                    transport.stored.append(time.monotonic())

        await asyncio.gather(*(worker() for _ in range(10)))
    return len(transport.stored), transport, None


async def seed_one(client: ApiClient, job: Job, tick: float, give_up_s: float) -> int:
    headers = {"X-API-Key": KEY.reveal()}
    body = {"model": job.model, "version": job.version, "input": dict(job.inputs)}
    while True:  # a refused create (429, 402, 5xx) created nothing: wait a second and try again
        try:
            answer = await client._http.post("/v1/prediction/", json=body, headers=headers)
        except httpx.TransportError:
            return 0
        if answer.status_code == 200:
            break
        await asyncio.sleep(tick)
    pid = answer.json()["predictionID"]
    deadline = time.monotonic() + give_up_s
    while time.monotonic() < deadline:
        await asyncio.sleep(tick)
        try:
            answer = await client._http.get(f"/v1/prediction/{pid}", headers=headers)
        except httpx.TransportError:
            continue
        if answer.status_code != 200:
            continue
        status = answer.json()["status"]
        if status == "success":
            output = await client.storage.get(answer.json()["output"])
            return int(output.status_code == 200)
        if status in ("error", "cancelled"):
            return 0
    return 0


Runner = Callable[[str, list[Job], float], Awaitable[Ran]]


def measure(runner: Runner, jobs: list[Job], options: tuple[str, ...], model: str, scale: float) -> Figures:
    with sandbox_process("--time-scale", str(scale), "--seed", "1", *options) as url:
        images, transport, adopted = asyncio.run(runner(url, jobs, scale))
        stats = json.load(urllib.request.urlopen(f"{url}/sandbox/stats"))
    latency = stats["mean_success_latency_s"] or 0.0
    slots_floor = len(jobs) * latency / SLOTS[model]
    floor, creates_floor = slots_floor, None
    if model.startswith("page"):
        per_image = 2 if model == "page-counted" else 1
        floor = max(slots_floor, len(jobs) * per_image / 60 * (60.0 / scale))
        if model == "page-counted":
            creates_floor = max(slots_floor, len(jobs) / 60 * (60.0 / scale))
    cap = (60, 60.0 / scale) if model.startswith("page") else None
    draws = list(zip(stats["latencies_s"], stats["drawn_ends"], strict=True))
    # To as many images as this run got: one it gave up (a prediction that never finished) is not run again.
    ideal = ideal_last_image_s(draws, SLOTS[model], cap, images, stats["cancel_late_s"])
    return Figures(
        images=images,
        throttled=stats["throttled"],
        payment=stats["payment_required"],
        duplicates=stats["duplicate_creates"],
        requests=len(transport.sent),
        span_s=transport.sent[-1] - transport.sent[0],
        floor_s=floor,
        last_image_s=max(transport.stored, default=transport.sent[0]) - transport.sent[0],
        images_at_s=sorted(at - transport.sent[0] for at in transport.stored),
        creates_floor_s=creates_floor,
        adopted=adopted,
        ideal_s=ideal,
    )


def ideal_last_image_s(
    draws: list[tuple[float, str]], slots: int, cap: tuple[int, float] | None, jobs: int, held_s: float
) -> float | None:
    """When a client with no lag has `jobs` images, on the draws a run met in creation order (latency,
    how it ends: the sandbox's `drawn_ends`): it sees each end the instant it comes and sends the next
    create at once (one request per image, under `cap`'s requests per window if any); it sends another at
    once when a draw ends in an error, and knows a draw that never finishes the moment it is drawn (its
    slot is free at once, or after `held_s` when the run's cancel of it was ignored). Without
    faults, the floor of `images x mean latency / slots` plus what the batch's last predictions add, which
    no client that cannot see a prediction's latency before it is drawn can avoid. None when the run drew
    too few for `jobs` images."""
    ahead = iter(draws)
    ends: list[tuple[float, str]] = []  # when each busy slot frees, and how its draw ended
    sent: list[float] = []
    pending, settled, now, last = jobs, 0, 0.0, 0.0  # settled: images in hand
    while settled < jobs:
        if pending and len(ends) < slots:
            draw = next(ahead, None)
            if draw is None:
                return None
            latency, end = draw
            start = now if cap is None or len(sent) < cap[0] else max(now, sent[-cap[0]] + cap[1])
            sent.append(start)
            pending -= 1
            heapq.heappush(ends, (start + {"never": 0.0, "held": held_s}.get(end, latency), end))
            continue
        now, end = heapq.heappop(ends)
        if end == "success":
            settled, last = settled + 1, now
        else:
            pending += 1  # an error or a draw that never finishes: the job runs again (or the next one)
    return last


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
    # Nothing counts toward the lifted cap, and no executions listing is watched (the instant API keeps none):
    # the per-job path alone.
    limits = Limits(requests=10**9, window_s=1.0, max_in_flight=256, polls_count=False)
    config = EngineConfig(limits=limits, watch=WatchPolicy(enabled=False)).scaled(1000.0)
    async with ApiClient("http://127.0.0.1", KEY, transport=instant_api()) as client:
        engine = Engine(client, LocalBudget(limits), config)
        started = time.perf_counter()
        done = sum([o.status is JobStatus.SUCCESS async for o in engine.run(jobs)])
        engine_rate = done / (time.perf_counter() - started)
        started = time.perf_counter()
        for job in jobs[: count // 3]:
            pid = await client.create(job.model, job.version, job.inputs)
            prediction = await client.get(pid)
            assert prediction.output_url is not None
            await client.storage.get(prediction.output_url)
        bare_rate = (count // 3) / (time.perf_counter() - started)
    return engine_rate, bare_rate


def cases(args: argparse.Namespace, jobs: list[Job], run_engine: Runner) -> list[str]:
    """Each case measured, the seed loop then the engine; the cases where the engine was slower."""
    slower = []
    for faults in args.faults.split(","):
        spreads = args.spreads.split(",") if faults == "none" else ["0.25"]
        for spread, model in itertools.product(spreads, args.models.split(",")):
            case = f"{model}, {spread}" + ("" if faults == "none" else ", faults")
            options = (*MODELS[model], *SPREADS[spread], *FAULTS[faults])
            loop = measure(run_seed_loop, jobs, options, model, args.scale)
            engine = measure(run_engine, jobs, options, model, args.scale)
            print(engine.row(case, "engine", args.images, loop), flush=True)
            print(f"|   cap adopted: {engine.adopted or 'none'}", flush=True)
            if engine.creates_floor_s is not None:
                bound = engine.creates_floor_s
                print(
                    f"|   floor with the creates alone (ends seen in the listing): {bound:.1f} s, "
                    f"engine {engine.span_s / bound:.2f}x",
                    flush=True,
                )
            print(loop.row(case, "seed loop", args.images), flush=True)
            if faults == "none" and engine.ideal_s is not None and loop.ideal_s is not None:
                ideal = engine.ideal_s
                print(
                    f"|   a client with no lag on the same latencies: {ideal:.1f} s "
                    f"({ideal / engine.floor_s:.2f}x the floor); engine {engine.span_s / ideal:.2f}x "
                    f"that, seed loop {loop.span_s / loop.ideal_s:.2f}x",
                    flush=True,
                )
            if faults != "none":
                ours, theirs = engine.last_image_s, loop.last_image_s
                print(
                    f"|   to the last image: engine {ours:.1f} s = {ours / engine.floor_s:.2f}x the floor, "
                    f"seed loop {theirs:.1f} s = {theirs / loop.floor_s:.2f}x",
                    flush=True,
                )
                # Both runs met the same draws in creation order (the sandbox's seed): a client with no lag,
                # running retryable errors again, to as many images as each got bounds each.
                if engine.ideal_s is not None and loop.ideal_s is not None:
                    print(
                        f"|   a client with no lag on the same draws, to as many images: "
                        f"{engine.ideal_s:.1f} s ({engine.ideal_s / engine.floor_s:.2f}x the floor), engine "
                        f"{engine.last_image_s / engine.ideal_s:.2f}x that; {loop.ideal_s:.1f} s, seed loop "
                        f"{loop.last_image_s / loop.ideal_s:.2f}x",
                        flush=True,
                    )
                # The engine runs again the predictions that failed retryably, which the loop gives up: its
                # last image is often such a retry. To as many images as the loop got, the two compare.
                both = min(len(engine.images_at_s), len(loop.images_at_s))
                if both:
                    ours, theirs = engine.images_at_s[both - 1], loop.images_at_s[both - 1]
                    print(
                        f"|   to image {both} (as many as both got): engine {ours:.1f} s = "
                        f"{ours / engine.floor_s:.2f}x the floor, seed loop {theirs:.1f} s = "
                        f"{theirs / loop.floor_s:.2f}x",
                        flush=True,
                    )
            if engine.span_s > loop.span_s:
                slower.append(case)
    return slower


@contextlib.contextmanager
def quota(budget: str) -> Iterator[str | None]:
    """Where the engine's quota is kept: None (its own process), or a throwaway redis-server's URL."""
    if budget == "local":
        yield None
        return
    with redis_process() as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--spreads", default=",".join(SPREADS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--overhead-jobs", type=int, default=3000)
    parser.add_argument("--budget", choices=("local", "redis"), default="local", help="the engine's budget")
    args = parser.parse_args()
    jobs = make_jobs(args.images)
    print(f"{args.images} images, sandbox at x{args.scale:g} (median latency {8 / args.scale:g} s); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    print(f"engine budget: {args.budget}")
    print(HEADER)
    with quota(args.budget) as quota_url:
        slower = cases(args, jobs, partial(run_engine, quota_url=quota_url))
    print(f"\nengine slower than the seed loop in: {', '.join(slower) or 'no case'}")
    if args.overhead_jobs:
        engine_rate, bare_rate = asyncio.run(engine_overhead(args.overhead_jobs))
        print(
            f"overhead, limits lifted, zero latency, 8x8 png outputs: engine {engine_rate:,.0f} jobs/s; "
            f"the bare create+get+download calls in sequence {bare_rate:,.0f} jobs/s "
            f"(engine/bare {engine_rate / bare_rate:.2f}x)"
        )


if __name__ == "__main__":
    main()
