"""The sandbox's HTTP face: routes, dropped connections, request ids, and running it in-process or as a CLI.

Usage from tests:

    with running_sandbox(SandboxConfig(time_scale=10.0)) as sb:
        sb.url      # the API base URL; clients append /v1/prediction/
        sb.stats()  # the same JSON as GET /sandbox/stats
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptgrid.aio import wait_event
from promptgrid.models.catalog import CONTENT_TYPES
from promptgrid.sandbox.config import SandboxConfig, system_clock
from promptgrid.sandbox.leaks import echo_key
from promptgrid.sandbox.models import find_model, model_detail, openapi_document
from promptgrid.sandbox.replies import Reply
from promptgrid.sandbox.service import SandboxService, key_owner, presented_key

__all__ = ["SandboxConfig", "RunningSandbox", "create_app", "running_sandbox", "serve_forever"]

_DROP = "sandbox.drop_connection"
_STARTUP_TIMEOUT_S = 10.0

_T = TypeVar("_T")


async def _respond(request: Request, reply: Reply) -> Response:
    if reply.hold_s:
        await asyncio.sleep(reply.hold_s)  # a lost answer: the client gives up first, or the drop comes
    if reply.drop:
        # The wrapper below sees the flag when the response starts and closes the socket instead.
        request.scope[_DROP] = True
        return Response(status_code=200)
    return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)


async def _drip(data: bytes, config: SandboxConfig) -> AsyncIterator[bytes]:
    """A slow output host: one byte, then a pause, until the image is sent (or the client gives up)."""
    for index in range(len(data)):
        yield data[index : index + 1]
        await asyncio.sleep(config.scaled(config.output_drip_s))


def _unauthorised() -> Response:
    return JSONResponse({"error": "Invalid or missing API key"}, status_code=401)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _describe_model(service: SandboxService, request: Request, endpoint: str, slug: str) -> Response:
    """The model endpoints: 503 when switched off, 400 without a slug, 404 for a spelling not known."""
    service.counters.requests[endpoint] += 1
    config = service.config
    if key_owner(request.headers, config.api_key, config.bearer_only) is None:
        return _unauthorised()
    if endpoint not in config.model_endpoints:
        return JSONResponse({"error": "Service temporarily unavailable"}, status_code=503)
    if not slug:
        return JSONResponse({"error": "slug parameter is required"}, status_code=400)
    model = find_model(slug, config.slug_spelling)
    if model is None:
        return JSONResponse({"error": "Failed to fetch model: model not found"}, status_code=404)
    body = model_detail(model, slug) if endpoint == "model" else openapi_document(model, slug)
    return JSONResponse(body)


def _routes(service: SandboxService) -> list[Route]:
    def owner_of(request: Request) -> str | None:
        return key_owner(request.headers, service.config.api_key, service.config.bearer_only)

    async def model(request: Request) -> Response:
        return _describe_model(service, request, "model", request.query_params.get("slug", "").strip())

    async def model_openapi(request: Request) -> Response:
        return _describe_model(service, request, "openapi", request.path_params["slug"])

    async def answer(request: Request, reply: Reply) -> Response:
        if service.config.echo_key:
            reply = echo_key(reply, presented_key(request.headers, service.config.bearer_only))
        return await _respond(request, reply)

    async def create(request: Request) -> Response:
        service.counters.requests["create"] += 1
        body = await request.body()
        owner = owner_of(request)
        if owner is None:
            return _unauthorised()
        return await answer(request, service.create(owner, body))

    async def get(request: Request) -> Response:
        service.counters.requests["get"] += 1
        owner = owner_of(request)
        if owner is None:
            return _unauthorised()
        reply = service.get(owner, request.path_params["prediction_id"], _base_url(request))
        return await answer(request, reply)

    async def cancel(request: Request) -> Response:
        service.counters.requests["cancel"] += 1
        owner = owner_of(request)
        if owner is None:
            return _unauthorised()
        return await answer(request, service.cancel(owner, request.path_params["prediction_id"]))

    async def executions(request: Request) -> Response:
        service.counters.requests["executions"] += 1
        owner = owner_of(request)
        if owner is None:
            return _unauthorised()
        return await answer(request, service.executions(owner, request.query_params, _base_url(request)))

    async def output(request: Request) -> Response:
        service.counters.requests["output"] += 1
        status, content, fmt = await service.output(request.path_params["name"])
        if status != 200:
            return JSONResponse(content, status_code=status)
        headers = {"Cache-Control": "no-store"}
        if service.config.output_drip_s > 0:
            assert isinstance(content, bytes)  # a 200 carries the image
            return StreamingResponse(
                _drip(content, service.config), media_type=CONTENT_TYPES[fmt], headers=headers
            )
        return Response(content, media_type=CONTENT_TYPES[fmt], headers=headers)

    async def stats(request: Request) -> Response:
        return JSONResponse(service.stats())

    async def reset(request: Request) -> Response:
        service.reset()
        return JSONResponse(service.stats())

    return [
        Route("/v1/model", model, methods=["GET"]),
        Route("/v1/models/{slug}/schemas/openapi", model_openapi, methods=["GET"]),
        Route("/v1/prediction/", create, methods=["POST"]),
        Route("/v1/prediction", create, methods=["POST"]),
        Route("/v1/prediction/{prediction_id}", get, methods=["GET"]),
        Route("/v1/prediction/{prediction_id}/", get, methods=["GET"]),
        Route("/v1/prediction/{prediction_id}/cancel", cancel, methods=["POST"]),
        Route("/v1/executions", executions, methods=["GET"]),
        Route("/v1/executions/", executions, methods=["GET"]),
        Route("/outputs/{name}", output, methods=["GET"]),
        Route("/sandbox/stats", stats, methods=["GET"]),
        Route("/sandbox/reset", reset, methods=["POST"]),
    ]


class _Wire:
    """Outermost ASGI layer: stamps X-Request-Id on every answer, counts statuses, and drops connections."""

    def __init__(self, app: ASGIApp, service: SandboxService):
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex.encode()
        responses = self.service.counters.responses
        counted = not scope["path"].startswith("/sandbox/")

        async def stamped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if scope.get(_DROP):
                    _close_connection(send)
                    responses["dropped"] += 1
                elif counted:
                    responses[message["status"]] += 1
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id)]}
            await send(message)

        await self.app(scope, receive, stamped_send)


def _close_connection(send: Send) -> None:
    """Close the client's socket before any byte of the answer is written.

    ASGI has no message for this; uvicorn's `send` is a method of the connection's request cycle, which
    holds the transport. What is sent afterwards goes nowhere, and uvicorn logs nothing.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise RuntimeError("this server does not expose its transport; cannot drop the connection")
    transport.close()


def create_app(config: SandboxConfig, clock: Callable[[], float] | None = None) -> tuple[Any, SandboxService]:
    """The ASGI app and the service behind it (the service is how in-process callers read its state)."""
    service = SandboxService(config, clock or system_clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.loop = asyncio.get_running_loop()
        yield
        await service.close()

    app = Starlette(routes=_routes(service), lifespan=lifespan)
    return _Wire(app, service), service


@dataclass
class RunningSandbox:
    """A sandbox serving in a background thread with its own event loop."""

    url: str
    config: SandboxConfig
    service: SandboxService
    loop: asyncio.AbstractEventLoop

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        if self.loop.is_closed():
            raise RuntimeError("the sandbox has stopped; read its stats inside the `with` block")

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def stats(self) -> dict[str, Any]:
        """The counters (the JSON of GET /sandbox/stats), read on the server's loop so they are consistent."""
        return self._on_loop(self.service.stats)

    def reset(self) -> None:
        self._on_loop(self.service.reset)

    def hold_slots(self, count: int) -> None:
        """Let other keys of the organisation occupy `count` in-flight slots from now on."""
        self._on_loop(lambda: self.service.admission.hold_slots(count))


def _bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and without it
    # every answer (headers, then body) waits ~40 ms on the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening before the URL is announced: a client that connects at once waits in the backlog
    # for the server to start instead of being refused.
    sock.listen(2048)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, stopped by an event rather than a flag it checks every 100 ms (tests start many)."""

    async def main_loop(self) -> None:
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        while not self.should_exit:
            await wait_event(self._stop, 1.0)
            self.should_exit = self.should_exit or self._stop.is_set() or await self.on_tick(0)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self.stop()

    def stop(self) -> None:
        self.should_exit = True
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop may close between the check and the call
                loop.call_soon_threadsafe(self._stop.set)


def _server(
    config: SandboxConfig, clock: Callable[[], float] | None, quiet: bool
) -> tuple[_Server, SandboxService]:
    app, service = create_app(config, clock)
    uv_config = uvicorn.Config(
        app,
        lifespan="on",
        loop="asyncio",
        http="h11",
        access_log=False,
        log_config=None if quiet else uvicorn.config.LOGGING_CONFIG,
        log_level="warning",
        timeout_graceful_shutdown=1,
        timeout_keep_alive=30,
    )
    return _Server(uv_config), service


def _url(config: SandboxConfig, sock: socket.socket) -> str:
    host = config.host if ":" not in config.host else f"[{config.host}]"
    return f"http://{host}:{sock.getsockname()[1]}"


@contextlib.contextmanager
def running_sandbox(
    config: SandboxConfig | None = None, *, clock: Callable[[], float] | None = None
) -> Iterator[RunningSandbox]:
    """Serve the sandbox on `config.host:config.port` (0: any free port) until the block ends.

    `clock` replaces the monotonic clock (see sandbox.config.ManualClock). It never touches the caller's
    event loop, so it works from sync and async tests alike.
    """
    config = config or SandboxConfig()
    sock = _bound_socket(config.host, config.port)
    server, service = _server(config, clock, quiet=True)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="sandbox", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox server did not start")
            time.sleep(0.002)  # startup takes a few milliseconds; nothing to wait on but the flag
        assert service.loop is not None  # set by the app's lifespan, which runs before `started`
        yield RunningSandbox(url=_url(config, sock), config=config, service=service, loop=service.loop)
    finally:
        server.stop()
        thread.join(timeout=10)
        sock.close()


def serve_forever(config: SandboxConfig, on_ready: Callable[[str], None]) -> None:
    """Serve in the calling thread until interrupted (Ctrl-C); `on_ready` receives the URL once bound."""
    sock = _bound_socket(config.host, config.port)
    server, _ = _server(config, None, quiet=False)
    on_ready(_url(config, sock))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
