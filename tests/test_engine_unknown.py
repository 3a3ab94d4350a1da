"""Creates whose outcome is unknown (a 5xx, a drop after sending), settled through the listing before
anything is sent again: adopted when the listing shows the one prediction made, re-sent only when it shows
nothing was made, and never on a guess."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest

from promptgrid.engine.config import WatchPolicy
from promptgrid.types import JobStatus
from tests.test_engine import FAST, ScriptedApi, engine_for, make_job


def made_then_failed(api: ScriptedApi, answer: httpx.Response | Exception):
    """The first create is made at the API, then answered with `answer` (or its answer is lost)."""

    def create(request: httpx.Request, n: int) -> httpx.Response | None:
        if n > 1:
            return None
        api.new_prediction(json.loads(request.content)["input"])
        if isinstance(answer, Exception):
            raise answer
        return answer

    return create


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"error": "Failed to create prediction"}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.ReadError("connection reset"),
    ],
    ids=["500", "502-page", "dropped"],
)
async def test_a_create_made_then_answered_badly_is_adopted_from_the_listing(answer):
    api = ScriptedApi(listing=True)
    api.on_create = made_then_failed(api, answer)
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.SUCCESS, outcome.error_message
    assert api.calls["create"] == 1 and outcome.prediction_id == "pred-1"
    assert engine.stats.adopted_creates == 1 and engine.stats.creates == 1
    await engine.client.aclose()


async def test_a_5xx_create_the_listing_shows_made_nothing_is_sent_again():
    api = ScriptedApi(listing=True)
    api.new_prediction(make_job(2).inputs)  # another job's prediction, in the listing beside ours
    api.on_create = lambda request, n: (
        httpx.Response(500, json={"error": "Failed to create prediction"}) if n == 1 else None
    )
    engine = engine_for(api, replace(FAST, watch=WatchPolicy(enabled=False)))  # the search's listing alone
    outcome = await engine.run_job(make_job(1))
    assert outcome.status is JobStatus.SUCCESS and api.calls["create"] == 2
    assert api.calls["executions"] == 1 and engine.stats.unverified_resends == 0
    await engine.client.aclose()


async def test_two_predictions_of_the_same_inputs_are_named_not_chosen():
    api = ScriptedApi(listing=True)
    job = make_job(1)
    api.new_prediction(job.inputs)  # made by someone else with this key, from the very same inputs
    api.on_create = made_then_failed(api, httpx.Response(500, json={"error": "Failed to create prediction"}))
    engine = engine_for(api)
    outcome = await engine.run_job(job)
    assert outcome.error_code == "CREATE_OUTCOME_UNKNOWN" and api.calls["create"] == 1
    assert "pred-1" in outcome.error_message and "pred-2" in outcome.error_message
    await engine.client.aclose()


async def test_without_a_listing_only_the_api_s_own_refusal_is_sent_again_and_it_is_said(caplog):
    api = ScriptedApi()
    api.on_create = lambda request, n: (
        httpx.Response(500, json={"error": "Failed to create prediction"}) if n == 1 else None
    )
    engine = engine_for(api)
    assert (await engine.run_job(make_job(1))).status is JobStatus.SUCCESS
    assert engine.stats.unverified_resends == 1 and "no executions listing" in caplog.text
    await engine.client.aclose()

    api = ScriptedApi()
    api.on_create = lambda request, n: httpx.Response(502, json={"error": "Failed to create prediction"})
    engine = engine_for(api)
    outcome = await engine.run_job(make_job(1))
    assert outcome.error_code == "CREATE_OUTCOME_UNKNOWN" and api.calls["create"] == 1
    assert "executions listing is not available" in outcome.error_message
    await engine.client.aclose()
