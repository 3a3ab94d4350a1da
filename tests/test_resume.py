"""A run killed with SIGKILL mid-way, then started again: nothing bought twice, nothing lost.

The run is the real command in its own process group (with the Prefect server it starts), so the kill takes
everything down at once, as a lost machine would. A create that was on the wire at the kill has an unknown
outcome: the rerun records it as CREATE_OUTCOME_UNKNOWN instead of paying for it blindly again; every other
job must succeed.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from promptgrid.output.manifest.read import read_manifest, read_parts
from promptgrid.output.sinks import open_sink

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a real run killed with SIGKILL, then resumed

JOBS = 60
TIME_SCALE = 20.0
KEY = "pg-resume-key-51d2"


def write_spec(folder: Path) -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([f"prompt number {n}"] for n in range(JOBS // 2))
    spec = folder / "spec.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: prompts.csv\ninputs: {output_format: jpg}\n"
        f"seeds: [1, 2]\noutput: {folder / 'out'}\n",
        encoding="utf-8",
    )
    return spec


def start_run(spec: Path, sandbox_url: str, home: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "EACHLABS_API_KEY": KEY,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    window = 60 / TIME_SCALE
    command = [sys.executable, "-m", "promptgrid.cli", "run", str(spec), "--api-base", sandbox_url]
    command += ["--rate-limit", f"60/{window:g}s"]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_for_creates(sandbox, count: int, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sandbox.stats()["creates"] < count:
        assert process.poll() is None, process.stdout.read().decode(errors="replace")
        assert time.monotonic() < deadline, "the run never created enough predictions"
        time.sleep(0.02)


def test_kill_mid_run_then_resume(tmp_path, sandbox_factory):
    sandbox = sandbox_factory(api_key=KEY, time_scale=TIME_SCALE)
    spec = write_spec(tmp_path)
    first = start_run(spec, sandbox.url, tmp_path / "prefect-1")
    try:
        wait_for_creates(sandbox, JOBS // 3, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        first.stdout.close()
    created_before = sandbox.stats()["creates"]
    assert created_before < JOBS, "the run finished before it could be killed"

    second = start_run(spec, sandbox.url, tmp_path / "prefect-2")
    output, _ = second.communicate(timeout=300)

    stats = sandbox.stats()
    assert stats["duplicate_creates"] == 0
    assert stats["creates"] <= JOBS
    table = read_manifest(open_sink(str(tmp_path / "out")))
    assert table.num_rows == JOBS
    outcomes = Counter(
        zip(table.column("status").to_pylist(), table.column("error_code").to_pylist(), strict=True)
    )
    unknown = outcomes[("failed", "CREATE_OUTCOME_UNKNOWN")]
    assert outcomes[("success", None)] + unknown == JOBS, outcomes
    # Only creates on the wire at the kill can be unknown: at most the in-flight limit, usually none.
    assert unknown <= 10
    assert second.returncode == (1 if unknown else 0), output.decode(errors="replace")
    raw = read_parts(open_sink(str(tmp_path / "out")), columns=["job_id", "status"]).to_pylist()
    successes = Counter(row["job_id"] for row in raw if row["status"] == "success")
    assert set(successes.values()) == {1}
    assert KEY.encode() not in output
