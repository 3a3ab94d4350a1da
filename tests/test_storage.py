"""Output sinks through real boundaries: a temp folder, and moto's S3 server on loopback."""

from __future__ import annotations

import ast
import hashlib
import os
import re
import threading
from pathlib import Path

import httpx
import pytest

from promptgrid.errors import InvalidInput
from promptgrid.output.keys import image_key, manifest_part_key, safe_token, slugify
from promptgrid.output.sinks import open_sink
from promptgrid.output.sinks.base import Sink, check_key
from promptgrid.output.sinks.local import LocalSink
from promptgrid.types import Job

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def make_job(prompt: str = "a red fox", job_id: str = "0123abcd", model: str = "stable-diffusion-3-5-large"):
    return Job(job_id=job_id, model=model, inputs={"prompt": prompt, "seed": 1})


@pytest.fixture(params=["local", "s3"])
def sink(request, tmp_path) -> Sink:
    if request.param == "local":
        return open_sink(str(tmp_path / "out"))
    bucket = request.getfixturevalue("s3_env")
    return open_sink(f"s3://{bucket}/runs/one")


def test_put_get_exists_list_delete_round_trip(sink):
    assert not sink.exists("images/a/b.png")
    uri = sink.put_bytes("images/a/b.png", PNG, "image/png", {"job_id": "j1"})
    assert uri == sink.uri("images/a/b.png")
    assert sink.get_bytes("images/a/b.png") == PNG
    assert sink.exists("images/a/b.png")
    sink.put_bytes("images/a/c.png", b"2", "image/png")
    sink.put_bytes("manifest/p.parquet", b"3", "application/octet-stream")
    assert list(sink.list_keys("images/")) == ["images/a/b.png", "images/a/c.png"]
    assert list(sink.list_keys("images/a/b")) == ["images/a/b.png"]
    assert list(sink.list_keys("nothing/")) == []
    sink.delete("images/a/c.png")
    assert not sink.exists("images/a/c.png")
    with pytest.raises(FileNotFoundError):
        sink.get_bytes("images/a/c.png")


def test_overwrite_replaces_whole_object(sink):
    sink.put_bytes("k/x.bin", b"first version, longer", "application/octet-stream")
    sink.put_bytes("k/x.bin", b"second", "application/octet-stream")
    assert sink.get_bytes("k/x.bin") == b"second"


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "..", "a\\b", "./a", "a/."])
def test_unsafe_keys_are_refused(sink, key):
    with pytest.raises(ValueError):
        sink.put_bytes(key, b"x", "text/plain")
    with pytest.raises(ValueError):
        check_key(key)


def test_s3_object_has_content_type_metadata_and_md5_etag(s3_env, s3_client):
    sink = open_sink(f"s3://{s3_env}/pre/fix/")
    assert sink.root == f"s3://{s3_env}/pre/fix"
    uri = sink.put_bytes("images/x.png", PNG, "image/png", {"job_id": "job-1", "prompt": "café"})
    assert uri == f"s3://{s3_env}/pre/fix/images/x.png"
    head = s3_client.head_object(Bucket=s3_env, Key="pre/fix/images/x.png")
    assert head["ContentType"] == "image/png"
    assert head["Metadata"]["job_id"] == "job-1"
    assert head["Metadata"]["prompt"] == "caf%C3%A9"
    assert head["ETag"].strip('"') == hashlib.md5(PNG).hexdigest()


def test_s3_presigned_url_serves_the_object_over_http(s3_env):
    sink = open_sink(f"s3://{s3_env}/p")
    sink.put_bytes("inputs/a.png", PNG, "image/png")
    url = sink.url_for_reading("inputs/a.png", expires_s=600)
    assert url.startswith("http://127.0.0.1:") and "X-Amz-Expires=600" in url
    answer = httpx.get(url, timeout=5)
    assert answer.status_code == 200 and answer.content == PNG
    with pytest.raises(ValueError):
        sink.url_for_reading("inputs/a.png", expires_s=0)


def test_s3_endpoint_comes_from_the_standard_environment(s3_env, s3_server):
    sink = open_sink(f"s3://{s3_env}")
    assert sink.folder is None and sink.local_path("top.txt") is None
    assert sink.client.meta.endpoint_url == s3_server
    assert sink.root == f"s3://{s3_env}"
    sink.put_bytes("top.txt", b"hi", "text/plain")
    assert list(sink.list_keys("")) == ["top.txt"]


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    sink = LocalSink(tmp_path / "out")
    seen_partial = []
    stop = threading.Event()
    big_a, big_b = b"a" * 2_000_000, b"b" * 2_000_000
    sink.put_bytes("img/x.webp", big_a, "image/webp")

    def read_constantly():
        while not stop.is_set():
            data = sink.get_bytes("img/x.webp")
            if data not in (big_a, big_b):
                seen_partial.append(len(data))

    reader = threading.Thread(target=read_constantly)
    reader.start()
    try:
        for round_ in range(20):
            sink.put_bytes("img/x.webp", big_b if round_ % 2 else big_a, "image/webp")
    finally:
        stop.set()
        reader.join()
    assert seen_partial == []
    assert os.listdir(tmp_path / "out" / "img") == ["x.webp"]


def test_local_sink_urls_and_append(tmp_path):
    sink = open_sink(f"file://{tmp_path}/o")
    assert sink.folder == tmp_path / "o" and sink.root == str(tmp_path / "o")
    sink.put_bytes("a/b.png", PNG, "image/png")
    assert sink.url_for_reading("a/b.png") == (tmp_path / "o" / "a" / "b.png").as_uri()
    assert sink.presigned_url("a/b.png") is None  # no other machine can fetch a file:// URL
    log = sink.line_log("j/w0.jsonl")
    assert log is not None and not (tmp_path / "o" / "j").exists()  # opened on the first write only
    log.write(b"one\n")
    log.write(b"two\n")
    log.sync()
    assert sink.get_bytes("j/w0.jsonl") == b"one\ntwo\n"
    log.close()


def test_each_sink_says_what_it_can_do(sink, tmp_path):
    local = sink.folder is not None
    assert (sink.local_path("a/b.png") is not None) == local
    assert (sink.line_log("j/w0.jsonl") is not None) == local
    sink.put_bytes("a/b.png", PNG, "image/png")
    url = sink.presigned_url("a/b.png", expires_s=600)
    assert (url is None) == local
    if url is not None:
        assert httpx.get(url, timeout=5).content == PNG
    assert sink.size("a/b.png") == len(PNG) and sink.size("a/none.png") is None
    finished = tmp_path / "finished.tar"
    finished.write_bytes(b"shard")
    sink.put_file(finished, "export/s-0.tar", "application/x-tar")
    assert sink.get_bytes("export/s-0.tar") == b"shard"


def test_conditional_writes_let_exactly_one_writer_win(sink):
    writes = sink.conditional_writes()
    assert writes.read("lease/x.json") is None
    first = writes.create("lease/x.json", b"one")
    assert first is not None and writes.create("lease/x.json", b"two") is None
    assert writes.read("lease/x.json") == (b"one", first)
    second = writes.replace("lease/x.json", b"three", first)
    assert second is not None and writes.replace("lease/x.json", b"four", first) is None
    writes.delete("lease/x.json", first)  # a stale version deletes nothing
    assert writes.read("lease/x.json") == (b"three", second)
    writes.delete("lease/x.json", second)
    assert writes.read("lease/x.json") is None


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_local_files_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        sink = LocalSink(tmp_path / "out")
        sink.put_bytes("images/m/s/a.png", PNG, "image/png")
        log = sink.line_log("journal/w/records.jsonl")
        assert log is not None
        log.write(b"{}\n")
        log.close()
        sink.conditional_writes().create("lease/x.json", b"{}")
    finally:
        os.umask(previous)
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert len(files) == 4  # the image, the journal, the lease and its lock file
    assert {path.name: path.stat().st_mode & 0o777 for path in files} == {path.name: mode for path in files}


def test_no_caller_asks_for_a_sinks_class():
    # Each backend says what it can do (`Sink`); code that branches on a sink's class breaks that.
    root = Path(__file__).resolve().parents[1]
    sinks = root / "src" / "promptgrid" / "output" / "sinks"
    found = []
    for path in [*(root / "src").rglob("*.py"), *(root / "tests").rglob("*.py")]:
        if sinks in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
                classes = ast.unparse(node.args[1]) if len(node.args) > 1 else ""
                if re.search(r"\w*Sink\b", classes):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


@pytest.mark.parametrize(
    "output", ["s3://", "s3:///prefix", "s3://A_B/x", "s3://ok-bucket/../up", "gs://bucket/x", "  "]
)
def test_bad_outputs_are_invalid_input(output):
    with pytest.raises(InvalidInput):
        open_sink(output)


def test_image_key_is_safe_for_any_prompt_and_stable():
    hostile = "../../etc/passwd \x00 Ünïcödé <script> 日本語 " + "long " * 50
    key = image_key(make_job(prompt=hostile, job_id="../evil/id"), "jpeg")
    assert key == image_key(make_job(prompt=hostile, job_id="../evil/id"), "jpg")
    check_key(key)
    prefix, model, slug, name = key.split("/")
    assert (prefix, model) == ("images", "stable-diffusion-3-5-large")
    assert slug.startswith("etc-passwd-unicode-script-long") and len(slug) <= 48
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert name == "evil-id.jpg"


def test_image_key_layout_and_fallbacks():
    assert image_key(make_job(), "webp") == "images/stable-diffusion-3-5-large/a-red-fox/0123abcd.webp"
    assert image_key(make_job(prompt="日本語"), "png").split("/")[2] == "prompt"
    assert slugify("  --A  b--  ") == "a-b"
    assert safe_token("..") == "x"
    assert manifest_part_key("run 1", "w/0", 7) == "manifest/part-run-1-w-0-000007.parquet"
    assert image_key(make_job(), "gif").endswith("/0123abcd.gif")  # a paid image keeps its real format
    with pytest.raises(ValueError):
        image_key(make_job(), "../x")


def test_the_s3_specific_endpoint_variable_wins(s3_env, s3_server, monkeypatch):
    # botocore's service-specific variable overrides the general one, as the AWS SDKs document.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
    sink = open_sink(f"s3://{s3_env}/x")
    sink.put_bytes("a.txt", b"ok", "text/plain")
    assert sink.get_bytes("a.txt") == b"ok" and sink.client.meta.endpoint_url == s3_server
