"""The API client against scripted HTTP answers: request shape, parsing, the exception tree, the key."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from promptgrid.api.client import ApiClient, parse_retry_after
from promptgrid.api.prediction import PredictionStatus, parse_prediction
from promptgrid.errors import (
    AuthenticationFailed,
    InputRejected,
    PaymentRequired,
    PredictionNotFound,
    ServerFailure,
    Throttled,
    TransportFailure,
    UnexpectedAnswer,
)
from promptgrid.settings import ApiKey

SECRET = "sk-test-0123456789abcdef"
BASE = "http://127.0.0.1:9"


def client_for(handler) -> ApiClient:
    return ApiClient(BASE, ApiKey(SECRET), transport=httpx.MockTransport(handler))


async def test_create_sends_key_version_and_real_numbers():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "success", "predictionID": "p-1"})

    async with client_for(handler) as client:
        pid = await client.create(
            "stable-diffusion-3-5-large", "0.0.1", {"prompt": "a", "cfg": 3.5, "steps": 4}
        )
    assert pid == "p-1"
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/v1/prediction/"
    assert request.headers["X-API-Key"] == SECRET
    body = json.loads(request.content)
    assert body == {
        "model": "stable-diffusion-3-5-large",
        "version": "0.0.1",
        "input": {"prompt": "a", "cfg": 3.5, "steps": 4},
    }


async def test_output_urls_do_not_carry_the_key():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"x")

    async with client_for(handler) as client:
        await client.storage.get("http://127.0.0.1:9/outputs/a.png")
    assert "x-api-key" not in seen[0].headers and "authorization" not in seen[0].headers


@pytest.mark.parametrize(
    ("output", "url"),
    [
        ("https://cdn.example/a.webp", "https://cdn.example/a.webp"),
        (["https://cdn.example/b.webp"], "https://cdn.example/b.webp"),
        ({"url": "https://cdn.example/c.webp"}, "https://cdn.example/c.webp"),
        ("not a url", None),
        ([], None),
    ],
)
def test_success_output_is_read_in_every_documented_shape(output, url):
    prediction = parse_prediction("p", {"id": "p", "status": "success", "output": output})
    assert prediction.status is PredictionStatus.SUCCESS and prediction.finished
    assert prediction.output_url == url


def test_error_detail_as_object_or_plain_text():
    detail = {"error_code": "PROVIDER_RATE_LIMIT", "error_message": "slow down", "retryable": True}
    as_object = parse_prediction("p", {"status": "error", "output": detail})
    assert (as_object.error_code, as_object.error_message, as_object.retryable) == (
        "PROVIDER_RATE_LIMIT",
        "slow down",
        True,
    )
    as_text = parse_prediction("p", {"status": "failed", "output": "model exploded"})
    assert as_text.status is PredictionStatus.ERROR
    assert (as_text.error_code, as_text.error_message) == ("PREDICTION_ERROR", "model exploded")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("starting", PredictionStatus.CREATED),
        ("queued", PredictionStatus.CREATED),
        ("running", PredictionStatus.PROCESSING),
        ("canceled", PredictionStatus.CANCELLED),
        ("warming-up", PredictionStatus.UNKNOWN),
    ],
)
def test_older_status_spellings_fold_into_the_closed_set(raw, status):
    prediction = parse_prediction("p", {"status": raw})
    assert prediction.status is status
    assert prediction.finished is (status is PredictionStatus.CANCELLED)


def test_metrics_are_read_as_numbers_even_when_sent_as_strings():
    body = {
        "status": "success",
        "output": "https://x.example/o.png",
        "metrics": {"predict_time": "7.5", "cost": 0.065},
    }
    prediction = parse_prediction("p", body)
    assert (prediction.predict_time_s, prediction.cost_usd) == (7.5, 0.065)


def test_retry_after_as_seconds_or_http_date():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= parse_retry_after(format_datetime(later, usegmt=True)) <= 31


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, InputRejected),
        (401, AuthenticationFailed),
        (402, PaymentRequired),
        (404, PredictionNotFound),
        (500, ServerFailure),
        (503, ServerFailure),
        (418, UnexpectedAnswer),
    ],
)
async def test_statuses_map_to_the_exception_tree(status, error):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": "nope"}, headers={"X-Request-Id": "r-7"})

    async with client_for(handler) as client:
        with pytest.raises(error) as caught:
            await client.get("p-9")
    assert caught.value.status_code == status
    assert caught.value.prediction_id == "p-9"
    assert caught.value.request_id == "r-7"


async def test_429_carries_retry_after():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"status": 429, "error": "too many requests"}, headers={"Retry-After": "3"}
        )

    async with client_for(handler) as client:
        with pytest.raises(Throttled) as caught:
            await client.create("m", "0.0.1", {"prompt": "a"})
    assert caught.value.retry_after_s == 3.0


@pytest.mark.parametrize(
    ("failure", "sent"),
    [
        (httpx.ConnectError("refused"), False),
        (httpx.ConnectTimeout("slow connect"), False),
        (httpx.ReadError("reset"), True),
        (httpx.ReadTimeout("slow answer"), True),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True),
        (httpx.WriteError("broken pipe"), True),
    ],
)
async def test_transport_failures_say_whether_the_request_may_have_arrived(failure, sent):
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    async with client_for(handler) as client:
        with pytest.raises(TransportFailure) as caught:
            await client.create("m", "0.0.1", {"prompt": "a"})
    assert caught.value.sent is sent


async def test_create_answer_without_an_id_is_unexpected():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success"})

    async with client_for(handler) as client:
        with pytest.raises(UnexpectedAnswer):
            await client.create("m", "0.0.1", {"prompt": "a"})


async def test_the_key_never_shows_in_reprs_or_errors_even_when_echoed_back():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": f"key {request.headers['X-API-Key']} is invalid"})

    async with client_for(handler) as client:
        with pytest.raises(AuthenticationFailed) as caught:
            await client.get("p")
        assert SECRET not in repr(client)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert "***" in str(caught.value)
