"""Output URLs serve real images: the requested size and format, deterministic, following an input image."""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from promptgrid.models.catalog import ASPECT_RATIOS

KEY = {"X-API-Key": "test-key"}
PIL_NAMES = {"webp": "WEBP", "jpg": "JPEG", "png": "PNG"}


def create(client: httpx.Client, **inputs) -> str:
    body = {
        "model": "stable-diffusion-3-5-large",
        "version": "0.0.1",
        "input": {"prompt": "a red kite", **inputs},
    }
    answer = client.post("/v1/prediction/", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictionID"]


def finished(client: httpx.Client, prediction_id: str, attempts: int = 300) -> dict:
    """The prediction once it has ended; image-to-image waits on a real (loopback) fetch of its input."""
    for _ in range(attempts):
        result = client.get(f"/v1/prediction/{prediction_id}").json()
        if result["status"] in ("success", "error", "cancelled"):
            return result
        time.sleep(0.005)
    raise AssertionError("the prediction did not end")


def fetch(client: httpx.Client, prediction_id: str) -> bytes:
    result = finished(client, prediction_id)
    assert result["status"] == "success", result
    image = client.get(result["output"])
    assert image.status_code == 200
    return image.content


@pytest.fixture
def done_sandbox(sandbox_factory, manual_clock):
    """A sandbox whose clock is already past every latency when a prediction is polled."""
    sb = sandbox_factory(clock=manual_clock, max_in_flight=1000, rate_limit=10_000, latency_sigma=0.0)

    class Clocked:
        url = sb.url

        @staticmethod
        def settle() -> None:
            manual_clock.advance(sb.config.scaled(60.0))

    return Clocked


@pytest.mark.parametrize("fmt", ["webp", "jpg", "png"])
def test_every_aspect_ratio_in_every_format(done_sandbox, fmt):
    with httpx.Client(base_url=done_sandbox.url, headers=KEY, timeout=10) as client:
        ids = {
            ratio: create(client, aspect_ratio=ratio, output_format=fmt, seed=4) for ratio in ASPECT_RATIOS
        }
        done_sandbox.settle()
        for ratio, prediction_id in ids.items():
            result = finished(client, prediction_id)
            assert result["output"].endswith(f".{fmt}")
            response = client.get(result["output"])
            assert response.headers["content-type"] == {"webp": "image/webp", "jpg": "image/jpeg"}.get(
                fmt, "image/png"
            )
            image = Image.open(io.BytesIO(response.content))
            assert image.format == PIL_NAMES[fmt] and image.size == ASPECT_RATIOS[ratio]
            darkest, lightest = image.convert("L").getextrema()
            assert lightest - darkest > 32  # text on a colour field, not a blank image


def test_images_are_deterministic_in_prompt_seed_and_parameters(done_sandbox):
    with httpx.Client(base_url=done_sandbox.url, headers=KEY, timeout=10) as client:
        ids = [
            create(client, seed=1),
            create(client, seed=1),
            create(client, seed=2),
            create(client, seed=1, cfg=5),
            create(client, seed=1, prompt="a blue kite"),
        ]
        done_sandbox.settle()
        first, same, *different = [fetch(client, pid) for pid in ids]
    assert first == same
    assert all(image != first for image in different)


def test_quality_changes_the_encoding(done_sandbox):
    with httpx.Client(base_url=done_sandbox.url, headers=KEY, timeout=10) as client:
        low = create(client, seed=1, output_format="jpg", output_quality=5)
        high = create(client, seed=1, output_format="jpg", output_quality=95)
        done_sandbox.settle()
        assert len(fetch(client, low)) < len(fetch(client, high))


def test_image_to_image_follows_the_input_shape(done_sandbox):
    with httpx.Client(base_url=done_sandbox.url, headers=KEY, timeout=10) as client:
        source = create(client, seed=1, aspect_ratio="16:9", output_format="png")
        done_sandbox.settle()
        source_url = finished(client, source)["output"]
        derived = create(client, seed=1, image=source_url, prompt_strength=0.5, aspect_ratio="1:1")
        done_sandbox.settle()
        image = Image.open(io.BytesIO(fetch(client, derived)))
    assert image.size == ASPECT_RATIOS["16:9"] and image.format == "WEBP"


@pytest.mark.parametrize("path", ["/outputs/missing.png", "/sandbox/stats"], ids=["404", "not-an-image"])
def test_unreadable_input_image_fails_with_input_download_error(done_sandbox, path):
    with httpx.Client(base_url=done_sandbox.url, headers=KEY, timeout=10) as client:
        prediction_id = create(client, seed=1, image=f"{done_sandbox.url}{path}")
        done_sandbox.settle()
        result = finished(client, prediction_id)
    assert result["status"] == "error"
    assert result["output"]["error_code"] == "INPUT_DOWNLOAD_ERROR"
    assert result["output"]["retryable"] is False
