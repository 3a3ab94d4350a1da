"""120 images through `promptgrid run SPEC --api-base URL` against a x10 API, as a user would run it.

The run is told nothing of the time scale, nor of the API's limit model: the engine learns the latency
(median 0.8 s) and, under the spec's default `rate_limit: auto`, the limits. The sandbox runs in its own
process at x10. Each case runs the pipeline against a fresh sandbox, then the seed page's loop (create, poll
every second, ten at a time; `engine_bench.run_seed_loop`) in this process against another fresh sandbox with
the same settings, for the same 120 images.

For each it prints images, 429s, 402s, duplicate creates, API requests per image and the span (pipeline:
first create to last answer, output fetch included; loop: first to last API request), against the floor:
the larger of images x mean latency / slots available and, when requests are limited, the requests needed
at the allowed rate (2 per image when polls count, 1 when not); where polls count, the floor with the
creates alone too, since the engine sees most ends in the executions listing (counted among the requests).
Without faults, each also gives its span against a client with no lag on the latencies that run drew
(`engine_bench.ideal_last_image_s`): the floor plus what the batch's last predictions add, which no client
can avoid. (Under faults the span waits out the predictions that never finish: engine_bench judges the
fault cases to the last image.) The pipeline's exit code and the waits its summary counted are printed too.

    python benchmarks/pipeline_bench.py                  # every case (~10 min)
    python benchmarks/pipeline_bench.py docs docs-held   # some of them
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from engine_bench import MODEL, ideal_last_image_s, run_seed_loop
from support import sandbox_process

from promptgrid.models.check import check_input
from promptgrid.types import Job

KEY = "pipeline-bench-key"
JOBS = 120
SCALE = 10.0
DOCS = ("--limit-model", "docs", "--no-retry-after")
FAULTS = (
    *("--get-5xx-rate", "0.05", "--create-5xx-rate", "0.02", "--error-rate", "0.05"),
    *("--never-finish-rate", "0.02", "--url-lifetime-s", "20"),
)


@dataclass(frozen=True)
class Case:
    """A sandbox setting and the spec's `api` block; `slots` the API lets us fill, `rate` its request cap."""

    sandbox: tuple[str, ...]
    api: str
    slots: int = 10
    rate_per_image: int = 0  # requests per image the rate limit counts (0: no rate limit)


CASES = {
    "docs": Case(DOCS, "{max_concurrent: 10}"),
    "docs-held": Case((*DOCS, "--held-by-others", "3"), "{max_concurrent: 10}", slots=7),
    "402": Case((*DOCS, "--payment-limit", "5"), "{max_concurrent: 10}", slots=5),
    "page-auto": Case((), "{max_concurrent: 10}", rate_per_image=2),
    "page-counted": Case((), "{rate_limit: 60/6s, max_concurrent: 10, polls_count: true}", rate_per_image=2),
    "page-free": Case(
        ("--no-polls-count",), "{rate_limit: 60/6s, max_concurrent: 10, polls_count: false}", rate_per_image=1
    ),
    "faults": Case(FAULTS, "{rate_limit: 60/6s, max_concurrent: 10, polls_count: true}", rate_per_image=2),
}


def prompts() -> list[tuple[str, int]]:
    return [(f"benchmark prompt {n}", seed) for n in range(JOBS // 2) for seed in (1, 2)]


def write_spec(folder: Path, api: str) -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([f"benchmark prompt {n}"] for n in range(JOBS // 2))
    spec = folder / "spec.yaml"
    # JPEG outputs: rendering WebP would load the sandbox's core more than the scheduling being measured.
    spec.write_text(
        f"model: {MODEL}\nprompts: prompts.csv\nseeds: [1, 2]\ninputs: {{output_format: jpg}}\n"
        f"output: {folder / 'out'}\napi: {api}\n",
        encoding="utf-8",
    )
    return spec


def floor_s(case: Case, stats: dict) -> float:
    floor = JOBS * (stats["mean_success_latency_s"] or 0.0) / case.slots
    if case.rate_per_image:
        floor = max(floor, JOBS * case.rate_per_image * 6.0 / 60)
    return floor


def ideal_s(case: Case, stats: dict) -> float | None:
    """A client with no lag on the latencies drawn (engine_bench.ideal_last_image_s); None with faults."""
    if stats["creates"] != JOBS or set(stats["drawn_ends"]) != {"success"}:
        return None
    cap = (60, 6.0) if case.rate_per_image else None
    draws = [(latency, "success") for latency in stats["latencies_s"]]
    return ideal_last_image_s(draws, case.slots, cap, JOBS, stats["cancel_late_s"])


def run_pipeline(name: str, case: Case) -> None:
    options = ("--time-scale", str(SCALE), "--api-key", KEY, "--seed", "1", *case.sandbox)
    with tempfile.TemporaryDirectory() as folder, sandbox_process(*options) as api_base:
        spec = write_spec(Path(folder), case.api)
        env = {**os.environ, "EACHLABS_API_KEY": KEY, "PREFECT_HOME": str(Path(folder) / "prefect")}
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # a loaded machine starts it slowly
        command = [
            sys.executable,
            "-m",
            "promptgrid.cli",
            "run",
            str(spec),
            "--api-base",
            api_base,
            "--no-report",
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=900)
        stats = json.load(urllib.request.urlopen(f"{api_base}/sandbox/stats"))
        report(name, case, done, stats, Path(folder) / "out")


def report(name: str, case: Case, done: subprocess.CompletedProcess[str], stats: dict, output: Path) -> None:
    from promptgrid.output.manifest.read import read_manifest
    from promptgrid.output.sinks import open_sink

    rows = read_manifest(open_sink(str(output))).to_pylist()
    if not rows:
        print(f"{name:<13} pipeline  wrote no manifest rows; exit {done.returncode}\n{done.stderr[-2000:]}")
        return
    requests = sum(stats["requests"][kind] for kind in ("create", "get", "cancel", "executions"))
    first = min(row["submitted_at"] for row in rows if row["submitted_at"])
    last = max(row["completed_at"] for row in rows if row["completed_at"])
    span = (last - first).total_seconds()
    floor = floor_s(case, stats)
    outcomes = Counter(row["error_code"] or row["status"] for row in rows)
    attempts = sum(row["attempts"] for row in rows)
    print(
        f"{name:<13} pipeline  images {outcomes['success']:>3}/{JOBS}  429s {stats['throttled']:>4} "
        f"({stats['throttled'] / requests:.1%})  402s {stats['payment_required']:>3}  "
        f"dups {stats['duplicate_creates']} (retry attempts {attempts - len(rows)})  "
        f"req/img {requests / JOBS:5.2f}  span {span:5.1f} s / floor {floor:4.1f} s = {span / floor:.2f}x  "
        f"exit {done.returncode}",
        flush=True,
    )
    for line in (done.stdout + done.stderr).splitlines():
        said = re.search(
            r"(request cap adopted|429s about|creates that waited|room probes|seen in the executions).*", line
        )
        if said:
            print(f"{'':<13}   summary: {said.group(0)}")
    if done.returncode != 0 and not rows:
        print(done.stderr[-2000:])
    if len(outcomes) > 1:
        print(f"{'':<13}   outcomes: {dict(outcomes)}")
    if case.rate_per_image == 2:  # polls count: ends seen in the listing need only the creates
        alone = floor_s(replace(case, rate_per_image=1), stats)
        print(f"{'':<13}   floor with the creates alone: {alone:.1f} s, {span / alone:.2f}x")
    if (ideal := ideal_s(case, stats)) is not None:
        print(f"{'':<13}   a client with no lag on the same latencies: {ideal:.1f} s, {span / ideal:.2f}x")


def run_loop(name: str, case: Case) -> None:
    jobs = []
    for n, (prompt, seed) in enumerate(prompts()):
        inputs, _ = check_input(MODEL, {"prompt": prompt, "seed": seed, "output_format": "jpg"})
        jobs.append(Job(job_id=f"job-{n}", model=MODEL, inputs=inputs))
    with sandbox_process("--time-scale", str(SCALE), "--seed", "1", *case.sandbox) as url:
        images, transport, _ = asyncio.run(run_seed_loop(url, jobs, SCALE))
        stats = json.load(urllib.request.urlopen(f"{url}/sandbox/stats"))
    span = transport.sent[-1] - transport.sent[0]
    floor = floor_s(case, stats)
    print(
        f"{'':<13} seed loop images {images:>3}/{JOBS}  429s {stats['throttled']:>4} "
        f"({stats['throttled'] / len(transport.sent):.1%})  402s {stats['payment_required']:>3}  "
        f"dups {stats['duplicate_creates']}  req/img {len(transport.sent) / JOBS:5.2f}  "
        f"span {span:5.1f} s / floor {floor:4.1f} s = {span / floor:.2f}x"
        + ("" if (ideal := ideal_s(case, stats)) is None else f", {span / ideal:.2f}x the no-lag client's"),
        flush=True,
    )


def main() -> None:
    names = sys.argv[1:] or list(CASES)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name in names:
        run_pipeline(name, CASES[name])
        run_loop(name, CASES[name])


if __name__ == "__main__":
    main()
