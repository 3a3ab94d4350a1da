"""Input images for image-to-image: a grid's `image` reference turned into a URL the API can fetch.

- `https://…` (or `http://…`) is sent as is;
- `s3://bucket/key` is sent as a presigned GET URL with a bounded lifetime (1 h by default);
- a local path (or `file://` URI) is copied, named by its content, to the output's staging area
  `OUTPUT/inputs/<sha256>.<ext>`; with an S3 output it is sent presigned, with a local output it is
  served by `InputServer`, a small HTTP server on loopback (only an API on this machine, the sandbox,
  can fetch it);
- anything else is refused with `InvalidInput`.

A presigned URL changes on every call, so job identity must use `InputImages.identity(ref)` (stable across
runs), and the fetchable URL should be made close to the create that sends it.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from promptgrid.errors import InvalidInput
from promptgrid.models.catalog import CONTENT_TYPES
from promptgrid.output.keys import INPUTS_PREFIX, input_key
from promptgrid.output.sinks.base import Sink
from promptgrid.output.sinks.s3 import S3Client, make_s3_client, parse_s3_uri, presign_get

MAX_INPUT_BYTES = 50 * 1024 * 1024  # far above any photo a 1 MP model needs; stops a stray video file
DEFAULT_EXPIRES_S = 3600
_STAGED_NAME = re.compile(r"^[0-9a-f]{64}\.(png|jpg|webp)$")


def sniff_image_format(data: bytes) -> str | None:
    """`png`, `jpg` or `webp` from the file's first bytes (extensions lie); None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def classify_image_ref(ref: str) -> str:
    """`url`, `s3` or `path`; InvalidInput for an empty reference or an unsupported scheme."""
    text = str(ref).strip() if ref is not None else ""
    if not text:
        raise InvalidInput(["image: the reference is empty"])
    scheme = urllib.parse.urlsplit(text).scheme.lower()
    if scheme in ("http", "https"):
        if not urllib.parse.urlsplit(text).hostname:
            raise InvalidInput([f"image {text!r}: the URL has no host"])
        return "url"
    if scheme == "s3":
        return "s3"
    if scheme in ("", "file") or re.match(r"^[A-Za-z]:[\\/]", text):
        return "path"
    raise InvalidInput([f"image {text!r}: expected an https URL, an s3:// URI or a local file path"])


class InputServer:
    """Serves a local output's staged inputs (`inputs/<sha256>.<ext>` only) over HTTP on loopback."""

    def __init__(self, sink: Sink, host: str = "127.0.0.1", port: int = 0):
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            raise ValueError(f"the input server listens on loopback only, not {host!r}")
        if sink.folder is None:
            raise ValueError(f"the input server serves a local output's inputs, not {sink.root}")
        self.folder = sink.folder / INPUTS_PREFIX.rstrip("/")
        self._address = (host, port)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    def __enter__(self) -> InputServer:
        self._server = ThreadingHTTPServer(self._address, _handler_for(self.folder))
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET or AF_INET6 address, never a Unix socket's bytes
        self.base_url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="input-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            assert self._thread is not None  # started in __enter__ along with the server
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def url_for(self, key: str) -> str:
        if self._server is None:
            raise RuntimeError("the input server is not running; use it as a context manager")
        return f"{self.base_url}/{key}"


def _handler_for(folder: Path) -> type[BaseHTTPRequestHandler]:
    class StagedInputHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer(with_body=True)

        def do_HEAD(self) -> None:
            self._answer(with_body=False)

        def _answer(self, *, with_body: bool) -> None:
            path = urllib.parse.urlsplit(self.path).path
            name = path[len("/" + INPUTS_PREFIX) :] if path.startswith("/" + INPUTS_PREFIX) else ""
            file = folder / name
            if not _STAGED_NAME.match(name) or not file.is_file():
                self.send_error(404)
                return
            data = file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPES[name.rsplit(".", 1)[1]])
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if with_body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per fetch is noise in a run's output

    return StagedInputHandler


class InputImages:
    """Turns a run's image references into fetchable URLs, staging each local file once.

    Presigned URLs are reused until half their lifetime has passed, so a long run never sends one that
    expires while the API is still fetching it.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        base_dir: str | Path = ".",
        expires_s: int = DEFAULT_EXPIRES_S,
        server: InputServer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.sink, self.base_dir, self.expires_s = sink, Path(base_dir), expires_s
        self.server, self.clock = server, clock
        self._staged: dict[Path, str] = {}
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()
        self._s3_client: S3Client | None = None

    def identity(self, ref: str) -> str:
        """What names this image across runs: the URL, the s3:// URI, or the staged key of a local file."""
        kind = classify_image_ref(ref)
        return self.stage(ref) if kind == "path" else str(ref).strip()

    def url_for(self, ref: str) -> str:
        """A URL the API can fetch now, for any supported reference."""
        kind = classify_image_ref(ref)
        text = str(ref).strip()
        if kind == "url":
            return text
        if kind == "s3":
            return self._cached(text, lambda: self._presign_s3_uri(text))
        key = self.stage(text)
        if self.server is not None:
            return self.server.url_for(key)
        return self._cached(key, lambda: self._presign(key, text))

    def stage(self, ref: str) -> str:
        """Copy a local image into `inputs/<sha256>.<ext>` (once per content) and return that key."""
        path = self._local_path(ref)
        with self._lock:
            if path in self._staged:
                return self._staged[path]
        data = _read_image_file(path, ref)
        image_format = sniff_image_format(data)
        assert image_format is not None  # _read_image_file refuses anything but jpeg, png or webp
        key = input_key(hashlib.sha256(data).hexdigest(), image_format)
        if not self.sink.exists(key):
            self.sink.put_bytes(key, data, CONTENT_TYPES[key.rsplit(".", 1)[1]], {"source": path.name})
        with self._lock:
            self._staged[path] = key
        return key

    def _local_path(self, ref: str) -> Path:
        text = str(ref).strip()
        if text.lower().startswith("file://"):
            text = urllib.parse.unquote(urllib.parse.urlsplit(text).path)
        path = Path(text).expanduser()
        return (path if path.is_absolute() else self.base_dir / path).resolve()

    def _cached(self, name: str, make: Callable[[], str]) -> str:
        now = self.clock()
        with self._lock:
            known = self._urls.get(name)
            if known is not None and now - known[1] < self.expires_s / 2:
                return known[0]
        url = make()
        with self._lock:
            self._urls[name] = (url, now)
        return url

    def _presign(self, key: str, ref: str) -> str:
        url = self.sink.presigned_url(key, self.expires_s)
        if url is None:  # a local output with no loopback server: no URL reaches the API
            raise InvalidInput([f"image {ref!r}: a local output serves local images only while running"])
        return url

    def _presign_s3_uri(self, uri: str) -> str:
        try:
            bucket, key = parse_s3_uri(uri)
        except InvalidInput:
            raise InvalidInput([f"image {uri!r}: expected s3://BUCKET/KEY"]) from None
        if not key:
            raise InvalidInput([f"image {uri!r}: the URI names a bucket but no object"])
        if self._s3_client is None:
            self._s3_client = getattr(self.sink, "client", None) or make_s3_client()
        return presign_get(self._s3_client, bucket, key, self.expires_s)


def _read_image_file(path: Path, ref: str) -> bytes:
    if not path.is_file():
        raise InvalidInput([f"image {ref!r}: no such file ({path})"])
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise InvalidInput([f"image {ref!r}: larger than {MAX_INPUT_BYTES // 2**20} MiB"])
    data = path.read_bytes()
    if sniff_image_format(data) is None:
        raise InvalidInput([f"image {ref!r}: not a jpeg, png or webp file"])
    return data
