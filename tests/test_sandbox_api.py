"""The sandbox speaks the API contract: the seed page's conversation, auth, 400/404, the documented bodies."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from promptgrid.sandbox.server import SandboxConfig, running_sandbox

MODEL = "stable-diffusion-3.5-large"  # the dotted alias the seed page's snippet sends
KEY = {"X-API-Key": "test-key"}


def seed_page_body(**input_overrides) -> dict:
    """The seed page's create body: every number as a string, seed null, no input image."""
    inputs = {
        "cfg": "3.5",
        "seed": None,
        "steps": "28",
        "prompt": "a lighthouse on a cliff at dusk",
        "aspect_ratio": "1:1",
        "output_format": "webp",
        "output_quality": "90",
        "prompt_strength": "0.85",
    }
    return {"model": MODEL, "version": "0.0.1", "input": {**inputs, **input_overrides}}


def poll_until_done(client: httpx.Client, prediction_id: str, interval_s: float, attempts: int = 200) -> dict:
    for _ in range(attempts):
        result = client.get(f"/v1/prediction/{prediction_id}").json()
        if result["status"] in ("success", "error", "cancelled"):
            return result
        time.sleep(interval_s)  # the client's poll interval (1 s of the API), scaled like the sandbox
    raise AssertionError(f"prediction {prediction_id} did not finish")


def test_seed_page_conversation_yields_the_image(sandbox):
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        created = client.post("/v1/prediction/", json=seed_page_body())
        assert created.status_code == 200
        assert created.headers["x-request-id"]
        body = created.json()
        assert body["status"] == "success" and body["message"] == "Prediction created successfully"

        result = poll_until_done(client, body["predictionID"], interval_s=1 / sandbox.config.time_scale)
        assert result["status"] == "success"
        assert result["id"] == body["predictionID"]
        assert result["input"]["cfg"] == "3.5"  # echoed as sent
        assert result["metrics"]["predict_time"] > 0
        assert result["urls"]["get"].endswith(f"/v1/prediction/{body['predictionID']}")
        assert result["urls"]["cancel"].endswith("/cancel")

        image = client.get(result["output"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(image.content)).size == (1024, 1024)
    stats = sandbox.stats()
    assert stats["requests"]["create"] == 1 and stats["requests"]["output"] == 1
    assert stats["predictions_by_status"]["success"] == 1


def test_create_without_trailing_slash_and_with_bearer_key(sandbox):
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        created = client.post(
            "/v1/prediction",
            json=seed_page_body(),
            headers={"Authorization": "Bearer another-key"},
        )
        assert created.status_code == 200
        got = client.get(
            f"/v1/prediction/{created.json()['predictionID']}",
            headers={"Authorization": "Bearer another-key"},
        )
    assert got.status_code == 200 and got.json()["status"] in ("created", "processing", "success")


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": ""}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"X-API-Key": "wrong-key"}],
    ids=["none", "empty", "basic-auth", "wrong"],
)
def test_missing_or_wrong_key_is_401_and_creates_nothing(sandbox_factory, headers):
    sb = sandbox_factory(api_key="the-right-key")
    with httpx.Client(base_url=sb.url, timeout=5) as client:
        response = client.post("/v1/prediction/", json=seed_page_body(), headers=headers)
        allowed = client.post(
            "/v1/prediction/", json=seed_page_body(), headers={"X-API-Key": "the-right-key"}
        )
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid or missing API key"}
    assert "the-right-key" not in response.text
    assert allowed.status_code == 200
    assert sb.stats()["creates"] == 1


def test_unknown_prediction_is_404(sandbox):
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        got = client.get("/v1/prediction/no-such-id")
        cancel = client.post("/v1/prediction/no-such-id/cancel")
    assert got.status_code == 404 and got.json() == {"error": "Prediction not found"}
    assert cancel.status_code == 404


def test_a_prediction_is_visible_only_to_its_key(sandbox):
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        created = client.post("/v1/prediction/", json=seed_page_body(), headers={"X-API-Key": "alice"})
        got = client.get(f"/v1/prediction/{created.json()['predictionID']}", headers={"X-API-Key": "bob"})
    assert got.status_code == 404


@pytest.mark.parametrize(
    ("model", "overrides", "field"),
    [
        (MODEL, {"cfg": "21"}, "cfg"),
        (MODEL, {"cfg": "lots"}, "cfg"),
        (MODEL, {"steps": "51"}, "steps"),
        (MODEL, {"steps": "2.5"}, "steps"),
        ("stable-diffusion-3-5-large-turbo", {"steps": 11}, "steps"),
        (MODEL, {"seed": -1}, "seed"),
        (MODEL, {"seed": 4_294_967_296}, "seed"),
        (MODEL, {"aspect_ratio": "1:2"}, "aspect_ratio"),
        (MODEL, {"output_format": "gif"}, "output_format"),
        (MODEL, {"output_quality": "101"}, "output_quality"),
        (MODEL, {"prompt_strength": 1.5}, "prompt_strength"),
        (MODEL, {"image": "your_file.image/jpeg"}, "image"),
        (MODEL, {"prompt": ""}, "prompt"),
        (MODEL, {"negative_prompt": "blur"}, "negative_prompt"),
    ],
)
def test_bad_input_is_400_naming_the_field(sandbox, model, overrides, field):
    body = seed_page_body(**overrides)
    body["model"] = model
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        response = client.post("/v1/prediction/", json=body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["error"] == "Invalid input for model"
    assert answer["fields"] == [field]
    assert field in answer["message"]
    assert sandbox.stats()["creates"] == 0


def test_turbo_accepts_its_own_ranges(sandbox):
    body = seed_page_body(cfg="1", steps="4")
    body["model"] = "stable-diffusion-3-5-large-turbo"
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        assert client.post("/v1/prediction/", json=body).status_code == 200


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"{not json", "Invalid JSON body"),
        (b'["model"]', "The body must be a JSON object with model, version and input"),
        (b'{"model": "stable-diffusion-3-5-large", "input": "a cat"}', "Invalid input for model"),
    ],
)
def test_malformed_creates_are_400(sandbox, content, error):
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        response = client.post(
            "/v1/prediction/", content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400 and response.json()["error"] == error


@pytest.mark.parametrize("model", ["dall-e", 7, None])
def test_an_unknown_model_is_404_as_the_api_answers_and_creates_nothing(sandbox, model):
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        response = client.post("/v1/prediction/", json={"model": model, "version": "0.0.1", "input": {}})
    assert response.status_code == 404 and response.json()["error"] == "Model not found"
    assert sandbox.stats()["creates"] == 0


def test_cancel_stops_a_prediction_and_frees_its_slot(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, max_in_flight=1)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        first = client.post("/v1/prediction/", json=seed_page_body()).json()["predictionID"]
        assert client.post("/v1/prediction/", json=seed_page_body(seed=1)).status_code == 429
        cancelled = client.post(f"/v1/prediction/{first}/cancel")
        assert cancelled.json() == {
            "status": "cancelled",
            "message": "Prediction canceled successfully",
            "predictionID": first,
        }
        assert client.post("/v1/prediction/", json=seed_page_body(seed=2)).status_code == 200
        manual_clock.advance(1000)
        assert client.get(f"/v1/prediction/{first}").json()["status"] == "cancelled"
        again = client.post(f"/v1/prediction/{first}/cancel").json()
    assert again["status"] == "cancelled" and again["message"] == "Prediction already finished"


def test_status_moves_created_processing_success_with_the_clock(sandbox_factory, manual_clock):
    sb = sandbox_factory(clock=manual_clock, time_scale=1.0, latency_sigma=0.0, latency_median_s=8.0)
    with httpx.Client(base_url=sb.url, headers=KEY, timeout=5) as client:
        prediction_id = client.post("/v1/prediction/", json=seed_page_body()).json()["predictionID"]
        seen = []
        for step in (0.0, 0.5, 1.0, 7.0):  # queued for 10% of 8 s, then processing until 8 s
            manual_clock.advance(step)
            result = client.get(f"/v1/prediction/{prediction_id}").json()
            seen.append(result["status"])
    assert seen == ["created", "created", "processing", "success"]
    assert result["metrics"] == {"predict_time": pytest.approx(7.2), "cost": 0.065}


def test_stats_count_duplicates_and_reset_zeroes_them(sandbox_factory, manual_clock):
    sandbox = sandbox_factory(clock=manual_clock)
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        for seed in (7, 7, 7, 8):
            assert client.post("/v1/prediction/", json=seed_page_body(seed=seed)).status_code == 200
        stats = client.get("/sandbox/stats").json()
        assert stats == sandbox.stats() | {"predictions_by_status": stats["predictions_by_status"]}
        assert stats["creates"] == 4 and stats["duplicate_creates"] == 2
        assert sorted(stats["creates_per_input"].values()) == [1, 3]
        assert stats["max_in_flight"] == 4 and stats["max_window_requests"] == 4
        reset = client.post("/sandbox/reset").json()
    assert reset["creates"] == 0 and reset["requests"] == dict.fromkeys(
        ("create", "get", "cancel", "executions", "output", "model", "openapi"), 0
    )
    assert reset["predictions_by_status"] == dict.fromkeys(stats["predictions_by_status"], 0)


async def test_runs_from_inside_an_async_test():
    # The sandbox keeps its own loop in its own thread, so this test's loop stays free for the client.
    with running_sandbox(SandboxConfig(time_scale=100.0)) as sb:
        async with httpx.AsyncClient(base_url=sb.url, headers=KEY, timeout=5) as client:
            created = await client.post("/v1/prediction/", json=seed_page_body())
            got = await client.get(f"/v1/prediction/{created.json()['predictionID']}")
        assert got.status_code == 200 and sb.stats()["creates"] == 1
