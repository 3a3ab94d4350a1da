"""Unknown creates found again: the sandbox's executions listing, and the lost-create search that adopts
through it.

A "lost answer" is made for real: the create reaches the sandbox (which makes and bills a prediction) and
only its id is forgotten, as when a run dies with the create on the wire or the connection drops after the
server created it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from promptgrid.api.client import ApiClient
from promptgrid.api.gateway import Gateway
from promptgrid.engine.config import EngineConfig
from promptgrid.engine.engine import Engine
from promptgrid.engine.lost_creates import LostCreates
from promptgrid.engine.matching import same_inputs
from promptgrid.engine.progress import RunProgress
from promptgrid.engine.unanswered import UnknownCreates, run_and_store
from promptgrid.models.check import check_input
from promptgrid.output.journal import Journal
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.recorder import OutcomeStore
from promptgrid.output.sinks import open_sink
from promptgrid.quota.base import Limits
from promptgrid.quota.local import LocalBudget
from promptgrid.settings import ApiKey
from promptgrid.types import Job, JobStatus
from tests.support.sandbox import TEST_TIME_SCALE

MODEL = "stable-diffusion-3-5-large"
KEY = "sk-reconcile-test-key"
OTHER_KEY = "sk-someone-else-in-the-organisation"


def make_job(n: int, prompt: str = "a harbour at night") -> Job:
    inputs, errors = check_input(MODEL, {"prompt": prompt, "seed": n, "output_format": "jpg", "cfg": 4})
    assert not errors
    return Job(job_id=f"{n:064x}", model=MODEL, inputs=inputs)


def limits() -> Limits:
    return Limits(requests=600, window_s=60.0 / TEST_TIME_SCALE, max_in_flight=10)


def search(client: ApiClient, sent_at: dict[str, datetime], known: set[str]) -> LostCreates:
    lost = LostCreates(Gateway(client, LocalBudget(limits())), lambda model: model)
    lost.expect(sent_at, known)
    return lost


async def create_and_forget(url: str, job: Job, key: str = KEY) -> str:
    """A create that reached the API; the caller pretends its answer never arrived."""
    async with ApiClient(url, ApiKey(key)) as client:
        return await client.create(job.model, job.version, job.inputs)


def test_the_listing_pages_filters_and_leaves_inputs_out(sandbox_factory):
    sandbox = sandbox_factory()
    with httpx.Client(base_url=sandbox.url, headers={"X-API-Key": KEY}, timeout=5) as client:
        for n in range(5):
            body = {"model": MODEL, "version": "0.0.1", "input": {"prompt": f"p{n}", "seed": n}}
            assert client.post("/v1/prediction/", json=body).status_code == 200
        first = client.get(
            "/v1/executions", params={"limit": 2, "model": "stable-diffusion-3.5-large"}
        ).json()
        rest = client.get("/v1/executions", params={"limit": 100, "offset": 2}).json()
        assert first["total_count"] == 5 and len(first["executions"]) == 2 and len(rest["executions"]) == 3
        rows = first["executions"] + rest["executions"]
        assert len({row["id"] for row in rows}) == 5
        assert [row["created_at"] for row in rows] == sorted(
            (row["created_at"] for row in rows), reverse=True
        )
        assert set(rows[0]) == {
            "id",
            "model",
            "status",
            "created_at",
            "started_at",
            "completed_at",
            "output",
            "execution_cost",
            "run_time",
        }
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert client.get("/v1/executions", params={"from": later}).json()["total_count"] == 0
        assert (
            client.get("/v1/executions", params={"model": "stable-diffusion-3-5-large-turbo"}).json()[
                "total_count"
            ]
            == 0
        )
        for bad in ({"limit": 0}, {"limit": 101}, {"offset": -1}, {"from": "yesterday"}):
            assert client.get("/v1/executions", params=bad).status_code == 400, bad
    assert sandbox.stats()["requests"]["executions"] == 8


def test_the_listing_is_the_whole_organisation_s_and_can_be_absent_or_failing(sandbox_factory):
    sandbox = sandbox_factory()
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        body = {"model": MODEL, "version": "0.0.1", "input": {"prompt": "p"}}
        client.post("/v1/prediction/", json=body, headers={"X-API-Key": OTHER_KEY})
        listed = client.get("/v1/executions", headers={"X-API-Key": KEY}).json()
        assert listed["total_count"] == 1  # another key's prediction is listed ...
        other = listed["executions"][0]["id"]
        assert (
            client.get(f"/v1/prediction/{other}", headers={"X-API-Key": KEY}).status_code == 404
        )  # ... not readable
    absent = sandbox_factory(executions_endpoint=False)
    failing = sandbox_factory(executions_fail_rate=1.0)
    assert httpx.get(f"{absent.url}/v1/executions", headers={"X-API-Key": KEY}).status_code == 404
    assert httpx.get(f"{failing.url}/v1/executions", headers={"X-API-Key": KEY}).status_code == 500


def test_a_busy_listing_puts_other_members_rows_first_and_caps_its_count(sandbox_factory):
    sandbox = sandbox_factory(foreign_executions=250, executions_count_cap=100)
    with httpx.Client(base_url=sandbox.url, headers={"X-API-Key": KEY}, timeout=5) as client:
        body = {"model": MODEL, "version": "0.0.1", "input": {"prompt": "ours"}}
        ours = client.post("/v1/prediction/", json=body).json()["predictionID"]
        pages = [
            client.get("/v1/executions", params={"limit": 100, "offset": offset, "model": MODEL}).json()
            for offset in (0, 100, 200)
        ]
        foreign = pages[0]["executions"][0]["id"]
        assert client.get(f"/v1/prediction/{foreign}").status_code == 404  # another member's
    assert all(page["total_count"] == 100 and page["total_capped"] for page in pages)
    assert [len(page["executions"]) for page in pages] == [100, 100, 51]
    assert pages[2]["executions"][-1]["id"] == ours  # behind every foreign row


def test_the_listing_knows_a_model_only_in_the_spelling_the_api_knows(sandbox_factory):
    sandbox = sandbox_factory(slug_spelling="dotted")
    dotted = "stable-diffusion-3.5-large"
    with httpx.Client(base_url=sandbox.url, headers={"X-API-Key": KEY}, timeout=5) as client:
        body = {"model": dotted, "version": "0.0.1", "input": {"prompt": "p"}}
        assert client.post("/v1/prediction/", json=body).status_code == 200
        by_dotted = client.get("/v1/executions", params={"model": dotted}).json()
        by_dashed = client.get("/v1/executions", params={"model": MODEL}).json()
    assert by_dotted["total_count"] == 1 and by_dotted["executions"][0]["model"] == dotted
    assert by_dashed["total_count"] == 0 and by_dashed["executions"] == []


async def test_a_lost_create_is_found_among_the_organisation_s_predictions(sandbox_factory):
    sandbox = sandbox_factory()
    lost, twin, neighbour = make_job(1), make_job(1), make_job(2)
    sent_at = datetime.now(UTC)
    lost_id = await create_and_forget(sandbox.url, lost)
    await create_and_forget(sandbox.url, twin, key=OTHER_KEY)  # same inputs, another key: not ours
    neighbour_id = await create_and_forget(sandbox.url, neighbour)  # ours, other inputs
    known_id = await create_and_forget(sandbox.url, lost)  # an earlier attempt the journal already has
    async with ApiClient(sandbox.url, ApiKey(KEY)) as client:
        lost_creates = search(client, {lost.job_id: sent_at}, {known_id})
        assert (await lost_creates.find(lost)).found == lost_id
        assert (await lost_creates.find(neighbour)).found is None  # no unanswered create known for it
        now = datetime.now(UTC)
        found = await lost_creates.search(neighbour, MODEL, neighbour.inputs, now, fresh_after=now)
        assert found.found == neighbour_id
    stats = sandbox.stats()
    assert stats["requests"]["executions"] == 2 and stats["creates"] == 4  # found, nothing created


@pytest.mark.parametrize("broken", [{"executions_endpoint": False}, {"executions_fail_rate": 1.0}])
async def test_without_a_working_listing_nothing_is_adopted_or_sent(sandbox_factory, broken):
    sandbox = sandbox_factory(**broken)
    job = make_job(3)
    sent_at = datetime.now(UTC)
    await create_and_forget(sandbox.url, job)
    async with ApiClient(sandbox.url, ApiKey(KEY)) as client:
        lost_creates = search(client, {job.job_id: sent_at}, set())
        first = await lost_creates.find(job)
        assert first.found is None and not first.nothing_made and not lost_creates.available
        assert "listing is not available" in first.why
        assert (await lost_creates.find(job)).found is None  # and it is not asked again
    assert sandbox.stats()["creates"] == 1


def test_inputs_compare_as_sent_and_an_image_by_its_url_or_staged_file():
    staged = "inputs/" + "ab" * 32 + ".png"
    sent = {"prompt": "10", "cfg": 3.5, "steps": 28, "seed": 7, "image": f"http://127.0.0.1:4000/{staged}"}
    # Numbers by value however echoed; the staged file served from another address is the same image.
    echoed = {**sent, "cfg": "3.5", "steps": 28.0, "seed": "7", "image": f"https://b.example/{staged}?sig=2"}
    assert same_inputs(sent, echoed)
    for prompt in ("1e1", "10.0", "+10", "10.00", 10):  # a string is compared as the string sent
        assert not same_inputs(sent, {**sent, "prompt": prompt}), prompt
    other_image = "http://127.0.0.1:4000/inputs/" + "cd" * 32 + ".png"
    assert not same_inputs(sent, {**sent, "image": other_image})
    assert not same_inputs({**sent, "image": "https://x.example/a.png"}, {**sent, "image": "https://x/b.png"})
    assert not same_inputs(sent, {k: v for k, v in sent.items() if k != "image"})  # nothing ignored
    assert not same_inputs(sent, {**sent, "seed": 8})
    assert same_inputs({**sent, "negative": None}, sent)  # a null sent is an input left out


async def test_creates_whose_answer_drops_in_this_run_are_adopted_not_given_up(sandbox_factory, tmp_path):
    # Every dropped create did create (and bill) a prediction: each must end as that prediction's image.
    sandbox = sandbox_factory(drop_rate=0.25, drop_after_create_share=1.0, seed=3)
    jobs = [make_job(n, prompt=f"lighthouse {n}") for n in range(24)]
    sink = open_sink(str(tmp_path))
    journal = Journal(sink, "run-s0")
    config = EngineConfig(limits=limits(), deadline_s=600.0).scaled(TEST_TIME_SCALE)
    with ManifestWriter(sink, run_id="run", spec_hash="h") as writer:
        async with ApiClient(sandbox.url, ApiKey(KEY)) as client:
            budget = LocalBudget(config.limits)
            store = OutcomeStore(sink, journal, writer, RunProgress(total=len(jobs)))
            engine = Engine(client, budget, config, events=store)
            await run_and_store(engine, jobs, {}, store)
    journal.close()
    stats = sandbox.stats()
    assert stats["faults"].get("create_drop_after", 0) >= 1, "the seed must drop some creates"
    assert engine.stats.adopted_creates == stats["faults"]["create_drop_after"]
    assert stats["duplicate_creates"] == 0 and stats["creates"] == len(jobs)
    rows = read_manifest(sink).to_pylist()
    failed = [row["error_message"] for row in rows if row["status"] != JobStatus.SUCCESS.value]
    assert len(rows) == len(jobs) and not failed, failed
    # Each row holds the prediction made from its own inputs, and the journal ties it to its job.
    latest = Journal(sink, "x").latest()
    assert all(latest[row["job_id"]].prediction_id == row["prediction_id"] for row in rows)


async def test_a_rerun_reads_the_unanswered_creates_an_earlier_run_left(sandbox_factory, tmp_path):
    sandbox = sandbox_factory()
    sink = open_sink(str(tmp_path))
    answered, lost, done = make_job(1), make_job(2), make_job(3)
    journal = Journal(sink, "dead-s0")
    for job in (answered, lost, done):
        await journal.intend(job.job_id, 1)
    await journal.record(answered.job_id, "pred-answered", 1)
    await journal.record(done.job_id, "pred-done", 1)
    lost_id = await create_and_forget(sandbox.url, lost)
    journal.close()
    time.sleep(0.01)
    unknown = UnknownCreates.read(Journal(sink, "rerun"), {done.job_id: "success"}, None)
    assert set(unknown.intents) == {lost.job_id} and unknown.attempts == {lost.job_id: 1}
    assert unknown.known_ids == {"pred-answered", "pred-done"}
    async with ApiClient(sandbox.url, ApiKey(KEY)) as client:
        engine = Engine(client, LocalBudget(limits()), EngineConfig(limits=limits()))
        assert (await unknown.search(engine).find(lost)).found == lost_id
