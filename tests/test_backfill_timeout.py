"""A job that timed out gets a new prediction from the next backfill, not the one its first run cancelled;
end to end against the sandbox (slow predictions, a short deadline), with Prefect's test server."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from promptgrid.flows.backfill import backfill
from promptgrid.flows.generate import generate
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.sinks import open_sink
from promptgrid.run_summary import RunSummary

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
    pytest.mark.usefixtures("prefect_harness"),
]

KEY = "pg-backfill-timeout-key-3d1a"
SANDBOX_SCALE = 100.0  # the sandbox's clock: 100x the API's
# Predictions take about a minute of API time; the first run's deadlines are 50x shorter than the API's
# clock allows, so each one is cancelled at its deadline and the job ends timed out.
SLOW_S = 60.0
SHORT_DEADLINES_SCALE = 5000.0


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    return KEY


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def write_spec(folder: Path) -> Path:
    (folder / "prompts.csv").write_text("prompt\na paper boat on a pond\n", encoding="utf-8")
    spec = folder / "spec.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: prompts.csv\n"
        f"inputs: {{output_format: png, steps: 20}}\nseeds: [1, 2]\noutput: {folder / 'out'}\n",
        encoding="utf-8",
    )
    return spec


def test_backfill_of_a_timed_out_job_creates_a_new_prediction_and_stores_its_image(
    tmp_path, sandbox_factory, api_key, umask_022
):
    sandbox = sandbox_factory(api_key=api_key, latency_median_s=SLOW_S, latency_sigma=0.05)
    params = {"api_base": sandbox.url, "rate_limit": "60/0.6s"}
    first = asyncio.run(
        generate(
            spec_path=str(write_spec(tmp_path)), time_scale=SHORT_DEADLINES_SCALE, return_state=True, **params
        )
    ).result(raise_on_failure=False)
    sink = open_sink(str(tmp_path / "out"))
    assert isinstance(first, RunSummary), first
    assert first.succeeded == 0 and sandbox.stats()["creates"] == 2
    timed_out = {row["job_id"]: row for row in read_manifest(sink).to_pylist()}
    assert {row["status"] for row in timed_out.values()} == {"timed_out"}

    summary = asyncio.run(backfill(output=str(tmp_path / "out"), time_scale=SANDBOX_SCALE, **params))

    assert summary.succeeded == 2
    assert sandbox.stats()["creates"] == 4  # a new prediction each, not a poll of the cancelled ones
    rows = read_manifest(sink).to_pylist()
    assert {row["status"] for row in rows} == {"success"}
    for row in rows:
        assert row["prediction_id"] != timed_out[row["job_id"]]["prediction_id"]
        assert sink.size(row["image_key"]) == row["bytes"]
    # Every file the runs wrote is readable by others, as the umask says (images, manifest, journal, report).
    modes = {
        str(path.relative_to(sink.folder)): path.stat().st_mode & 0o777 for path in sink.folder.rglob("*")
    }
    assert {name: mode for name, mode in modes.items() if Path(name).suffix and mode != 0o644} == {}
    assert any(name.startswith("report/") for name in modes) and any(
        name.startswith("journal/") for name in modes
    )
