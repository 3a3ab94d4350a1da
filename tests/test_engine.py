"""The engine against a scripted API (httpx.MockTransport): retries, unknown creates, 402, deadlines, outputs.

`ScriptedApi` speaks the contract in memory; each test scripts the edge it is about (a dropped connection
after the create arrived, a 402, a prediction that never finishes, an expired output URL) and then checks the
outcome and what the API received. Durations are hundredths of a second.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from PIL import Image

from promptgrid.api.client import ApiClient
from promptgrid.api.polling import PollPolicy
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.errors import PaymentRequired
from promptgrid.models.check import check_input
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus
from tests.support.events import Events

SECRET = "sk-engine-test-secret-42"
MODEL = "stable-diffusion-3-5-large-turbo"
POLICY = PollPolicy(cold_start_s=0.005, min_interval_s=0.002, max_interval_s=0.02)
FAST = EngineConfig(
    limits=Limits(requests=10_000, window_s=1.0, max_in_flight=4),
    deadline_s=0.3,
    listing_lag_s=0.0,
    retry_backoff_s=0.002,
    max_backoff_s=0.01,
    poll=POLICY,
)


def make_job(n: int, **inputs) -> Job:
    normalised, errors = check_input(
        MODEL, {"prompt": f"prompt {n}", "seed": n, "output_format": "png", **inputs}
    )
    assert not errors
    return Job(job_id=f"job-{n}", model=MODEL, inputs=normalised)


@functools.cache
def png(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(out, fmt)
    return out.getvalue()


class ScriptedApi:
    """An in-memory API: predictions finish after `polls_to_finish` gets; hooks script the edge cases."""

    def __init__(self, polls_to_finish: int = 1, listing: bool = False):
        self.polls_to_finish = polls_to_finish
        self.listing = listing  # whether GET /v1/executions lists the predictions (else 404, as of old)
        self.predictions: dict[str, dict] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []
        self.ids = (f"pred-{n}" for n in itertools.count(1))
        self.on_create: Callable[[httpx.Request, int], httpx.Response | None] = lambda request, n: None
        self.final: Callable[[dict], dict] = lambda p: {"status": "success", "output": p["url"]}
        self.on_output: Callable[[dict], httpx.Response] = lambda p: httpx.Response(
            200, content=png(p["size"])
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/outputs/"):
            self.calls["output"] += 1
            return self.on_output(self.predictions[path.rsplit("/", 1)[1]])
        assert request.headers["X-API-Key"] == SECRET
        if request.method == "POST" and path.endswith("/cancel"):
            self.calls["cancel"] += 1
            pid = path.split("/")[3]
            self.predictions[pid]["cancelled"] = True
            return httpx.Response(200, json={"status": "cancelled", "predictionID": pid})
        if request.method == "POST":
            return self._create(request)
        if path == "/v1/executions":
            return self._executions(request)
        return self._get(path.rsplit("/", 1)[1])

    def _executions(self, request: httpx.Request) -> httpx.Response:
        self.calls["executions"] += 1
        if not self.listing:
            return httpx.Response(404, text="404 page not found")
        offset, limit = int(request.url.params["offset"]), int(request.url.params["limit"])
        now = datetime.now(UTC).isoformat()
        rows = [
            {"id": pid, "model": MODEL, "status": "processing", "created_at": now} for pid in self.predictions
        ]
        page = rows[::-1][offset : offset + limit]
        return httpx.Response(200, json={"executions": page, "total_count": len(rows), "total_capped": False})

    def _create(self, request: httpx.Request) -> httpx.Response:
        self.calls["create"] += 1
        scripted = self.on_create(request, self.calls["create"])
        if scripted is not None:
            return scripted
        self.new_prediction(json.loads(request.content)["input"])
        return httpx.Response(200, json={"status": "success", "predictionID": self.last_id})

    def new_prediction(self, inputs: dict) -> str:
        self.last_id = pid = next(self.ids)
        size = (1024, 1024) if inputs.get("aspect_ratio", "1:1") == "1:1" else (1344, 768)
        if inputs.get("image"):
            size = (16, 16)  # image-to-image follows the input's shape; small keeps many-job tests fast
        self.predictions[pid] = {
            "id": pid,
            "input": inputs,
            "gets": 0,
            "size": size,
            "url": f"http://127.0.0.1:9/outputs/{pid}",
        }
        self.log.append(("create", pid))
        return pid

    def _get(self, pid: str) -> httpx.Response:
        self.calls["get"] += 1
        self.log.append(("get", pid))
        prediction = self.predictions[pid]
        prediction["gets"] += 1
        body = {
            "id": pid,
            "input": prediction["input"],
            "status": "processing",
            "output": None,
            "metrics": {},
        }
        if prediction.get("cancelled"):
            body["status"] = "cancelled"
        elif prediction["gets"] >= self.polls_to_finish:
            body.update(self.final(prediction), metrics={"predict_time": 1.5, "cost": 0.04})
        return httpx.Response(200, json=body)


def engine_for(api: ScriptedApi, config: EngineConfig = FAST, prepare_inputs=None, **hooks) -> Engine:
    client = ApiClient("http://127.0.0.1:9", ApiKey(SECRET), transport=httpx.MockTransport(api))
    events = Events(**hooks)
    return Engine(client, LocalBudget(config.limits), config, events=events, prepare_inputs=prepare_inputs)


async def test_a_job_becomes_a_verified_image_and_the_id_is_journaled_before_polling():
    api = ScriptedApi(polls_to_finish=2)
    journal: list[tuple[str, str, int, int]] = []

    async def on_created(job: Job, prediction_id: str, attempt: int) -> None:
        journal.append((job.job_id, prediction_id, attempt, api.calls["get"]))

    engine = engine_for(api, on_created=on_created)
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.SUCCESS, outcome.error_message
    assert journal == [("job-1", "pred-1", 1, 0)]  # handed out before the first poll
    assert (outcome.width, outcome.height, outcome.image_format) == (1024, 1024, "png")
    assert outcome.bytes == len(outcome.image) and len(outcome.sha256) == 64
    assert outcome.api_requests == 1 + api.calls["get"] and outcome.attempts == 1
    assert (outcome.predict_time_s, outcome.cost_usd) == (1.5, 0.04)
    assert outcome.queued_at <= outcome.submitted_at <= outcome.completed_at
    await engine.client.aclose()


async def test_each_create_is_announced_before_it_leaves_and_after_the_budget_admits_it():
    api = ScriptedApi()
    api.on_create = lambda request, n: (
        httpx.Response(500, json={"error": "Failed to create prediction"}) if n == 1 else None
    )
    announced: list[tuple[str, int, int]] = []

    async def on_sending(job: Job, attempt: int) -> None:
        announced.append((job.job_id, attempt, api.calls["create"]))

    engine = engine_for(api, on_sending=on_sending)
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.SUCCESS, outcome.error_message
    # The refused create and its re-send were each announced while the API had not yet seen them.
    assert announced == [("job-1", 1, 0), ("job-1", 1, 1)]
    await engine.client.aclose()


async def test_a_resumed_job_polls_its_known_prediction_instead_of_creating():
    api = ScriptedApi()
    pid = api.new_prediction({"aspect_ratio": "1:1"})
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1), resume_prediction_id=pid)
    assert outcome.status is JobStatus.SUCCESS and outcome.prediction_id == pid
    assert api.calls["create"] == 0
    await engine.client.aclose()


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadError("connection reset"),
        httpx.ReadTimeout("no answer"),
        httpx.RemoteProtocolError("closed"),
    ],
)
async def test_a_create_that_may_have_arrived_is_never_resent(failure):
    api = ScriptedApi()

    def arrive_then_drop(request: httpx.Request, n: int):
        api.new_prediction({})  # the server created it; the answer never came back
        raise failure

    api.on_create = arrive_then_drop
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.FAILED and outcome.error_code == "CREATE_OUTCOME_UNKNOWN"
    assert "not re-sent" in outcome.error_message
    assert api.calls["create"] == 1 and len(api.predictions) == 1
    await engine.client.aclose()


@pytest.mark.parametrize(
    "refusal",
    [
        lambda: httpx.Response(500, json={"error": "Failed to create prediction"}),
        lambda: httpx.Response(429, json={"error": "too many requests"}, headers={"Retry-After": "0.01"}),
        lambda: (_ for _ in ()).throw(httpx.ConnectError("refused")),
    ],
    ids=["500-and-no-listing", "429", "connect-error"],
)
async def test_a_create_refused_without_creating_is_resent(refusal):
    api = ScriptedApi()
    api.on_create = lambda request, n: refusal() if n == 1 else None
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.SUCCESS
    assert api.calls["create"] == 2 and len(api.predictions) == 1
    assert outcome.attempts == 1 and engine.stats.create_resends == 1
    await engine.client.aclose()


async def test_a_gateways_timeout_page_on_create_is_an_unknown_outcome():
    api = ScriptedApi()
    api.on_create = lambda request, n: httpx.Response(504, text="<html>upstream timed out</html>")
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert outcome.error_code == "CREATE_OUTCOME_UNKNOWN" and api.calls["create"] == 1
    await engine.client.aclose()


async def test_a_402_with_predictions_in_flight_waits_for_one_to_finish_instead_of_failing():
    api = ScriptedApi(polls_to_finish=3)

    def balance(request: httpx.Request, n: int) -> httpx.Response | None:
        running = sum(1 for p in api.predictions.values() if p["gets"] < api.polls_to_finish)
        return httpx.Response(402, json={"error": "Insufficient balance"}) if running >= 2 else None

    api.on_create = balance
    config = replace(FAST, limits=Limits(requests=10_000, window_s=1.0, max_in_flight=4), deadline_s=5.0)
    engine = engine_for(api, config)
    outcomes = [outcome async for outcome in engine.run(make_job(n) for n in range(8))]
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 8}
    assert engine.stats.payment_waits >= 1 and engine.halted is None
    assert len(api.predictions) == 8  # a refused create made nothing; the job sent it again later
    await engine.client.aclose()


async def test_a_402_that_persists_with_nothing_in_flight_halts_the_run_after_spaced_tries():
    api = ScriptedApi()
    api.on_create = lambda request, n: httpx.Response(402, json={"error": "Insufficient balance"})
    limits = Limits(requests=10_000, window_s=1.0, max_in_flight=2)
    config = replace(FAST, limits=limits, idle_retry_s=0.01, max_backoff_s=0.1)
    engine = engine_for(api, config)
    started = time.monotonic()
    outcomes = []
    with pytest.raises(PaymentRequired):
        async for outcome in engine.run(make_job(n) for n in range(5)):
            outcomes.append(outcome)
    # Every job ends PAYMENT_REQUIRED, those never taken too ("not submitted"): each has its row and reason.
    assert {o.error_code for o in outcomes} == {"PAYMENT_REQUIRED"} and len(outcomes) == 5
    assert sum("not submitted" in o.error_message for o in outcomes) == 4
    assert api.calls["create"] == config.payment_tries  # one job tried; the others were never sent
    assert time.monotonic() - started >= 0.01 + 0.02 + 0.04  # the tries were spaced, doubling
    await engine.client.aclose()


async def test_a_retryable_prediction_error_is_retried_as_a_new_recorded_attempt():
    api = ScriptedApi()
    detail = {"error_code": "PROVIDER_SERVER_ERROR", "error_message": "busy", "retryable": True}
    api.final = lambda p: (
        {"status": "error", "output": detail}
        if p["id"] == "pred-1"
        else {"status": "success", "output": [p["url"]]}
    )
    attempts: list[int] = []

    async def on_created(job: Job, prediction_id: str, attempt: int) -> None:
        attempts.append(attempt)

    engine = engine_for(api, on_created=on_created)
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.SUCCESS and outcome.prediction_id == "pred-2"
    assert outcome.attempts == 2 and attempts == [1, 2]
    assert outcome.cost_usd == pytest.approx(0.08)  # both predictions' cost is reported
    await engine.client.aclose()


@pytest.mark.parametrize(
    ("output", "code", "creates"),
    [
        (
            {"error_code": "PROVIDER_REJECTED", "error_message": "filtered", "retryable": False},
            "PROVIDER_REJECTED",
            1,
        ),
        ({"error_code": "EXECUTION_TIMEOUT", "error_message": "took too long"}, "EXECUTION_TIMEOUT", 3),
        ("the model crashed", "PREDICTION_ERROR", 1),
    ],
)
async def test_prediction_errors_end_with_their_code(output, code, creates):
    api = ScriptedApi()
    api.final = lambda p: {"status": "error", "output": output}
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert (outcome.status, outcome.error_code) == (JobStatus.FAILED, code)
    assert api.calls["create"] == creates == outcome.attempts
    await engine.client.aclose()


async def test_a_prediction_past_its_deadline_is_cancelled_and_timed_out():
    api = ScriptedApi(polls_to_finish=10**9)
    engine = engine_for(api, EngineConfig(**{**FAST.__dict__, "deadline_s": 0.05}))
    outcome = await engine.run_job(make_job(1))
    assert (outcome.status, outcome.error_code) == (JobStatus.TIMED_OUT, "DEADLINE_EXCEEDED")
    assert api.calls["cancel"] == 1 and api.predictions["pred-1"]["cancelled"]
    await engine.client.aclose()


async def test_once_latency_is_learned_a_stuck_prediction_is_cancelled_long_before_the_api_timeout():
    api = ScriptedApi()
    stuck = "pred-2"
    api.final = lambda p: (
        {"status": "processing"} if p["id"] == stuck else {"status": "success", "output": p["url"]}
    )
    config = EngineConfig(
        **{**FAST.__dict__, "deadline_s": 30.0, "stuck_factor": 5.0, "min_deadline_s": 0.05}
    )
    engine = engine_for(api, config)
    assert (await engine.run_job(make_job(1))).status is JobStatus.SUCCESS  # teaches the engine the latency
    outcome = await engine.run_job(make_job(2))
    assert (outcome.status, outcome.error_code) == (JobStatus.TIMED_OUT, "DEADLINE_EXCEEDED")
    assert api.predictions[stuck]["cancelled"]
    # The 30 s ceiling never came into play: the learned latency set a deadline a fraction of it.
    assert (outcome.completed_at - outcome.submitted_at).total_seconds() < config.deadline_s / 10
    await engine.client.aclose()


async def test_unknown_statuses_and_failing_polls_are_waited_out():
    api = ScriptedApi(polls_to_finish=6)
    original_get = api._get

    def flaky_get(pid: str) -> httpx.Response:
        n = api.calls["get"]
        if n == 0:
            api.calls["get"] += 1
            return httpx.Response(503, json={"error": "unavailable"})
        if n == 1:
            api.calls["get"] += 1
            return httpx.Response(429, json={"error": "too many requests"})
        if n == 2:
            api.calls["get"] += 1
            raise httpx.ReadError("reset")
        response = original_get(pid)
        if api.predictions[pid]["gets"] < api.polls_to_finish:
            return httpx.Response(200, json={"id": pid, "status": "warming-up"})
        return response

    api._get = flaky_get
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.SUCCESS
    assert engine.stats.throttled == 1 and engine.stats.transient_errors == 2
    await engine.client.aclose()


@pytest.mark.parametrize(
    ("respond", "code"),
    [
        (lambda p: httpx.Response(410, text="gone"), "OUTPUT_EXPIRED"),
        (lambda p: httpx.Response(403, text="signature expired"), "OUTPUT_EXPIRED"),
        (lambda p: httpx.Response(200, content=png(p["size"])[:200]), "OUTPUT_INVALID"),
        (lambda p: httpx.Response(200, content=b"not an image at all"), "OUTPUT_INVALID"),
        (lambda p: httpx.Response(200, content=b""), "OUTPUT_INVALID"),
        (lambda p: httpx.Response(200, content=b"\0" * 5000), "OUTPUT_TOO_LARGE"),
    ],
    ids=["410", "403", "truncated", "not-an-image", "empty", "too-large"],
)
async def test_outputs_that_are_no_image_fail_with_a_reason(respond, code):
    api = ScriptedApi()
    api.on_output = respond
    cap = 4096 if code == "OUTPUT_TOO_LARGE" else FAST.output_max_bytes
    engine = engine_for(api, EngineConfig(**{**FAST.__dict__, "output_max_bytes": cap}))
    outcome = await engine.run_job(make_job(1))
    assert (outcome.status, outcome.error_code) == (JobStatus.FAILED, code)
    assert outcome.image is None and outcome.sha256 is None
    await engine.client.aclose()


@pytest.mark.parametrize(
    ("content", "fmt", "size", "mismatch"),
    [
        (png((512, 512)), "png", (512, 512), True),
        (png((1024, 1024), "JPEG"), "jpg", (1024, 1024), False),
        (png((1000, 1000), "WEBP"), "webp", (1000, 1000), True),
    ],
    ids=["other-size", "other-format", "both"],
)
async def test_a_paid_image_of_another_size_or_format_is_kept_with_what_it_really_is(
    content, fmt, size, mismatch
):
    api = ScriptedApi()
    api.on_output = lambda p: httpx.Response(200, content=content)
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))  # asks for a 1024x1024 png
    assert outcome.status is JobStatus.SUCCESS and outcome.image == content
    assert (outcome.image_format, (outcome.width, outcome.height)) == (fmt, size)
    assert outcome.size_mismatch is mismatch
    await engine.client.aclose()


async def test_an_output_fetch_is_retried_after_a_server_error():
    api = ScriptedApi()
    answers = iter([httpx.Response(502, text="bad gateway")])
    api.on_output = lambda p: next(answers, None) or httpx.Response(200, content=png(p["size"]))
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1, aspect_ratio="16:9"))
    assert outcome.status is JobStatus.SUCCESS and (outcome.width, outcome.height) == (1344, 768)
    assert api.calls["output"] == 2
    await engine.client.aclose()


async def test_prepare_inputs_turns_the_job_into_what_is_sent():
    api = ScriptedApi()
    sent: list[dict] = []
    api.on_create = lambda request, n: sent.append(json.loads(request.content)["input"])

    async def prepare(job: Job) -> dict:
        return {**job.inputs, "prompt": job.inputs["prompt"].upper()}

    engine = engine_for(api, prepare_inputs=prepare)
    await engine.run_job(make_job(7))
    assert sent[0]["prompt"] == "PROMPT 7"
    await engine.client.aclose()


async def test_run_keeps_a_bounded_number_of_jobs_in_hand():
    api = ScriptedApi()
    engine = engine_for(api)
    pulled = 0
    yielded = 0
    most_ahead = 0

    def jobs():
        nonlocal pulled
        for n in range(300):
            pulled += 1
            yield make_job(n, image="https://inputs.example/cat.png")

    async for outcome in engine.run(jobs()):
        yielded += 1
        most_ahead = max(most_ahead, pulled - yielded)
        assert outcome.status is JobStatus.SUCCESS
    assert yielded == 300
    assert most_ahead <= 2 * FAST.limits.max_in_flight + 1
    assert api.calls["create"] == 300
    await engine.client.aclose()


async def test_no_outcome_message_carries_the_key():
    api = ScriptedApi()
    api.on_create = lambda request, n: httpx.Response(400, json={"error": f"bad input for {SECRET}"})
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert outcome.error_code == "INPUT_REJECTED"
    assert SECRET not in (outcome.error_message or "") and SECRET not in repr(outcome)
    await engine.client.aclose()


async def test_a_journal_that_cannot_record_an_id_stops_the_run():
    api = ScriptedApi()

    async def broken_journal(job: Job, prediction_id: str, attempt: int) -> None:
        raise OSError("disk full")

    engine = engine_for(api, on_created=broken_journal)
    with pytest.raises(OSError, match="disk full"):
        async for _ in engine.run(make_job(n) for n in range(50)):
            pass
    assert api.calls["create"] <= 2 * FAST.limits.max_in_flight  # no job was started after the failure
    await engine.client.aclose()
