"""The API key is scrubbed from everything stored or printed, even when the API itself echoes it back.

The sandbox's `echo_key` fault writes the caller's key into every error answer and into failed predictions'
error codes and messages; the run's manifest, journal, report, exceptions and log records must not hold it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from promptgrid.api.client import ApiClient
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.engine.progress import RunProgress
from promptgrid.engine.unanswered import run_and_store
from promptgrid.errors import ApiError, InvalidInput, RunFailed
from promptgrid.models.check import check_input
from promptgrid.output.journal import Journal
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.recorder import OutcomeStore
from promptgrid.output.sinks import open_sink
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.redact import scrub
from promptgrid.report.build import write_report
from promptgrid.settings import ApiKey
from promptgrid.types import Job
from tests.support.sandbox import TEST_TIME_SCALE

SECRET = "sk-echoed-secret-9c1f2e"
MODEL = "stable-diffusion-3-5-large"


def jobs(count: int) -> list[Job]:
    out = []
    for n in range(count):
        inputs, errors = check_input(MODEL, {"prompt": f"a kite {n}", "seed": n, "output_format": "jpg"})
        assert not errors
        out.append(Job(job_id=f"{n:064x}", model=MODEL, inputs=inputs))
    return out


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


async def test_an_api_echoing_the_key_in_errors_leaves_it_nowhere(sandbox_factory, tmp_path, caplog):
    # Every prediction fails with the key in its code and message; some creates are refused echoing it too.
    sandbox = sandbox_factory(echo_key=True, error_rate=1.0, create_5xx_rate=0.3, seed=5)
    limits = Limits(requests=600, window_s=60.0 / TEST_TIME_SCALE, max_in_flight=5)
    config = EngineConfig(limits=limits, max_attempts=1).scaled(TEST_TIME_SCALE)
    sink = open_sink(str(tmp_path / "out"))
    journal = Journal(sink, "run-s0")
    with caplog.at_level(logging.DEBUG), ManifestWriter(sink, run_id="run", spec_hash="h") as writer:
        async with ApiClient(sandbox.url, ApiKey(SECRET)) as client:
            store = OutcomeStore(sink, journal, writer, RunProgress(total=8))
            engine = Engine(client, LocalBudget(limits), config, events=store)
            await run_and_store(engine, jobs(8), {}, store)
        logging.getLogger("promptgrid.test").warning("the API said: %s", f"bad key {SECRET}")
    journal.close()
    write_report(sink)

    rows = read_manifest(sink).to_pylist()
    assert len(rows) == 8 and all(row["status"] == "failed" for row in rows)
    echoed = httpx.get(
        f"{sandbox.url}/v1/prediction/{rows[0]['prediction_id']}", headers={"X-API-Key": SECRET}
    )
    assert SECRET in echoed.json()["output"]["error_code"]  # what the API really answered
    assert all(row["error_code"].endswith("_***") for row in rows), [row["error_code"] for row in rows]
    assert all("***" in row["error_message"] for row in rows)
    assert sandbox.stats()["faults"].get("create_server_error", 0) >= 1  # the echoing refusals happened
    for path in files_under(tmp_path / "out"):  # manifest, journal, images, report
        assert SECRET.encode() not in path.read_bytes(), path
    assert caplog.records and all(SECRET not in record.getMessage() for record in caplog.records)
    assert any("bad key ***" in record.getMessage() for record in caplog.records)


def test_exceptions_and_log_records_never_carry_a_registered_key():
    ApiKey("sk-registered-key-55aa")  # reading a key registers it
    for error in (
        ApiError("HTTP 401: key sk-registered-key-55aa refused"),
        RunFailed("first: sk-registered-key-55aa"),
        InvalidInput(["row 3: sk-registered-key-55aa is not a prompt"]),
    ):
        assert "sk-registered-key-55aa" not in str(error) and "***" in str(error)
    assert scrub("k=sk-registered-key-55aa%2F") == "k=***%2F"
    assert scrub("url-encoded: sk%2Dregistered") == "url-encoded: sk%2Dregistered"  # not the key


def test_a_short_value_is_not_taken_for_a_secret():
    ApiKey("abc")  # far too short to be a key: scrubbing it would mangle ordinary text
    assert scrub("abc def") == "abc def"


@pytest.mark.parametrize("text", ["", "nothing secret here"])
def test_text_without_a_secret_is_unchanged(text):
    assert scrub(text) == text
