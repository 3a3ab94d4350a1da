"""The generate flow after a crash left its output in a bad state: local folder and loopback S3 (moto).

The crash is replayed with the real writers (journal, sink, manifest), left where a `kill -9` leaves them;
then the flow runs against the sandbox, under Prefect's test server.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import logging
import urllib.parse
from pathlib import Path

import pytest

from promptgrid.api.client import ApiClient
from promptgrid.flows.generate import generate
from promptgrid.output.journal import Journal
from promptgrid.output.manifest.read import part_keys, read_manifest
from promptgrid.output.sinks import open_sink
from promptgrid.settings import ApiKey
from promptgrid.spec.expand import iter_job_batches
from promptgrid.spec.load import load_spec
from tests.support.secrets import assert_key_nowhere

pytestmark = [
    pytest.mark.integration,  # the Prefect test server
    pytest.mark.usefixtures("prefect_harness"),
]

KEY = "pg-flow-recovery-key-0b7e"


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("EACHLABS_API_KEY", KEY)
    return KEY


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    return request.getfixturevalue("s3_output")


def write_spec(folder: Path, output: str, prompts: int = 4) -> Path:
    with open(folder / "prompts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt"])
        writer.writerows([f"a glass bottle, study {n}"] for n in range(prompts))
    spec = folder / "spec.yaml"
    spec.write_text(
        "model: stable-diffusion-3-5-large\nprompts: prompts.csv\ninputs: {output_format: png, steps: 20}\n"
        f"seeds: [1, 2]\noutput: {output}\n",
        encoding="utf-8",
    )
    return spec


def run_generate(spec: Path, sandbox, **params):
    """The run's summary, which a Failed run (some jobs failed) keeps as its result too."""
    params = {"api_base": sandbox.url, "rate_limit": "60/0.6s", "time_scale": 100.0, **params}
    state = asyncio.run(generate(spec_path=str(spec), return_state=True, **params))
    return state.result(raise_on_failure=False)


def test_a_corrupt_manifest_part_does_not_stop_a_run(tmp_path, output, sandbox_factory, api_key, caplog):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path, output)
    assert run_generate(spec, sandbox).succeeded == 8
    sink = open_sink(output)
    (whole,) = part_keys(sink)
    sink.put_bytes(whole, sink.get_bytes(whole)[:-64], "application/octet-stream")  # truncated
    sink.put_bytes("manifest/part-zero.parquet", b"", "application/octet-stream")  # zero bytes

    with caplog.at_level(logging.WARNING, logger="promptgrid.recovery"):
        summary = run_generate(spec, sandbox)

    # Every job came back from the journal: nothing created again, nothing fetched again.
    assert summary.succeeded == 0 and summary.skipped == 8 and summary.failed == 0
    assert sandbox.stats()["creates"] == 8 and sandbox.stats()["requests"]["output"] == 8
    moved = sorted(key.rsplit("-", 1)[-1] for key in sink.list_keys("manifest-quarantine/"))
    assert len(moved) == 2 and "zero.parquet" in moved
    warned = " ".join(record.getMessage() for record in caplog.records)
    assert whole in warned and "part-zero.parquet" in warned
    table = read_manifest(sink)
    assert table.num_rows == 8 and set(table.column("status").to_pylist()) == {"success"}


def test_a_create_lost_to_a_kill_is_adopted_through_the_listing(tmp_path, output, sandbox_factory, api_key):
    sandbox = sandbox_factory(api_key=api_key)
    spec = write_spec(tmp_path, output)
    job = next(iter(iter_job_batches(load_spec(spec))))[0]
    # What a run killed with the create on the wire leaves: an intent, a paid prediction, no record.
    journal = Journal(open_sink(output), "killed-s0")
    asyncio.run(journal.intend(job.job_id, 1))
    journal.close()

    async def create() -> str:
        async with ApiClient(sandbox.url, ApiKey(api_key)) as client:
            return await client.create(job.model, job.version, job.inputs)

    paid = asyncio.run(create())

    summary = run_generate(spec, sandbox)

    assert summary.succeeded == 8 and summary.failed == 0
    stats = sandbox.stats()
    assert stats["creates"] == 8 and stats["duplicate_creates"] == 0 and stats["requests"]["executions"] >= 1
    rows = {row["job_id"]: row for row in read_manifest(open_sink(output)).to_pylist()}
    assert rows[job.job_id]["prediction_id"] == paid and rows[job.job_id]["status"] == "success"


def test_without_the_listing_a_lost_create_stays_unknown_and_is_not_sent_again(
    tmp_path, sandbox_factory, api_key
):
    sandbox = sandbox_factory(api_key=api_key, executions_endpoint=False)
    spec = write_spec(tmp_path, str(tmp_path / "out"))
    job = next(iter(iter_job_batches(load_spec(spec))))[0]
    journal = Journal(open_sink(str(tmp_path / "out")), "killed-s0")
    asyncio.run(journal.intend(job.job_id, 1))
    journal.close()

    summary = run_generate(spec, sandbox)

    assert summary.succeeded == 7 and summary.failed == 1
    assert sandbox.stats()["creates"] == 7  # the unknown one was never re-sent
    rows = {row["job_id"]: row for row in read_manifest(open_sink(str(tmp_path / "out"))).to_pylist()}
    assert rows[job.job_id]["error_code"] == "CREATE_OUTCOME_UNKNOWN"


def test_an_echoed_key_appears_nowhere_not_even_in_prefect_s_database(
    tmp_path, sandbox_factory, api_key, capfd
):
    sandbox = sandbox_factory(api_key=api_key, echo_key=True, error_rate=1.0, create_5xx_rate=0.2)
    spec = write_spec(tmp_path, str(tmp_path / "out"))
    # The key written into the spec by mistake, and into the grid in base64 and percent-encoded.
    spec.write_text(spec.read_text(encoding="utf-8") + f"# key: {api_key}\n", encoding="utf-8")
    basic = base64.b64encode(f"user:{api_key}".encode()).decode()
    with open(tmp_path / "prompts.csv", "a", encoding="utf-8") as grid:
        grid.write(f"a bottle labelled {basic} and {urllib.parse.quote(api_key, safe='')}\n")
    summary = run_generate(spec, sandbox)
    assert summary.failed == 10

    captured = capfd.readouterr()
    files = assert_key_nowhere(api_key, captured.out + captured.err, tmp_path / "out")
    # The echoed codes did reach Prefect (the run's summary artifact), scrubbed.
    assert any(b"_***" in path.read_bytes() for path in files)
