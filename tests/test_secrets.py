"""The API key is scrubbed from everything stored or printed, even when the API itself echoes it back.

The sandbox's `echo_key` fault writes the caller's key into every error answer and into failed predictions'
error codes and messages; the run's manifest, journal, report, exceptions and log records must not hold it.
"""

from __future__ import annotations

import base64
import logging
import urllib.parse
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
from promptgrid.output.saved_spec import save_spec
from promptgrid.output.sinks import open_sink
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.redact import scrub
from promptgrid.report.build import write_report
from promptgrid.settings import ApiKey
from promptgrid.types import Job
from tests.support.sandbox import TEST_TIME_SCALE
from tests.support.secrets import find_key

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
    spellings = find_key(SECRET, str(echoed.json()))  # as sent, and in base64 at its 3 alignments
    assert len(spellings) == 4, spellings
    for path in files_under(tmp_path / "out"):  # manifest, journal, images, report
        assert find_key(SECRET, path.read_bytes()) == [], path
    assert caplog.records and all(find_key(SECRET, record.getMessage()) == [] for record in caplog.records)
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


ENCODED_KEY = "sk-encoded+key/7e1d90=x"  # characters that base64 and percent-encoding both change


@pytest.mark.parametrize("lead", ["", "u", "us", "user:", "promptgrid:"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_the_key_inside_base64_is_scrubbed_at_every_alignment(lead, encode):
    ApiKey(ENCODED_KEY)
    blob = encode(f"{lead}{ENCODED_KEY}:and after".encode()).decode()
    assert find_key(ENCODED_KEY, blob)  # the search sees it before scrubbing
    clean = scrub(f"Authorization: Basic {blob}")
    assert clean.startswith("Authorization: Basic ") and "***" in clean
    assert find_key(ENCODED_KEY, clean) == []


@pytest.mark.parametrize(
    "spelling",
    [
        urllib.parse.quote(ENCODED_KEY, safe=""),
        urllib.parse.quote(ENCODED_KEY, safe="").lower(),
        urllib.parse.quote_plus(ENCODED_KEY),
        "".join(f"%{byte:02x}" for byte in ENCODED_KEY.encode()),  # every character encoded
        urllib.parse.quote(base64.b64encode(ENCODED_KEY.encode()).decode(), safe=""),
        base64.b64encode(ENCODED_KEY.encode()).decode().replace("/", "\\/"),  # JSON's escaped slash
    ],
)
def test_the_key_percent_encoded_is_scrubbed(spelling):
    ApiKey(ENCODED_KEY)
    assert scrub(f"?token={spelling}&x=1").startswith("?token=***")
    assert scrub(f"?token={spelling}&x=1").endswith("&x=1")


def test_a_key_written_into_a_spec_is_not_saved_with_it(tmp_path):
    ApiKey(ENCODED_KEY)
    text = f"name: study\n# api key for later: {ENCODED_KEY}\nprompts: [a fox]\n"
    sink = open_sink(str(tmp_path / "out"))
    save_spec(sink, text)
    saved = files_under(tmp_path / "out")
    assert len(saved) == 2  # spec.yaml and specs/<hash>.yaml
    for path in saved:
        assert find_key(ENCODED_KEY, path.read_bytes()) == []
        assert "# api key for later: ***" in path.read_text(encoding="utf-8")
