"""Input image references -> fetchable URLs: temp folder, loopback S3, the input server, the sandbox."""

from __future__ import annotations

import hashlib
import io
import time

import httpx
import pytest
from PIL import Image

from promptgrid.errors import InvalidInput
from promptgrid.output.input_images import (
    InputImages,
    InputServer,
    classify_image_ref,
    sniff_image_format,
)
from promptgrid.output.sinks import open_sink

KEY = {"X-API-Key": "test-key"}


def encoded(fmt: str, size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "grid" / "photos" / "cat.png"
    path.parent.mkdir(parents=True)
    path.write_bytes(encoded("PNG"))
    return path


@pytest.mark.parametrize(
    ("ref", "kind"),
    [
        ("https://example.com/a.png", "url"),
        ("http://127.0.0.1:8000/x.webp", "url"),
        ("s3://bucket/a/b.jpg", "s3"),
        ("photos/cat.png", "path"),
        ("/abs/cat.png", "path"),
        ("file:///abs/cat.png", "path"),
    ],
)
def test_references_are_classified(ref, kind):
    assert classify_image_ref(ref) == kind


@pytest.mark.parametrize(
    "ref", ["", "   ", None, "ftp://host/a.png", "gs://b/a.png", "data:image/png;base64,AA", "https:///a"]
)
def test_unsupported_references_are_invalid_input(ref):
    with pytest.raises(InvalidInput):
        classify_image_ref(ref)


def test_formats_are_sniffed_from_content():
    assert [sniff_image_format(encoded(fmt)) for fmt in ("PNG", "JPEG", "WEBP")] == ["png", "jpg", "webp"]
    assert sniff_image_format(b"GIF89a....") is None


def test_https_url_is_sent_as_is(tmp_path):
    images = InputImages(open_sink(str(tmp_path)))
    assert images.url_for(" https://example.com/a.png ") == "https://example.com/a.png"
    assert images.identity("https://example.com/a.png") == "https://example.com/a.png"


def test_local_file_with_s3_output_is_staged_once_and_presigned(
    s3_output, s3_env, s3_client, photo, tmp_path
):
    sink = open_sink(s3_output)
    clock = FakeClock()
    images = InputImages(sink, base_dir=tmp_path / "grid", expires_s=600, clock=clock)
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    url = images.url_for("photos/cat.png")
    assert images.identity(str(photo)) == images.identity(f"file://{photo}") == f"inputs/{digest}.png"
    assert list(sink.list_keys("inputs/")) == [f"inputs/{digest}.png"]
    head = s3_client.head_object(Bucket=s3_env, Key=f"runs/demo/inputs/{digest}.png")
    assert head["ContentType"] == "image/png"
    assert "X-Amz-Expires=600" in url
    fetched = httpx.get(url, timeout=5)
    assert fetched.status_code == 200 and fetched.content == photo.read_bytes()
    assert images.url_for("photos/cat.png") == url  # reused within half its lifetime
    clock.now = 301
    assert httpx.get(images.url_for("photos/cat.png"), timeout=5).content == photo.read_bytes()


def test_s3_uri_is_presigned_with_a_bounded_lifetime(s3_env, s3_client, tmp_path):
    s3_client.put_object(Bucket=s3_env, Key="refs/dog.jpg", Body=encoded("JPEG"), ContentType="image/jpeg")
    images = InputImages(open_sink(str(tmp_path / "out")))  # a local output can still send s3:// inputs
    url = images.url_for(f"s3://{s3_env}/refs/dog.jpg")
    assert "X-Amz-Expires=3600" in url and url.startswith("http://127.0.0.1:")
    assert httpx.get(url, timeout=5).content == encoded("JPEG")
    assert images.identity(f"s3://{s3_env}/refs/dog.jpg") == f"s3://{s3_env}/refs/dog.jpg"
    with pytest.raises(InvalidInput):
        images.url_for(f"s3://{s3_env}")
    with pytest.raises(InvalidInput):
        images.url_for("s3://no_such_bucket!/x.png")


def test_local_output_serves_staged_inputs_on_loopback_only(tmp_path, photo):
    sink = open_sink(str(tmp_path / "out"))
    with InputServer(sink) as server:
        images = InputImages(sink, server=server)
        url = images.url_for(str(photo))
        assert url.startswith("http://127.0.0.1:") and url.endswith(".png")
        answer = httpx.get(url, timeout=5)
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        assert answer.content == photo.read_bytes()
        assert httpx.head(url, timeout=5).status_code == 200
        (tmp_path / "out" / "secret.txt").write_text("not for the API")
        for path in ("/inputs/../secret.txt", "/secret.txt", "/inputs/cat.png", "/inputs/%2e%2e/secret.txt"):
            assert httpx.get(server.base_url + path, timeout=5).status_code == 404
    with pytest.raises(ValueError):
        InputServer(sink, host="0.0.0.0")


def test_bad_local_files_are_invalid_input(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    (tmp_path / "notes.png").write_text("not an image")
    images = InputImages(sink, base_dir=tmp_path)
    with pytest.raises(InvalidInput, match="no such file"):
        images.url_for("missing.png")
    with pytest.raises(InvalidInput, match="not a jpeg, png or webp"):
        images.url_for("notes.png")
    (tmp_path / "ok.webp").write_bytes(encoded("WEBP"))
    with pytest.raises(InvalidInput, match="serves local images only while running"):
        images.url_for("ok.webp")  # a local output without a running InputServer


def poll_output(client: httpx.Client, prediction_id: str, time_scale: float) -> dict:
    for _ in range(400):
        result = client.get(f"/v1/prediction/{prediction_id}").json()
        if result["status"] in ("success", "error", "cancelled"):
            return result
        time.sleep(1 / time_scale)  # the API's one-second poll interval, scaled like the sandbox
    raise AssertionError("prediction did not finish")


def image_to_image(sandbox, url: str) -> tuple[int, int]:
    body = {"model": "stable-diffusion-3-5-large", "version": "0.0.1", "input": {"prompt": "p", "image": url}}
    with httpx.Client(base_url=sandbox.url, headers=KEY, timeout=5) as client:
        created = client.post("/v1/prediction/", json=body)
        assert created.status_code == 200, created.text
        result = poll_output(client, created.json()["predictionID"], sandbox.config.time_scale)
        assert result["status"] == "success", result
        return Image.open(io.BytesIO(client.get(result["output"]).content)).size


def test_sandbox_fetches_a_served_local_input(sandbox, tmp_path):
    photo = tmp_path / "wide.jpg"
    photo.write_bytes(encoded("JPEG", size=(96, 40)))
    sink = open_sink(str(tmp_path / "out"))
    with InputServer(sink) as server:
        assert image_to_image(sandbox, InputImages(sink, server=server).url_for(str(photo))) == (96, 40)


def test_sandbox_fetches_a_presigned_staged_input(sandbox, s3_output, tmp_path):
    photo = tmp_path / "tall.webp"
    photo.write_bytes(encoded("WEBP", size=(40, 96)))
    images = InputImages(open_sink(s3_output))
    assert image_to_image(sandbox, images.url_for(str(photo))) == (40, 96)
