"""The one gateway every request goes through: the budget admits each, reads go again, a create never does."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace

import httpx
import pytest

from promptgrid.api.client import ApiClient
from promptgrid.api.gateway import Gateway, ReadRetry
from promptgrid.api.resolve import resolve_models
from promptgrid.errors import PredictionNotFound, ServerFailure, Throttled, TransportFailure
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey

KEY = ApiKey("sk-gateway-test")
QUICK = ReadRetry(tries=3, base_s=0.001, cap_s=0.002)


class Script:
    """Answers each path from a list of scripted answers (the last one repeats); counts the requests."""

    def __init__(self, **answers: list[httpx.Response | Exception]):
        self.answers = answers
        self.calls: Counter[str] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        name = request.url.path.strip("/").split("/")[1]
        self.calls[name] += 1
        script = self.answers[name]
        answer = script[min(self.calls[name], len(script)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def gateway(script: Script) -> tuple[Gateway, LocalBudget]:
    budget = LocalBudget(Limits.auto())
    client = ApiClient("http://127.0.0.1:9", KEY, transport=httpx.MockTransport(script))
    return Gateway(client, budget), budget


PREDICTION = httpx.Response(200, json={"id": "p1", "status": "processing", "input": {"prompt": "x"}})
REFUSED = httpx.Response(500, json={"error": "Failed to create prediction"})


@pytest.mark.parametrize("failure", [REFUSED, httpx.ReadError("reset")], ids=["500", "dropped"])
async def test_a_create_is_sent_once_whatever_its_failure(failure):
    script = Script(prediction=[failure, httpx.Response(200, json={"predictionID": "p1"})])
    gate, budget = gateway(script)
    with pytest.raises((ServerFailure, TransportFailure)):
        await gate.create("m", "0.0.1", {"prompt": "x"})
    assert script.calls["prediction"] == 1 and budget.stats().requests == {"create": 1}
    await gate.client.aclose()


async def test_a_read_goes_again_after_a_5xx_or_a_drop_and_gives_up_after_its_tries():
    script = Script(
        prediction=[httpx.Response(503, json={"error": "busy"}), httpx.ReadError("x"), PREDICTION]
    )
    gate, budget = gateway(script)
    assert (await gate.get("p1", QUICK)).inputs == {"prompt": "x"}
    assert script.calls["prediction"] == 3 and budget.stats().requests == {"poll": 3}

    script = Script(prediction=[httpx.Response(503, json={"error": "busy"})])
    gate, _ = gateway(script)
    with pytest.raises(ServerFailure):
        await gate.get("p1", QUICK)
    assert script.calls["prediction"] == QUICK.tries
    await gate.client.aclose()


async def test_a_read_answered_429_waits_the_retry_after_then_goes_again():
    throttled = httpx.Response(429, json={"error": "too many requests"}, headers={"Retry-After": "0.2"})
    script = Script(prediction=[throttled, PREDICTION])
    gate, budget = gateway(script)
    started = time.monotonic()
    await gate.get("p1", QUICK)
    assert time.monotonic() - started >= 0.2 and budget.stats().throttled == 1
    await gate.client.aclose()


async def test_a_read_no_longer_wanted_after_a_429_is_not_sent_again():
    """`after_throttled`: the engine hands a poll to the executions listing once a 429 shows polls count."""
    throttled = httpx.Response(429, json={"error": "too many requests"}, headers={"Retry-After": "0.01"})
    script = Script(prediction=[throttled, throttled, PREDICTION])
    gate, _ = gateway(script)
    with pytest.raises(Throttled):
        await gate.get("p1", replace(QUICK, throttled_tries=None, after_throttled=lambda: True))
    assert script.calls["prediction"] == 1
    assert (await gate.get("p1", replace(QUICK, after_throttled=lambda: False))).id == "p1"
    assert script.calls["prediction"] == 3  # still wanted: sent again after its 429
    await gate.client.aclose()


async def test_a_404_read_is_final():
    script = Script(prediction=[httpx.Response(404, json={"error": "Prediction not found"})])
    gate, _ = gateway(script)
    with pytest.raises(PredictionNotFound):
        await gate.get("p1", QUICK)
    assert script.calls["prediction"] == 1
    await gate.client.aclose()


async def test_model_lookups_go_through_the_budget(sandbox):
    budget = LocalBudget(Limits.auto())
    async with ApiClient(sandbox.url, KEY) as client:
        resolution = await resolve_models(
            Gateway(client, budget), ["stable-diffusion-3.5-large"], retry_s=0.01
        )
    assert resolution.models and budget.stats().requests == {"poll": sandbox.stats()["requests"]["model"]}
