"""The async client for the prediction API: one request per call, answers parsed, failures translated.

The client sends exactly one HTTP request per call and never retries: retrying safely depends on the request
budget and on what kind of call failed, which the engine decides. Every foreign failure is translated here,
in `_send`, into the ApiError tree of `promptgrid.errors`.

The API key goes into the auth headers and nowhere else: not in reprs, messages or logs, and any text the
server sends back is scrubbed of it before it lands in an exception. It is sent both as `Authorization:
Bearer` (the only form the docs show since mid-2026) and as `X-API-Key` (what older deployments read).

Every request has an overall deadline (`deadline_s`) besides httpx's per-phase timeouts, so a server that
drips its answer a byte at a time cannot hold a call for ever. A create tells its caller the moment its
first byte is about to leave (`before_send`): through httpcore's trace extension on the default transport,
so a create that never got a connection is never announced as sent.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypedDict
from urllib.parse import quote

import httpx

from promptgrid.api.executions import MAX_PAGE, ExecutionsPage, format_time, parse_executions
from promptgrid.api.prediction import Prediction, clip, parse_prediction
from promptgrid.defaults import REQUEST_DEADLINE_S
from promptgrid.errors import (
    ApiError,
    AuthenticationFailed,
    InputRejected,
    ModelNotFound,
    PaymentRequired,
    PredictionNotFound,
    ServerFailure,
    Throttled,
    TransportFailure,
    UnexpectedAnswer,
)
from promptgrid.redact import scrub
from promptgrid.settings import ApiKey, read_api_settings

DEFAULT_TIMEOUTS = httpx.Timeout(connect=10.0, read=60.0, write=30.0, pool=60.0)


# Exceptions httpx raises before any byte of the request reached the server.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)
_BY_STATUS: dict[int, type[ApiError]] = {
    400: InputRejected,
    401: AuthenticationFailed,
    402: PaymentRequired,
    403: AuthenticationFailed,
    422: InputRejected,
}


# The documented refusal is 500 {"error": "Failed to create prediction"} (503: the service is unavailable).
# Nothing in the docs says it created nothing, and other clients treat a 5xx on a write as an unknown
# outcome; a 502/504 without the API's JSON error came from a gateway that may have lost the API's answer.
REFUSED_STATUSES = frozenset({500, 503})


def created_nothing(exc: ApiError) -> bool:
    """Whether a failed create provably created nothing, so that sending it again cannot bill twice: it
    never left, or a 429 refused it. A 5xx is not proof (see `says_refused`)."""
    if isinstance(exc, TransportFailure):
        return not exc.sent
    return isinstance(exc, Throttled)


def says_refused(exc: ApiError) -> bool:
    """Whether a failed create's answer is the API's own documented refusal (500/503 with its JSON error):
    the best there is where no listing can settle it."""
    return isinstance(exc, ServerFailure) and exc.status_code in REFUSED_STATUSES and exc.api_answered


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


class _Departure:
    """Runs a hook once, just before a request's first byte leaves; `left` says whether it got that far."""

    def __init__(self, hook: Callable[[], Awaitable[None]] | None):
        self.hook, self.left = hook, False

    async def leave(self) -> None:
        if not self.left:
            if self.hook is not None:
                await self.hook()
            self.left = True

    async def trace(self, event: str, info: Mapping[str, Any]) -> None:
        # httpcore's trace events: "http11.send_request_headers.started" (or http2's) is the last moment
        # before the request reaches the socket; connecting, TLS and waiting for the pool come before it.
        if event.endswith("send_request_headers.started"):
            await self.leave()


class _SharedOptions(TypedDict):
    """What the API client and the storage client have in common."""

    transport: httpx.AsyncBaseTransport | None
    timeout: httpx.Timeout
    limits: httpx.Limits


class ApiClient:
    """The prediction API over one long-lived httpx client; use as `async with ApiClient(...) as client`.

    `storage` is a second client on the same transport, without the key, for downloading outputs from
    hosted storage: the key must never travel to another host.
    """

    def __init__(
        self,
        base_url: str,
        api_key: ApiKey,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeouts: httpx.Timeout = DEFAULT_TIMEOUTS,
        limits: httpx.Limits | None = None,
        deadline_s: float = REQUEST_DEADLINE_S,
    ):
        if not isinstance(api_key, ApiKey):
            raise TypeError("api_key must be a promptgrid.settings.ApiKey")
        self.base_url = base_url.rstrip("/")
        self.deadline_s = deadline_s
        self._key = api_key
        # Only httpcore (behind httpx's own transport) reports when a request starts to leave.
        self._traced = transport is None or isinstance(transport, httpx.AsyncHTTPTransport)
        pool = limits or httpx.Limits(max_connections=64, max_keepalive_connections=32)
        common: _SharedOptions = {"transport": transport, "timeout": timeouts, "limits": pool}
        headers = {"Authorization": f"Bearer {api_key.reveal()}", "X-API-Key": api_key.reveal()}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, follow_redirects=False, **common
        )
        self.storage = httpx.AsyncClient(follow_redirects=True, **common)

    @classmethod
    def from_environment(cls, base_url: str | None = None, **options: Any) -> ApiClient:
        """A client for EACHLABS_API_BASE (or `base_url`) with EACHLABS_API_KEY."""
        settings = read_api_settings(base_url)
        if settings.api_key is None:
            raise AuthenticationFailed("no API key: set EACHLABS_API_KEY")
        return cls(settings.base_url, settings.api_key, **options)

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self.storage.aclose()

    async def create(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, Any],
        *,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> str:
        """Start a prediction; return its id. Sends real JSON numbers, never strings.

        `model` is sent exactly as given: the slug the API knows. A 404 from the API is ModelNotFound.
        `before_send` is awaited once, right before the request's first byte leaves; if the request fails
        before that (no connection), it is never called and the failure says the request was not sent.
        """
        payload = {"model": model, "version": version, "input": dict(inputs)}
        departure = _Departure(before_send)
        body = await self._send(
            "POST", "/v1/prediction/", json=payload, not_found=ModelNotFound, departure=departure
        )
        prediction_id = body.get("predictionID") or body.get("prediction_id") or body.get("id")
        if not isinstance(prediction_id, str) or not prediction_id:
            # The server answered 2xx: something may have been created, but we cannot name it.
            raise UnexpectedAnswer("create answered without a predictionID", status_code=200)
        return prediction_id

    async def get(self, prediction_id: str) -> Prediction:
        body = await self._send("GET", f"/v1/prediction/{prediction_id}", prediction_id=prediction_id)
        return parse_prediction(prediction_id, body)

    async def model(self, slug: str) -> dict[str, Any]:
        """The model endpoint's details of `slug` (its `request_schema` among them); ModelNotFound on 404."""
        return await self._send("GET", "/v1/model", params={"slug": slug}, not_found=ModelNotFound)

    async def model_openapi(self, slug: str) -> dict[str, Any]:
        """The OpenAPI document the API publishes for one model; ModelNotFound on the API's 404."""
        path = f"/v1/models/{quote(slug, safe='')}/schemas/openapi"
        return await self._send("GET", path, not_found=ModelNotFound)

    async def cancel(self, prediction_id: str) -> None:
        """Ask the API to stop a prediction (best effort on its side)."""
        await self._send("POST", f"/v1/prediction/{prediction_id}/cancel", prediction_id=prediction_id)

    async def list_executions(
        self,
        *,
        model: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = MAX_PAGE,
        offset: int = 0,
    ) -> ExecutionsPage:
        """One page of the account's executions, newest first (the whole organisation's, best effort)."""
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if model:
            params["model"] = model
        if since is not None:
            params["from"] = format_time(since)
        if until is not None:
            params["to"] = format_time(until)
        return parse_executions(await self._send("GET", "/v1/executions", params=params))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        prediction_id: str | None = None,
        not_found: type[ApiError] = PredictionNotFound,
        departure: _Departure | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        what = f"{method} {path}"
        if departure is not None:
            if self._traced:
                kwargs["extensions"] = {"trace": departure.trace}
            else:
                await departure.leave()
        try:
            async with asyncio.timeout(self.deadline_s):
                response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            sent = not isinstance(exc, _NEVER_SENT) and (departure is None or departure.left)
            detail = self._scrub(str(exc)) or type(exc).__name__
            raise TransportFailure(
                f"{what}: {type(exc).__name__}: {detail}", sent=sent, prediction_id=prediction_id
            ) from None
        except TimeoutError:
            raise TransportFailure(
                f"{what}: no complete answer within {self.deadline_s:g} s",
                sent=departure is None or departure.left,
                prediction_id=prediction_id,
            ) from None
        context = {
            "prediction_id": prediction_id,
            "status_code": response.status_code,
            "request_id": response.headers.get("x-request-id"),
        }
        if response.is_success:
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise UnexpectedAnswer(f"{what}: answer is not a JSON object", **context)
            return body
        text, from_api = _error_text(response)
        message = f"{what}: HTTP {response.status_code}: {self._scrub(text)}"
        if response.status_code == 429:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise Throttled(message, retry_after_s=retry_after, **context)
        if response.status_code >= 500:
            raise ServerFailure(message, api_answered=from_api, **context)
        if response.status_code == 404:
            # Only the API's own JSON error says a model is missing; a bare 404 page may mean the path is not
            # served at all (an API without the model endpoint).
            missing = not_found if from_api or not_found is PredictionNotFound else UnexpectedAnswer
            raise missing(message, **context)
        raise _BY_STATUS.get(response.status_code, UnexpectedAnswer)(message, **context)

    def _scrub(self, text: str) -> str:
        return clip(scrub(text.replace(self._key.reveal(), "***")))  # every spelling, before a cut


def _error_text(response: httpx.Response) -> tuple[str, bool]:
    """The error's text, and whether it is the API's own JSON error object."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip(), False
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("error", "message", "details") if body.get(k)]
        return "; ".join(parts) or str(body), "error" in body
    return str(body), False
