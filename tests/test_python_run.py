"""`promptgrid.run` end to end against the sandbox: from a running event loop (as in Jupyter) and from plain
code, with a spec file or a dict, and the example script a user would start from, in a process of its own."""

from __future__ import annotations

import asyncio
import csv
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import promptgrid
from promptgrid.output.manifest.read import status_counts
from promptgrid.output.sinks import open_sink

pytestmark = [
    pytest.mark.integration,  # the Prefect test server, and a Prefect server in the example's process
    pytest.mark.usefixtures("prefect_harness"),
]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "sweep_analysis.py"
KEY = "pg-python-api-key-51d2"
TIME_SCALE = 100.0  # the sandbox fixtures' clock


def spec_document(folder: Path) -> dict:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "item"])
        writer.writerows([["a red fox", 1], ["a lighthouse at dusk", 2]])
    return {
        "name": "python-api",
        "model": "stable-diffusion-3-5-large",
        "prompts": "prompts.csv",
        "inputs": {"output_format": "png", "aspect_ratio": "1:1"},
        "sweep": {"cfg": [2.5, 4.0, 5.5], "steps": [20, 30]},
        "seeds": [1, 2],
        "output": str(folder / "out"),
    }


def write_spec(folder: Path) -> Path:
    import yaml

    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec_document(folder), sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    return KEY


async def test_run_inside_a_running_event_loop_as_a_notebook_cell_does(
    tmp_path, sandbox_factory, api_key, capsys
):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path)
    asyncio.get_running_loop()  # this test body is a coroutine on a running loop, as a Jupyter cell is

    summary = promptgrid.run(spec, api_base=sandbox.url, time_scale=TIME_SCALE)

    assert (summary.planned, summary.succeeded, summary.failed, summary.skipped) == (24, 24, 0, 0)
    assert summary.ok and summary.output == str((tmp_path / "out").resolve())
    assert "progress: " in capsys.readouterr().out  # the notebook's output, not only stderr
    df = promptgrid.read_manifest(summary)
    assert len(df) == 24 and df["status"].value_counts().to_dict() == status_counts(open_sink(summary.output))
    assert df["item"].dtype.name == "Int64"

    again = promptgrid.run(spec, api_base=sandbox.url, time_scale=TIME_SCALE)

    assert (again.planned, again.skipped, again.api_requests) == (0, 24, 0)
    assert sandbox.stats()["creates"] == 24 and sandbox.stats()["duplicate_creates"] == 0


def test_a_dict_spec_runs_on_a_sandbox_started_for_it(tmp_path, monkeypatch):
    monkeypatch.delenv("EACHLABS_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # relative paths in a dict start from here
    spec = promptgrid.load_spec(spec_document(tmp_path))

    summary = promptgrid.run(spec, sandbox=True, time_scale=TIME_SCALE, output=str(tmp_path / "moved-here"))

    assert summary.succeeded == 24 and summary.output == str(tmp_path / "moved-here")
    assert "EACHLABS_API_KEY" not in os.environ  # the made-up sandbox key was put back
    df = promptgrid.read_manifest(summary)
    sheet = promptgrid.contact_sheet(df[df["prompt"] == "a red fox"], rows="steps", cols="cfg")
    assert sheet.width > sheet.height  # three cfg values across, two steps down


def test_failed_jobs_are_counted_and_the_summary_is_not_ok(tmp_path, sandbox_factory, api_key):
    failing = sandbox_factory(api_key=api_key, error_rate=0.5, error_codes=(("PROVIDER_REJECTED", False),))

    summary = promptgrid.run(write_spec(tmp_path), api_base=failing.url, time_scale=TIME_SCALE)

    assert summary.failed > 0 and not summary.ok
    assert f"promptgrid backfill {summary.output}" in str(summary)
    failed = promptgrid.read_manifest(summary, status="failed")
    assert len(failed) == summary.failed and set(failed["error_code"]) == {"PROVIDER_REJECTED"}


@pytest.mark.slow
def test_the_example_script_runs_twice_and_analyses_the_sweep(tmp_path, sandbox_factory):
    sandbox = sandbox_factory(api_key=KEY, error_rate=0.25, error_codes=(("PROVIDER_REJECTED", False),))
    spec, output, sheet = write_spec(tmp_path), tmp_path / "out", tmp_path / "sheet.png"
    env = {
        **os.environ,
        "EACHLABS_API_KEY": KEY,
        "PREFECT_HOME": tempfile.mkdtemp(prefix="promptgrid-test-prefect-"),
    }
    env.pop("PREFECT_API_URL", None)  # its own embedded server, as a user's script gets
    args = [str(spec), "--api-base", sandbox.url, "--time-scale", str(TIME_SCALE)]
    args += ["--output", str(output), "--sheet", str(sheet), "--rows", "steps", "--cols", "cfg"]

    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, env=env, timeout=400
    )

    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "jobs: 24 (12 per row" in out  # the plan
    assert "second run: 0 jobs to do, 0 API requests, 24 done" in out
    assert sandbox.stats()["creates"] == 24  # the second run created nothing
    df = promptgrid.read_manifest(output)
    for status, count in status_counts(open_sink(str(output))).items():
        assert re.search(rf"^{status}\s+{count}$", out, re.MULTILINE), status
    failures = df[df["status"] == "failed"].groupby("error_code").size()
    for code, count in failures.items():
        assert re.search(rf"^failed\s+{code}\s+{count}$", out, re.MULTILINE), code
    means = df[df["status"] == "success"].groupby("cfg")["predict_time_s"].mean()
    assert all(f"{cfg:g}" in out for cfg in means.index)
    expected = promptgrid.contact_sheet(df[df["prompt"] == df["prompt"].iloc[0]], rows="steps", cols="cfg")
    assert f"({expected.width}x{expected.height})" in out
    from PIL import Image

    with Image.open(sheet) as saved:
        assert saved.size == expected.size
