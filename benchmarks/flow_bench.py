"""What the Prefect flow costs over a bare asyncio loop, and how its memory grows with the run.

Both sides drive the same engine and store stage against one sandbox (its own process) with the limits
lifted and zero latency, so the figures are the pipeline's own overhead, not the API's pacing:

    python benchmarks/flow_bench.py                 # 2,000 jobs: flow vs bare loop, then peak memory
    python benchmarks/flow_bench.py --jobs 500      # a quicker look

Peak memory is measured in a fresh process per size (peak RSS only grows), for 2,000 and 20,000 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from support import sandbox_process

LIFTED = {"rate_limit": "1000000/1s", "max_concurrent": 100}
KEY = "flow-bench-key"


def lifted_sandbox():
    """A sandbox with no latency and no limits: what is left to measure is the pipeline itself."""
    options = ("--api-key", KEY, "--latency-median-s", "0", "--latency-sigma", "0", "--rate-limit", "1000000")
    return sandbox_process(*options, "--max-in-flight", "100000")


def write_spec(folder: Path, jobs: int, output: Path, api_base: str) -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "row"])
        writer.writerows([f"benchmark prompt {n}", n] for n in range(jobs))
    spec = folder / f"spec-{output.name}.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: prompts.csv\n"
        "inputs: {output_format: jpg, output_quality: 50, steps: 4}\nseeds: [1]\n"
        f"output: {output}\napi: {{base_url: '{api_base}', rate_limit: '{LIFTED['rate_limit']}', "
        f"max_concurrent: {LIFTED['max_concurrent']}}}\n",
        encoding="utf-8",
    )
    return spec


async def bare_loop(spec_path: Path) -> int:
    """The same stages with no Prefect: engine.run over every job, each outcome stored as it comes."""
    from promptgrid.api.client import ApiClient
    from promptgrid.engine.engine import Engine
    from promptgrid.engine.planning import RunPlan
    from promptgrid.engine.progress import RunProgress
    from promptgrid.output.journal import Journal
    from promptgrid.output.manifest.writer import ManifestWriter
    from promptgrid.output.recorder import OutcomeStore
    from promptgrid.output.sinks import open_sink
    from promptgrid.quota.local import LocalBudget
    from promptgrid.settings import read_api_settings
    from promptgrid.spec.load import load_spec
    from promptgrid.tasks.pipeline import engine_config

    spec = load_spec(spec_path)
    plan = RunPlan.from_spec(spec)
    settings = read_api_settings(spec.api.base_url)
    sink = open_sink(spec.output)
    config = engine_config(plan.api, 1.0)
    writer = ManifestWriter(sink, run_id="bare", spec_hash=spec.spec_hash)
    store = OutcomeStore(sink, Journal(sink, "bare"), writer, RunProgress())
    jobs = {job.job_id: job for batch in plan.batches() for job in batch}
    async with ApiClient(settings.base_url, settings.api_key) as client:
        engine = Engine(client, LocalBudget(config.limits), config, events=store)
        async for outcome in engine.run(list(jobs.values())):
            await store.save(jobs[outcome.job_id], outcome)
    writer.close()
    store.journal.close()
    return store.progress.succeeded


def through_flow(spec_path: Path) -> int:
    from promptgrid.flows.generate import generate

    # The bare loop writes no HTML report, so neither does the flow here: same stages on both sides.
    return asyncio.run(generate(spec_path=str(spec_path), report=False)).succeeded


def warm_up_prefect() -> None:
    """Start Prefect's embedded server before timing: its start-up is a fixed cost, not per job."""
    from prefect import flow

    @flow
    def warm_up() -> None:
        return None

    warm_up()


def compare(jobs: int) -> None:
    """Bare loop, flow, bare loop again: the flow is set against the mean of the two bare runs, so a
    sandbox warming up (or slowing down) over the benchmark favours neither side."""
    sides = {"bare asyncio loop": lambda p: asyncio.run(bare_loop(p)), "Prefect flow": through_flow}
    rates: dict[str, list[float]] = {name: [] for name in sides}
    with tempfile.TemporaryDirectory() as folder, lifted_sandbox() as api_base:
        root = Path(folder)
        warm_up_prefect()
        for turn, name in enumerate(("bare asyncio loop", "Prefect flow", "bare asyncio loop")):
            spec = write_spec(root, jobs, root / f"out-{turn}", api_base)
            start = time.perf_counter()
            done = sides[name](spec)
            seconds = time.perf_counter() - start
            rates[name].append(done / seconds)
            print(f"{name:<18} {done:>6} images in {seconds:7.2f} s  = {done / seconds:8.1f} images/s")
    bare = sum(rates["bare asyncio loop"]) / 2
    ratio = rates["Prefect flow"][0] / bare
    print(f"flow throughput / mean bare loop throughput: {ratio:.2f}x (target >= 0.5x)")


def peak_memory(jobs: int) -> None:
    """In this fresh process: run `jobs` through the flow and print peak RSS."""
    with tempfile.TemporaryDirectory() as folder, lifted_sandbox() as api_base:
        spec = write_spec(Path(folder), jobs, Path(folder) / "out", api_base)
        done = through_flow(spec)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"MEMORY {jobs} {done} {peak_mib:.1f}")


def measure_memory(sizes: list[int]) -> None:
    peaks = {}
    for jobs in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--peak-memory", str(jobs)], capture_output=True, text=True, check=True
        ).stdout
        line = next(line for line in out.splitlines() if line.startswith("MEMORY "))
        _, _, done, mib = line.split()
        peaks[jobs] = float(mib)
        print(f"peak RSS, {jobs:>6} jobs through the flow ({done} images): {peaks[jobs]:8.1f} MiB")
    small, large = sizes
    print(f"peak memory {large} / {small} jobs: {peaks[large] / peaks[small]:.2f}x (target <= 1.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[2000, 20000])
    parser.add_argument("--peak-memory", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["EACHLABS_API_KEY"] = KEY
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="promptgrid-bench-prefect-"))
    if args.peak_memory:
        peak_memory(args.peak_memory)
        return
    compare(args.jobs)
    measure_memory(args.memory_sizes)


if __name__ == "__main__":
    main()
