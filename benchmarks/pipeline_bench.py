"""120 images through `promptgrid run SPEC --api-base URL` against a x10 API, as a user would run it.

The run is told nothing of the time scale: the engine learns the API's latency (median 0.8 s) on its own.
The sandbox runs in its own process at x10 (60 requests per 6 s window, 10 in flight). For each case it
prints images, 429s, duplicate creates, API requests per image and the span from the first create to the
last answer, against the floor the quota allows (2 requests per image at the allowed rate when polls
count, 1 when they do not):

    python benchmarks/pipeline_bench.py            # polls counted, polls free, and the fault mix
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
from collections import Counter
from pathlib import Path

from support import sandbox_process

KEY = "pipeline-bench-key"
JOBS = 120
SCALE = 10.0
FAULTS = (
    *("--get-5xx-rate", "0.05", "--create-5xx-rate", "0.02", "--error-rate", "0.05"),
    *("--never-finish-rate", "0.02", "--url-lifetime-s", "20"),
)


def write_spec(folder: Path, polls_count: bool) -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([f"benchmark prompt {n}"] for n in range(JOBS // 2))
    spec = folder / "spec.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: prompts.csv\nseeds: [1, 2]\n"
        f"output: {folder / 'out'}\n"
        f"api: {{rate_limit: 60/6s, max_concurrent: 10, polls_count: {str(polls_count).lower()}}}\n",
        encoding="utf-8",
    )
    return spec


def run_case(name: str, polls_count: bool, faults: tuple[str, ...] = ()) -> None:
    options = ("--time-scale", str(SCALE), "--api-key", KEY, *faults)
    if not polls_count:
        options += ("--no-polls-count",)
    with tempfile.TemporaryDirectory() as folder, sandbox_process(*options) as api_base:
        spec = write_spec(Path(folder), polls_count)
        env = {**os.environ, "EACHLABS_API_KEY": KEY, "PREFECT_HOME": str(Path(folder) / "prefect")}
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
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
        subprocess.run(command, env=env, capture_output=True, check=False, timeout=900)
        stats = json.load(urllib.request.urlopen(f"{api_base}/sandbox/stats"))
        report(name, polls_count, stats, Path(folder) / "out")


def report(name: str, polls_count: bool, stats: dict, output: Path) -> None:
    from promptgrid.tasks.output.manifest.read import read_manifest
    from promptgrid.tasks.output.sinks import open_sink

    rows = read_manifest(open_sink(str(output))).to_pylist()
    requests = sum(stats["requests"][kind] for kind in ("create", "get", "cancel"))
    first = min(row["submitted_at"] for row in rows if row["submitted_at"])
    last = max(row["completed_at"] for row in rows if row["completed_at"])
    span = (last - first).total_seconds()
    floor = JOBS * (2 if polls_count else 1) * 6.0 / 60
    outcomes = Counter(row["error_code"] or row["status"] for row in rows)
    attempts = sum(row["attempts"] for row in rows)
    print(
        f"{name:<22} images {outcomes['success']:>3}/{JOBS}  rows {len(rows)}  429s {stats['throttled']}  "
        f"duplicate creates {stats['duplicate_creates']} (retry attempts {attempts - len(rows)})  "
        f"req/img {requests / JOBS:.2f}  span {span:.1f} s / floor {floor:.0f} s = {span / floor:.2f}x"
    )
    if len(outcomes) > 1:
        print(f"{'':<22} outcomes: {dict(outcomes)}")


def main() -> None:
    run_case("polls counted", polls_count=True)
    run_case("polls free", polls_count=False)
    run_case("faults, polls counted", polls_count=True, faults=FAULTS)


if __name__ == "__main__":
    main()
