"""How well a shared quota holds and how much of it gets used: N processes on one budget, against one process.

Each worker process runs `--callers` coroutines that take requests as fast as the budget lets them, and
as many that take an in-flight slot, hold it for `--hold` of the window (a prediction being generated) and
give it back. From the admission times and holding intervals it prints, per backend and process count:

- max_window  the most requests admitted in any trailing window (must never exceed the limit);
- rate        requests admitted in whole windows after the first half window, as a fraction of the limit
              (the start is an instant burst for every sliding-log budget, so it is left out);
- max_slots   the most slots held at once (must never exceed max_in_flight);
- slot_use    slot-seconds held / (max_in_flight x duration): how much of the in-flight limit was used.

The baseline is one process with the in-memory LocalBudget at the same quota, measured in the same run.
Prefect's global concurrency limits (a rate limit with slot decay, a slot limit; strict) are measured with
`--prefect` against a real `prefect server start` on loopback (slow to start, so off by default).
Time is scaled: `--window 6` runs the quota (60 per window, 10 in flight) with 6 s windows, same shape;
`--window 60` is the real quota.

    .venv/bin/python benchmarks/quota_bench.py                  # 1x and 10x the quota, 6 s windows
    .venv/bin/python benchmarks/quota_bench.py --window 60 --scales 1 --procs 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from promptgrid.quota.base import Limits  # noqa: E402
from promptgrid.quota.factory import open_budget  # noqa: E402


@dataclass
class Figures:
    backend: str
    procs: int
    limits: Limits
    admitted: int
    max_window: int
    rate_ratio: float
    max_slots: int
    slot_use: float


async def drive(budget, limits: Limits, callers: int, hold_s: float, until: float) -> tuple[list, list]:
    """Take requests and slots as fast as `budget` allows until `until`; return admissions and holds."""
    admitted: list[float] = []
    holds: list[tuple[float, float]] = []

    async def take_requests() -> None:
        while time.monotonic() < until:
            receipt = await budget.take_request("create")
            admitted.append(time.monotonic())
            if receipt is not None:
                receipt.settle()  # an instant answer: the budgets' own pace is what is measured

    async def hold_slots() -> None:
        while time.monotonic() < until:
            token = await budget.take_slot()
            started = time.monotonic()
            await asyncio.sleep(hold_s)
            holds.append((started, time.monotonic()))
            await budget.release_slot(token)

    tasks = [take_requests() for _ in range(callers)] + [hold_slots() for _ in range(callers)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), until - time.monotonic() + limits.window_s)
    return admitted, holds


class PrefectBudget:
    """The Budget protocol over Prefect's global concurrency limits (`prefect gcl`), for comparison only.

    Requests take one slot of a rate limit (a limit with slot decay). Each in-flight slot is held by a
    task of its own inside Prefect's `concurrency` context manager, which must be left by the task that
    entered it; release_slot tells that task to leave.
    """

    def __init__(self, namespace: str):
        self.rate_name, self.slots_name = f"{namespace}-rate", f"{namespace}-slots"
        self._held: dict[str, tuple[asyncio.Event, asyncio.Task]] = {}

    async def take_request(self, kind: str) -> None:
        from prefect.concurrency.asyncio import rate_limit

        await rate_limit(self.rate_name, strict=True)

    async def on_throttled(self, retry_after_s: float | None, kind: str) -> None:
        """Prefect has no shared pause; a 429 could only be waited out by the process that met it."""

    async def take_slot(self) -> str:
        from prefect.concurrency.asyncio import concurrency

        granted, done = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with concurrency(self.slots_name, strict=True):
                granted.set()
                await done.wait()

        holder = asyncio.create_task(hold())
        await asyncio.wait([holder, asyncio.create_task(granted.wait())], return_when=asyncio.FIRST_COMPLETED)
        if holder.done():
            holder.result()  # raises what Prefect raised
        token = uuid.uuid4().hex
        self._held[token] = (done, holder)
        return token

    async def release_slot(self, token: str) -> None:
        done, holder = self._held.pop(token)
        done.set()
        await holder

    async def aclose(self) -> None:
        for token in list(self._held):
            await self.release_slot(token)


def open_bench_budget(limits: Limits, quota_url: str | None, namespace: str):
    if quota_url == "prefect":
        return PrefectBudget(namespace)
    return open_budget(limits, quota_url, namespace)


def worker(limits, quota_url, namespace, callers, hold_s, duration_s, ready, go, results) -> None:
    async def main() -> None:
        budget = open_bench_budget(limits, quota_url, namespace)
        ready.put(os.getpid())
        while not go.is_set():
            await asyncio.sleep(0.005)
        start = go.start_time.value
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        admitted, holds = await drive(budget, limits, callers, hold_s, start + duration_s)
        await budget.aclose()
        results.put((admitted, holds))

    asyncio.run(main())


class StartSignal:
    """A start flag and the shared monotonic start time (CLOCK_MONOTONIC is one clock for all processes)."""

    def __init__(self, ctx):
        self._event = ctx.Event()
        self.start_time = ctx.Value("d", 0.0)

    def is_set(self) -> bool:
        return self._event.is_set()

    def fire(self) -> float:
        self.start_time.value = time.monotonic() + 0.05
        self._event.set()
        return self.start_time.value


def run_processes(limits, quota_url, procs, callers, hold_s, duration_s) -> tuple[float, list, list]:
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), StartSignal(ctx)
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    if quota_url == "prefect":
        create_prefect_limits(limits, namespace)
    args = (limits, quota_url, namespace, callers, hold_s, duration_s, ready, go, results)
    workers = [ctx.Process(target=worker, args=args) for _ in range(procs)]
    for process in workers:
        process.start()
    for _ in workers:
        ready.get(timeout=60)
    start = go.fire()
    admitted, holds = [], []
    for _ in workers:
        got_admitted, got_holds = results.get(timeout=duration_s + 3 * limits.window_s + 30)
        admitted += got_admitted
        holds += got_holds
    for process in workers:
        process.join(timeout=10)
    return start, admitted, holds


def create_prefect_limits(limits: Limits, namespace: str) -> None:
    """A rate limit refilling `requests` per window and a slot limit of `max_in_flight`, as ops would."""
    prefect = [str(Path(sys.executable).parent / "prefect"), "gcl", "create"]
    decay = limits.requests / limits.window_s
    rate = [f"{namespace}-rate", "--limit", str(limits.requests), "--slot-decay-per-second", f"{decay:g}"]
    for args in (rate, [f"{namespace}-slots", "--limit", str(limits.max_in_flight)]):
        subprocess.run(prefect + args, check=True, capture_output=True, timeout=60)


@contextlib.contextmanager
def running_prefect_server() -> str:
    """`prefect server start` on a free loopback port with a throwaway home; sets PREFECT_API_URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tempfile.mkdtemp(prefix="promptgrid-bench-prefect-")
    os.environ.update(
        PREFECT_HOME=home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
    )
    prefect = str(Path(sys.executable).parent / "prefect")
    command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        import httpx

        for _ in range(240):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)  # bounded wait for the server to come up
        yield os.environ["PREFECT_API_URL"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def measure(backend, limits, quota_url, procs, callers, hold_s, duration_s) -> Figures:
    if backend == "local":
        start = time.monotonic()
        budget = open_budget(limits)
        admitted, holds = asyncio.run(drive(budget, limits, callers, hold_s, start + duration_s))
    else:
        start, admitted, holds = run_processes(limits, quota_url, procs, callers, hold_s, duration_s)
    end = start + duration_s
    # Whole windows starting mid-window: each holds exactly one refill burst of a saturated sliding log.
    whole = int((duration_s - limits.window_s / 2) // limits.window_s)
    first = start + limits.window_s / 2
    steady = [t for t in admitted if first < t <= first + whole * limits.window_s]
    held = sum(min(b, end) - max(a, start) for a, b in holds if a < end)
    return Figures(
        backend=backend,
        procs=procs,
        limits=limits,
        admitted=len(admitted),
        max_window=most_in_any_window(admitted, limits.window_s),
        rate_ratio=len(steady) / (whole * limits.requests),
        max_slots=most_at_once(holds),
        slot_use=held / (limits.max_in_flight * duration_s),
    )


def most_in_any_window(times: list[float], window_s: float) -> int:
    times, best, first = sorted(times), 0, 0
    for last, t in enumerate(times):
        while t - times[first] > window_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def most_at_once(holds: list[tuple[float, float]]) -> int:
    events = sorted([(a, 1) for a, _ in holds] + [(b, -1) for _, b in holds])
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def die_with_parent() -> None:
    """Runs in a child before exec: the kernel kills it if the benchmark dies without cleaning up."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


@contextlib.contextmanager
def running_redis() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="promptgrid-bench-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
    process = subprocess.Popen(
        command + ["--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL, preexec_fn=die_with_parent
    )
    try:
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)  # bounded wait for the server to listen
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def print_table(rows: list[Figures], baseline: dict[int, Figures]) -> None:
    header = f"{'backend':<8}{'procs':>6}{'quota':>16}{'admitted':>10}{'max_window':>12}{'rate':>7}"
    print(header + f"{'vs_local':>9}{'max_slots':>11}{'slot_use':>10}{'vs_local':>9}")
    for row in rows:
        base = baseline[row.limits.requests]
        quota = f"{row.limits.requests}/{row.limits.window_s:g}s,{row.limits.max_in_flight}"
        print(
            f"{row.backend:<8}{row.procs:>6}{quota:>16}{row.admitted:>10}"
            f"{row.max_window:>8}/{row.limits.requests:<3}{row.rate_ratio:>7.2f}"
            f"{row.rate_ratio / base.rate_ratio:>9.2f}{row.max_slots:>7}/{row.limits.max_in_flight:<3}"
            f"{row.slot_use:>10.2f}{row.slot_use / base.slot_use:>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=6.0, help="window seconds (60 = the real quota)")
    parser.add_argument("--scales", default="1,10", help="multiples of the quota (60 a window, 10 in flight)")
    parser.add_argument("--procs", default="1,4,16", help="worker process counts to measure")
    parser.add_argument("--callers", type=int, default=8, help="coroutines per process per kind")
    parser.add_argument("--hold", type=float, default=0.13, help="slot hold time as a fraction of the window")
    parser.add_argument("--windows", type=float, default=3.0, help="run length in windows")
    parser.add_argument("--prefect", action="store_true", help="also measure Prefect's global limits")
    args = parser.parse_args()
    duration_s, hold_s = args.window * args.windows, args.window * args.hold
    rows, baseline = [], {}
    with running_redis() as url, running_prefect_server() if args.prefect else contextlib.nullcontext():
        for scale in (int(s) for s in args.scales.split(",")):
            limits = Limits(requests=60 * scale, window_s=args.window, max_in_flight=10 * scale)
            callers = max(args.callers, 2 * limits.max_in_flight)
            baseline[limits.requests] = measure("local", limits, None, 1, callers, hold_s, duration_s)
            rows.append(baseline[limits.requests])
            for procs in (int(p) for p in args.procs.split(",")):
                per_proc = max(2, -(-callers // procs))
                rows.append(measure("redis", limits, url, procs, per_proc, hold_s, duration_s))
                print(f"measured redis x{procs} at {scale}x", file=sys.stderr, flush=True)
                if args.prefect:
                    rows.append(measure("prefect", limits, "prefect", procs, per_proc, hold_s, duration_s))
                    print(f"measured prefect x{procs} at {scale}x", file=sys.stderr, flush=True)
    print_table(rows, baseline)


if __name__ == "__main__":
    main()
