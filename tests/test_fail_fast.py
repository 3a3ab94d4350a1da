"""An unreachable API stops a run within seconds, with nothing marked as attempted that was never sent.

The engine meets a transport that cannot connect (httpx.MockTransport raising ConnectError, as DNS failures
and refused connections do); a real unreachable URL is exercised end to end in test_run_truth.py.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from promptgrid.api.client import ApiClient
from promptgrid.engine.engine import Engine
from promptgrid.errors import ApiUnreachable
from promptgrid.output.journal import Journal
from promptgrid.output.sinks import open_sink
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus
from tests.support.events import Events
from tests.test_engine import FAST, SECRET, ScriptedApi, make_job

URL = "http://api.promptgrid-test.invalid"


def refusing(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno -2] Name or service not known", request=request)


def engine_with(handler, **hooks) -> Engine:
    client = ApiClient(URL, ApiKey(SECRET), transport=httpx.MockTransport(handler))
    return Engine(client, LocalBudget(FAST.limits), FAST, events=Events(**hooks))


async def test_first_creates_failing_to_connect_stop_the_run_with_the_url_and_no_outcomes():
    sent: list[tuple[str, int]] = []
    withdrawn: list[tuple[str, int]] = []

    async def on_sending(job: Job, attempt: int) -> None:
        sent.append((job.job_id, attempt))

    async def on_unsent(job: Job, attempt: int) -> None:
        withdrawn.append((job.job_id, attempt))

    engine = engine_with(refusing, on_sending=on_sending, on_unsent=on_unsent)
    outcomes = []
    with pytest.raises(ApiUnreachable) as raised:
        async for outcome in engine.run([make_job(n) for n in range(20)]):
            outcomes.append(outcome)

    assert outcomes == []  # nothing recorded: no job reached the API
    assert URL in str(raised.value) and "Name or service not known" in str(raised.value)
    assert engine.stats.requests["create"] == FAST.unreachable_after  # stopped at the threshold, no resends
    assert sorted(withdrawn) == sorted(sent)  # every announced create was taken back
    assert len(engine.deferred) == FAST.limits.max_in_flight * 2  # started jobs; the rest never taken


async def test_an_api_that_answered_once_is_not_declared_unreachable_by_later_connect_errors():
    api = ScriptedApi()
    creates = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal creates
        if request.method == "POST":
            creates += 1
            if creates in (2, 3, 4):
                raise httpx.ConnectError("refused", request=request)
        return api(request)

    client = ApiClient("http://127.0.0.1:9", ApiKey(SECRET), transport=httpx.MockTransport(flaky))
    engine = Engine(client, LocalBudget(Limits(requests=10_000, window_s=1.0, max_in_flight=1)), FAST)
    outcomes = [outcome async for outcome in engine.run([make_job(n) for n in range(3)])]

    assert engine.halted is None
    assert [outcome.status for outcome in outcomes] == [JobStatus.SUCCESS] * 3


def test_a_withdrawn_intent_leaves_no_uncertain_create(tmp_path: Path):
    import asyncio

    journal = Journal(open_sink(str(tmp_path)), writer_id="w1")

    async def scenario() -> None:
        await journal.intend("never-left", 1)
        await journal.intend("never-left", 1, withdrawn=True)
        await journal.intend("on-the-wire", 1)

    asyncio.run(scenario())
    journal.close()
    assert Journal(open_sink(str(tmp_path)), writer_id="w2").uncertain() == {"on-the-wire"}
