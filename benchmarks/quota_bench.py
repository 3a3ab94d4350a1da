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
Prefect's global concurrency limits are measured with `--prefect` against a real `prefect server start` on
loopback (slow to start, so off by default). Time is scaled: `--window 6` runs "60 a minute" as 6 a 6 s
window at the same shape; `--window 60` is the real quota.

    .venv/bin/python benchmarks/quota_bench.py                  # 1x and 10x the quota, 6 s windows
    .venv/bin/python benchmarks/quota_bench.py --window 60 --scales 1 --procs 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.budget import Limits  # noqa: E402
from tasks.quota import open_budget  # noqa: E402


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
            await budget.take_request("create")
            admitted.append(time.monotonic())

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


def worker(limits, quota_url, namespace, callers, hold_s, duration_s, ready, go, results) -> None:
    async def main() -> None:
        budget = open_budget(limits, quota_url, namespace)
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


@contextlib.contextmanager
def running_redis() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="promptgrid-bench-redis-")
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir]
    process = subprocess.Popen(command + ["--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
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
    args = parser.parse_args()
    duration_s, hold_s = args.window * args.windows, args.window * args.hold
    rows, baseline = [], {}
    with running_redis() as url:
        for scale in (int(s) for s in args.scales.split(",")):
            limits = Limits(requests=60 * scale, window_s=args.window, max_in_flight=10 * scale)
            callers = max(args.callers, 2 * limits.max_in_flight)
            baseline[limits.requests] = measure("local", limits, None, 1, callers, hold_s, duration_s)
            rows.append(baseline[limits.requests])
            for procs in (int(p) for p in args.procs.split(",")):
                per_proc = max(2, -(-callers // procs))
                rows.append(measure("redis", limits, url, procs, per_proc, hold_s, duration_s))
                print(f"measured redis x{procs} at {scale}x", file=sys.stderr, flush=True)
    print_table(rows, baseline)


if __name__ == "__main__":
    main()
