"""Model resolution against the sandbox: the spelling the API knows, Bearer auth, unavailable endpoints and
their fallbacks, an unreachable API, and a create answered 404 during a run."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from promptgrid.api.client import ApiClient
from promptgrid.api.gateway import Gateway, Unmetered
from promptgrid.api.resolve import Resolution, resolve_models
from promptgrid.api.routes import ModelRoutes
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.errors import ApiUnreachable, UnknownModel
from promptgrid.models.check import check_input
from promptgrid.models.records import UserCache, builtin_record
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus
from tests.support.processes import free_port
from tests.support.sandbox import TEST_TIME_SCALE

KEY = ApiKey("sk-resolve-test")
DASHED, DOTTED = "stable-diffusion-3-5-large", "stable-diffusion-3.5-large"


async def resolve(url: str, written: list[str], **options) -> Resolution:
    async with ApiClient(url, KEY) as client:
        return await resolve_models(Gateway(client, Unmetered()), written, retry_s=0.01, **options)


@pytest.mark.parametrize(
    ("spelling", "written", "sent"),
    [("dotted", DASHED, DOTTED), ("dashed", DOTTED, DASHED), ("any", DOTTED, DOTTED)],
)
async def test_the_slug_sent_is_the_spelling_the_api_knows(sandbox_factory, spelling, written, sent):
    sandbox = sandbox_factory(slug_spelling=spelling, bearer_only=True)
    resolution = await resolve(sandbox.url, [written])
    assert resolution.slugs() == {DASHED: sent} and resolution.missing == {}
    record = resolution.models[DASHED]
    assert record.source == f"GET /v1/model?slug={sent}" and record.api == sandbox.url
    assert ("not " + repr(written) in resolution.notes[0]) is (sent != written)
    assert resolution.catalog().get(written).allowed("steps") == "an integer from 1 to 50"
    responses = sandbox.stats()["responses"]
    assert "401" not in responses and sandbox.stats()["requests"]["create"] == 0


async def test_a_bearer_only_api_refuses_the_old_header_alone_and_accepts_the_client(sandbox_factory):
    sandbox = sandbox_factory(bearer_only=True)
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        assert client.get("/v1/model", params={"slug": DASHED}, headers={"X-API-Key": "k"}).status_code == 401
        bearer = client.get("/v1/model", params={"slug": DASHED}, headers={"Authorization": "Bearer k"})
        assert bearer.status_code == 200 and bearer.json()["request_schema"]["required"] == ["prompt"]
    assert (await resolve(sandbox.url, [DASHED])).slugs() == {DASHED: DASHED}


async def test_a_model_the_api_knows_in_no_spelling_is_missing_with_the_reason(sandbox):
    resolution = await resolve(sandbox.url, ["sd-4.0-ultra"])
    assert resolution.models == {}
    with pytest.raises(UnknownModel, match=r"knows neither 'sd-4.0-ultra' nor 'sd-4-0-ultra'"):
        resolution.catalog().get("sd-4.0-ultra")


async def test_without_the_model_endpoint_the_openapi_document_describes_the_model(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(model_endpoints=("openapi",))
    cache = UserCache(sandbox.url, root=tmp_path)
    resolution = await resolve(sandbox.url, ["flux-1-dev"], cache=cache)
    record = resolution.models["flux-1-dev"]
    assert record.source == "GET /v1/models/flux-1-dev/schemas/openapi"
    assert record.schema().allowed("width") == "an integer from 256 to 1440, a multiple of 16"
    assert cache.load("flux-1-dev") == record  # kept for offline dry runs
    assert sandbox.stats()["requests"]["model"] == 2  # a 503 is asked once more, then not again


async def test_with_both_endpoints_down_the_built_in_table_or_the_cache_is_used_and_said(
    sandbox_factory, tmp_path
):
    sandbox = sandbox_factory(model_endpoints=())
    cache = UserCache(sandbox.url, root=tmp_path)
    resolution = await resolve(sandbox.url, [DOTTED, "flux-1-dev"], fallbacks=[cache.load, builtin_record])
    assert resolution.slugs() == {DASHED: DOTTED}  # as written: nothing else is known
    assert "the model endpoint is unavailable (GET /v1/model answered HTTP 503" in resolution.notes[0]
    assert "the built-in table" in resolution.notes[0]
    assert "no schema of 'flux-1-dev' is cached or built in" in resolution.missing["flux-1-dev"]
    served = await resolve(sandbox_factory().url, ["flux-1-dev"], cache=cache)  # another API run cached it
    cache.save(served.models["flux-1-dev"])
    again = await resolve(sandbox.url, ["flux-1-dev"], fallbacks=[cache.load, builtin_record])
    assert again.models["flux-1-dev"].source == "GET /v1/model?slug=flux-1-dev"
    assert "the model endpoint is unavailable" in again.notes[0]


async def test_an_api_that_cannot_be_reached_fails_fast_with_its_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ApiUnreachable, match=rf"cannot reach the API at {url}"):
        await resolve(url, [DASHED], fallbacks=[builtin_record])


def jobs(model: str, count: int) -> list[Job]:
    out = []
    for n in range(count):
        inputs, errors = check_input(
            model, {"prompt": f"a lighthouse, take {n}", "seed": n, "output_format": "jpg"}
        )
        assert not errors
        out.append(Job(job_id=f"job-{n}", model=model, inputs=inputs))
    return out


async def run_with_routes(url: str, batch: list[Job], slugs: dict[str, str]):
    limits = Limits(requests=60, window_s=60.0 / TEST_TIME_SCALE, max_in_flight=4)
    config = EngineConfig(limits=limits).scaled(TEST_TIME_SCALE)
    async with ApiClient(url, KEY) as client:
        routes = ModelRoutes(slugs, retry_s=0.01)
        engine = Engine(client, LocalBudget(config.limits), config, routes=routes)
        return [outcome async for outcome in engine.run(batch)]


@pytest.mark.parametrize("endpoints", [("model", "openapi"), ()], ids=["asked-again", "endpoint-down"])
async def test_a_create_answered_404_resolves_the_model_again_once_and_bills_nothing(
    sandbox_factory, endpoints
):
    sandbox = sandbox_factory(slug_spelling="dotted", model_endpoints=endpoints)
    outcomes = await run_with_routes(sandbox.url, jobs(DASHED, 12), {DASHED: DASHED})  # a stale resolution
    stats = sandbox.stats()
    assert Counter(o.status for o in outcomes) == {JobStatus.SUCCESS: 12}
    assert {o.model_slug for o in outcomes} == {DOTTED}
    assert stats["creates"] == 12 and stats["duplicate_creates"] == 0
    refused = stats["requests"]["create"] - stats["creates"]
    assert 1 <= refused <= 4  # only the creates already out (4 slots) when the first 404 came back
    assert stats["requests"]["model"] <= 2  # one resolution, not one per job


async def test_a_model_the_api_refuses_in_every_spelling_fails_its_jobs_with_model_not_found(sandbox_factory):
    sandbox = sandbox_factory(slug_spelling="dotted")
    batch = [job for job in jobs(DASHED, 6)]
    gone = [Job(f"gone-{n}", "sd-9-9-gone", job.inputs) for n, job in enumerate(batch)]
    outcomes = await run_with_routes(sandbox.url, gone, {})
    assert {(o.status, o.error_code) for o in outcomes} == {(JobStatus.FAILED, "MODEL_NOT_FOUND")}
    assert all("creates for 'sd-9-9-gone', after resolving" in (o.error_message or "") for o in outcomes)
    stats = sandbox.stats()
    # Only the creates out when the first 404 came back; the endpoint knows no other spelling to try.
    assert stats["creates"] == 0 and stats["requests"]["create"] <= 4
    assert all(o.attempts <= 1 for o in outcomes)
