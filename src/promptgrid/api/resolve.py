"""Model resolution, before the first create: which slug the API knows for each model, and the schema the
model's inputs are checked against.

For each model the spec names, the model endpoint (`GET /v1/model?slug=...`) is asked for the slug as
written, then for its other spelling (dotted <-> dashed); the first the API knows is the one sent. Where the
endpoint does not answer usefully (5xx, no such path, no usable `request_schema`), the model's OpenAPI
document (`GET /v1/models/{slug}/schemas/openapi`) is tried; where that fails too, the run falls back to a
cached copy or the built-in table, and says so. An API that cannot be reached at all is not fallen back
from: ApiUnreachable stops the run with the URL and the error. A 401 stops it too (the key is refused).

What the API answered is written to the user cache, for offline dry runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jsonschema

from promptgrid.api.client import ApiClient
from promptgrid.api.gateway import Gateway, ReadRetry, RequestBudget, Unmetered
from promptgrid.errors import (
    ApiError,
    ApiUnreachable,
    AuthenticationFailed,
    InvalidInput,
    ModelNotFound,
    TransportFailure,
)
from promptgrid.models.catalog import ModelCatalog
from promptgrid.models.openapi import input_schema_from_openapi
from promptgrid.models.records import ModelRecord, UserCache
from promptgrid.models.slugs import canonical_slug, spellings
from promptgrid.settings import read_api_settings

# Where a model's schema comes from when the API's endpoints cannot say: each is asked the slug as written.
Fallback = Callable[[str], ModelRecord | None]
# Each endpoint is asked once more after a 5xx, and while 429s answer it up to this many times in all.
TRIES = 2
THROTTLED_TRIES = 4


@dataclass
class Resolution:
    """What resolution found: a record per model (by promptgrid's name), why a model is missing, and a
    sentence per model saying what was asked and what is sent."""

    models: dict[str, ModelRecord] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def catalog(self) -> ModelCatalog:
        return ModelCatalog([record.schema() for record in self.models.values()], self.missing)

    def slugs(self) -> dict[str, str]:
        """promptgrid's name of each model -> the slug its creates are sent with."""
        return {model: record.slug for model, record in self.models.items()}

    def to_json(self) -> dict[str, Any]:
        records = [record.to_json() for record in self.models.values()]
        return {"models": records, "missing": dict(self.missing), "notes": list(self.notes)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Resolution:
        records = [ModelRecord.from_json(item) for item in data.get("models") or []]
        return cls(
            {r.model: r for r in records}, dict(data.get("missing") or {}), list(data.get("notes") or [])
        )


@dataclass(frozen=True)
class Answer:
    """What the API said of one spelling: found (with a schema), not found, or nothing useful (`reason`)."""

    schema: dict[str, Any] | None = None
    source: str = ""
    not_found: bool = False
    reason: str = ""


class ModelEndpoints:
    """Asks the API's two model endpoints about one slug at a time, through the gateway (reads: retried)."""

    def __init__(self, gateway: Gateway, *, retry_s: float = 1.0):
        self.gateway = gateway
        self.retry = ReadRetry(TRIES, THROTTLED_TRIES, base_s=retry_s, cap_s=max(retry_s, 30.0))
        self.down: dict[str, str] = {}  # endpoint -> why it is no use, once seen (not asked again)

    async def ask(self, slug: str) -> Answer:
        """The model endpoint's answer; the OpenAPI document's when that one is of no use or says 404 (an
        API that dropped the deprecated endpoint may answer 404 for the path itself)."""
        first = await self._ask_endpoint("model", slug, self.gateway.model)
        if first.schema is not None:
            return first
        second = await self._ask_endpoint("openapi", slug, self.gateway.model_openapi)
        if second.schema is not None:
            return second
        if first.not_found or second.not_found:
            return Answer(not_found=True)
        return Answer(reason="; ".join(self.down.values()))

    async def _ask_endpoint(
        self, name: str, slug: str, call: Callable[[str, ReadRetry], Awaitable[dict[str, Any]]]
    ) -> Answer:
        if name in self.down:
            return Answer()
        path = "/v1/model?slug=" + slug if name == "model" else f"/v1/models/{slug}/schemas/openapi"
        try:
            body = await self._get(call, slug)
        except ModelNotFound:
            return Answer(not_found=True)
        except (AuthenticationFailed, ApiUnreachable):
            raise
        except ApiError as exc:
            self.down[name] = f"GET {path.split('?')[0]} answered {_briefly(exc)}"
            return Answer()
        schema = body.get("request_schema") if name == "model" else input_schema_from_openapi(body)
        problem = _schema_problem(schema)
        if problem:
            self.down[name] = f"GET {path.split('?')[0]} gave {problem}"
            return Answer()
        assert isinstance(schema, dict)
        return Answer(schema=schema, source=f"GET {path}")

    async def _get(
        self, call: Callable[[str, ReadRetry], Awaitable[dict[str, Any]]], slug: str
    ) -> dict[str, Any]:
        """One endpoint's answer (429s and 5xx tried again by the gateway); no API at all is fatal."""
        try:
            return await call(slug, self.retry)
        except TransportFailure as exc:
            if not exc.sent:  # nothing reached the API at all: falling back would hide it
                raise ApiUnreachable(self.gateway.base_url, exc.message) from None
            raise


def _briefly(exc: ApiError) -> str:
    return f"HTTP {exc.status_code}" if exc.status_code else exc.message


def _schema_problem(schema: Any) -> str | None:
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return "no usable request schema"
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(
            schema
        )
    except jsonschema.SchemaError as exc:
        return f"a request schema that is not valid JSON Schema ({exc.message})"
    return None


def _quoted(slugs: Iterable[str]) -> str:
    return " nor ".join(repr(slug) for slug in slugs)


async def resolve_models(
    gateway: Gateway,
    written: Sequence[str],
    *,
    fallbacks: Sequence[Fallback] = (),
    cache: UserCache | None = None,
    retry_s: float = 1.0,
) -> Resolution:
    """Resolve every model named in `written` (slugs as the spec spells them), each once."""
    endpoints = ModelEndpoints(gateway, retry_s=retry_s)
    resolution = Resolution()
    for slug in dict.fromkeys(canonical_slug(s) for s in written):
        as_written = next(s for s in written if canonical_slug(s) == slug)
        record, note = await _resolve_one(endpoints, as_written, fallbacks)
        if record is None:
            resolution.missing[slug] = note
            continue
        resolution.models[slug] = record
        resolution.notes.append(note)
        if cache is not None and record.fetched_at is not None:
            cache.save(record)
    return resolution


async def _resolve_one(
    endpoints: ModelEndpoints, written: str, fallbacks: Sequence[Fallback]
) -> tuple[ModelRecord | None, str]:
    model, base = canonical_slug(written), endpoints.gateway.base_url
    refused: list[str] = []
    for spelling in spellings(written):
        answer = await endpoints.ask(spelling)
        if answer.schema is not None:
            now = datetime.now(UTC).isoformat(timespec="seconds")
            record = ModelRecord(model, spelling, answer.schema, answer.source, now, base)
            known = f"the API knows it as {spelling!r}" + (
                "" if spelling == written else f", not {written!r}"
            )
            return record, f"{model}: {known}; inputs checked against {answer.source}"
        if not answer.not_found:
            break
        refused.append(spelling)
    else:
        return None, f"the API at {base} knows neither {_quoted(refused)} (its model endpoints answered 404)"
    why = "; ".join(endpoints.down.values()) or "no answer"
    for fallback in fallbacks:
        fallen_back = fallback(written)
        if fallen_back is not None:
            return fallen_back, (
                f"{model}: the model endpoint is unavailable ({why}); inputs checked against "
                f"{fallen_back.source}, creates sent as {fallen_back.slug!r}"
            )
    return None, (
        f"the model endpoint at {base} is unavailable ({why}) and no schema of {written!r} is cached or "
        f"built in; try again once it answers (`promptgrid models show {written}` caches it)"
    )


async def resolve_for_run(
    base_url: str,
    written: Sequence[str],
    fallbacks: Sequence[Fallback],
    *,
    retry_s: float = 1.0,
    budget: RequestBudget | None = None,
) -> Resolution:
    """Resolve with a short-lived client for `base_url` and the key in the environment (exit 2 without one),
    its requests through `budget` (the run's, when it has one); what the API answered is written to the
    user cache."""
    settings = read_api_settings(base_url)
    if settings.api_key is None:
        raise InvalidInput(["EACHLABS_API_KEY is not set: export your Eachlabs API key (or use --sandbox)"])
    async with ApiClient(settings.base_url, settings.api_key) as client:
        gateway = Gateway(client, budget or Unmetered())
        cache = UserCache(settings.base_url)
        return await resolve_models(gateway, written, fallbacks=fallbacks, cache=cache, retry_s=retry_s)
